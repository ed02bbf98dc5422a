//! `Trainer::fit` (Lightning's fit loop): setup, the epochs, teardown.
//!
//! ```text
//! fit: setup -> restore(ckpt) -> on_fit_start -> sanity check -> for each epoch {
//!        for each batch { reseed RNG; training step (automatic: forward, backward,
//!          [clip; step; zero_grad]; manual: `training_step` steps); [step-interval
//!          schedulers]; [last batch: epoch-interval schedulers]; on_train_batch_end;
//!          [validation]; [preemption: save last.ckpt, stop]; [max_steps: stop] }
//!        [end-of-epoch validation + on_validation_end] -> on_train_epoch_end }
//!      -> on_fit_end; pending async saves durable before `fit` returns.
//! ```
//!
//! The pieces: `resume.rs` (the checkpoint connector), `epoch_loop.rs` (one epoch's batches,
//! validation, stopping; the schedulers), `automatic.rs` and `manual.rs` (the two kinds of
//! training step).

use super::ddp::{Ddp, Fsdp, World};
use super::preempt::Preemption;
use super::saver::Saver;
use super::state::{RunSetup, RunState};
use super::strategy::{DdpOptions, Strategy};
use super::{need, warn, CkptPath, Trainer};
use crate::callbacks::{Callback, ModelCheckpoint};
use crate::data::{mix_seed, DataModule};
use crate::error::{Error, Result};
use crate::hparams::Hyperparameters;
use crate::lightning_module::{LightningModule, Optimizers};
use tch::Tensor;

/// The default checkpoint callback added when checkpointing is on and none is given:
/// Lightning's `ModelCheckpoint()` (every epoch, `epoch=E-step=S.ckpt` in the log dir).
fn default_checkpoint_callback() -> Result<Box<dyn Callback>> {
    Ok(Box::new(ModelCheckpoint::builder().build()?))
}

/// The error of a training step that finds no optimizers (`fit` configures them first).
pub(super) fn no_optimizer() -> Error {
    Error::Config("fit: no optimizer configured".into())
}

/// Lightning's checks of a module's optimization mode against the trainer's settings
/// (`configuration_validator`, `_init_optimizers`), plus what this trainer does not support.
fn check_optimization(cfg: &super::TrainerConfig, manual: bool, optimizers: usize) -> Result<()> {
    if !manual {
        if optimizers != 1 {
            return Err(Error::Config(format!(
                "`configure_optimizers` returned {optimizers} optimizers: training with several \
                 optimizers is only supported with manual optimization. Make \
                 `automatic_optimization` return false and step them in `training_step` through \
                 `ctx.optimizers()`"
            )));
        }
        return Ok(());
    }
    if let Some(v) = cfg.gradient_clip_val.filter(|v| *v > 0.0) {
        return Err(Error::Config(format!(
            "Automatic gradient clipping is not supported for manual optimization. Remove \
             `gradient_clip_val({v})` or switch to automatic optimization (in manual \
             optimization, clip in `training_step` with `ctx.optimizers()?.clip_gradients(..)`)"
        )));
    }
    if cfg.accumulate_grad_batches != 1 {
        return Err(Error::Config(format!(
            "Automatic gradient accumulation is not supported for manual optimization. Remove \
             `accumulate_grad_batches({})` or switch to automatic optimization",
            cfg.accumulate_grad_batches
        )));
    }
    if matches!(cfg.strategy, Strategy::Fsdp(_)) {
        return Err(Error::Config(
            "manual optimization is not supported with strategy=\"fsdp\" yet: the sharded \
             parameters are gathered for one forward and backward per step"
                .into(),
        ));
    }
    Ok(())
}

impl Trainer {
    /// Trains `model` on `data`'s train loader (validating on its val loader), optionally
    /// resuming from `ckpt_path` exactly: a run stopped and resumed ends with the same
    /// weights and optimizer state, bit for bit on CPU, as one that never stopped.
    ///
    /// Returns after every pending (async) checkpoint save is durable. On SIGTERM/SIGUSR1
    /// it finishes the current step, saves `last.ckpt` and returns `Ok` with
    /// [`Trainer::was_preempted`] true. When a step fails, callbacks' `on_exception` run
    /// (for `save_on_exception`) and the error is returned.
    pub fn fit<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<()> {
        let preempt = Preemption::install(self.cfg.handle_signals)?;
        self.saver = Saver::new(self.cfg.async_checkpointing, self.cfg.checkpoint_io.clone());
        let mut result = self.fit_inner(model, data, ckpt_path, &preempt);
        if result.is_err()
            && let Err(e) = self.hooks(&*model, |cb, t| cb.on_exception(t))
        {
            tracing::error!("on_exception: {e}");
        }
        self.run.clock.stop();
        let before = self.saver.failures;
        let flushed = self.saver.finish();
        let flushed = self.save_policy(flushed, before);
        let logged = self.logging.finalize(&result);
        if result.is_ok() {
            result = flushed.and(logged);
        }
        result
    }

    fn fit_inner<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
        preempt: &Preemption,
    ) -> Result<()> {
        // A model built from a struct literal never went through `from_value`: check its
        // hyperparameters' rules before libtorch sees a bad value.
        model.hparams().validate()?;
        let train = need(data.train_loader(), "fit: train")?;
        // overfit_batches: the same batches every epoch (Lightning turns shuffling off).
        let unshuffled = (self.cfg.overfit_batches.is_some() && train.shuffles()).then(|| {
            warn(
                "You requested to overfit but enabled train dataloader shuffling. We are turning \
                 off the train dataloader shuffling for you.",
            );
            train.clone().shuffle(false)
        });
        let train = unshuffled.as_ref().unwrap_or(train);
        let manual = !model.automatic_optimization();
        if manual {
            // before a DDP job is joined: a refused configuration starts no ranks
            check_optimization(&self.cfg, true, 1)?;
        }
        let world = match &self.cfg.strategy {
            Strategy::Ddp(o) if self.cfg.devices * self.cfg.num_nodes > 1 => {
                Some((World::get(&self.cfg, o)?, o.clone()))
            }
            // FSDP always joins a job (of one process on one device).
            Strategy::Fsdp(o) => {
                let o = DdpOptions {
                    timeout: o.timeout,
                    ..DdpOptions::default()
                };
                Some((World::get(&self.cfg, &o)?, o))
            }
            _ => None,
        };
        let fsdp_opts = match &self.cfg.strategy {
            Strategy::Fsdp(o) => Some(o.clone()),
            _ => None,
        };
        // DDP: each rank trains on its shard of the training set (PyTorch's
        // DistributedSampler, inserted as Lightning does); validation runs on the whole set
        // on every rank, so every rank sees the same monitored values.
        let sharded = match &world {
            Some((w, _)) => {
                self.cfg.device = w.device(&self.cfg);
                Some(train.clone().distributed(w.env.world_size, w.env.rank)?)
            }
            None => None,
        };
        let train = sharded.as_ref().unwrap_or(train);
        self.run = RunState {
            setup: RunSetup {
                seed: self.cfg.seed.unwrap_or_else(random_seed),
                fitting: true,
                world_size: world.as_ref().map_or(1, |(w, _)| w.env.world_size),
                manual,
                num_val_batches: data
                    .val_loader()
                    .map_or(0, |v| self.cfg.limit_val_batches.apply(v.len())),
                val_every: super::val_every(
                    &self.cfg,
                    self.cfg.limit_train_batches.apply(train.len()),
                ),
                datamodule: data.named_state().cloned(),
                datamodule_hparams: data.hparams().cloned(),
                resumed_from: None,
                train: Some(train.clone()),
                extra_epochs: 0,
            },
            ..RunState::default()
        };
        if self.cfg.enable_checkpointing
            && !self.callbacks.iter().any(|c| c.is_checkpoint_callback())
        {
            self.callbacks.push(default_checkpoint_callback()?);
        }
        // The log directory is chosen (not created) first: callbacks resolve their
        // directories from it in `setup`, before `ckpt_path = Last` searches them.
        self.world = world.as_ref().map(|(w, _)| w.clone());
        let rank_zero = self.is_global_zero();
        self.logging
            .start(&self.cfg.default_root_dir, rank_zero, true)?;
        self.hooks(&*model, |cb, t| cb.setup(t))?;
        // FSDP reads its own rows of a sharded directory: of each parameter, and of the
        // optimizer state that follows it.
        let full_sizes: Vec<(String, Vec<i64>)> = model
            .named_parameters()
            .into_iter()
            .map(|(n, p)| (n, p.size()))
            .collect();
        let place = world
            .as_ref()
            .filter(|_| fsdp_opts.is_some())
            .map(|(w, _)| (w.env.rank, w.env.world_size));
        let rows = |key: &str, size: &[i64]| -> Option<(i64, i64)> {
            let (rank, world) = place?;
            let name = crate::checkpoint::dcp::lightning::param_of_key(key)?;
            let (_, full) = full_sizes.iter().find(|(n, _)| n == name)?;
            (full.as_slice() == size)
                .then(|| crate::checkpoint::dcp::shard_rows(size[0], rank, world))
        };
        let rows: Option<&crate::checkpoint::dcp::lightning::RowsFn<'_>> =
            place.map(|_| &rows as _);
        let resume = self.read_resume(ckpt_path.as_ref(), rows)?;
        if self.cfg.enable_model_summary && self.is_global_zero() {
            println!("{}", super::summary::model_summary(&*model));
        }
        model.move_to(self.cfg.device);
        // FSDP shards the module before `configure_optimizers`, as Lightning's FSDP strategy
        // does: optimizers are built over (and keep state for) this rank's shards.
        self.fsdp = match (&world, &fsdp_opts) {
            (Some((w, _)), Some(o)) => {
                let buffers: Vec<Tensor> =
                    model.named_buffers().into_iter().map(|(_, b)| b).collect();
                let (units, nested) = crate::layers::fsdp_units_of(&*model);
                if nested {
                    return Err(Error::Config(
                        "strategy=\"fsdp\": an FsdpUnit inside another FsdpUnit; units must \
                         not nest"
                            .into(),
                    ));
                }
                let units: Vec<Option<u64>> = units.into_iter().map(|(_, u)| u).collect();
                Some(Fsdp::shard(
                    w.clone(),
                    o,
                    model.named_parameters(),
                    &buffers,
                    &units,
                )?)
            }
            _ => None,
        };
        let config = model.configure_optimizers()?;
        check_optimization(&self.cfg, manual, config.len())?;
        if config
            .schedulers()
            .any(|(_, s)| s.scheduler.needs_metric() && s.monitor.is_none())
        {
            return Err(Error::Config(
                "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` \
                 scheduler is used. For example: `SchedulerConfig::new(scheduler).monitor(\"val_loss\")` \
                 (Lightning: {\"optimizer\": optimizer, \"lr_scheduler\": {\"scheduler\": \
                 scheduler, \"monitor\": \"metric_to_track\"}})"
                    .into(),
            ));
        }
        if let Some(f) = &mut self.fsdp {
            let params: Vec<Vec<Tensor>> = config
                .entries()
                .iter()
                .map(|e| e.optimizer.params())
                .collect();
            f.bind(&params)?;
        }
        self.ddp = match world.filter(|_| fsdp_opts.is_none()) {
            Some((w, opts)) => {
                let buffers: Vec<Tensor> =
                    model.named_buffers().into_iter().map(|(_, b)| b).collect();
                Some(Ddp::wrap(w, &opts, &model.parameters(), &buffers)?)
            }
            None => None,
        };
        let mut optim = Optimizers {
            config,
            scaler: self.cfg.precision.grad_scaler(),
        };
        self.logging.log_hyperparams(&model.hparams().to_value())?;
        if let Some(mut r) = resume {
            if let Some(f) = &self.fsdp {
                // A whole checkpoint (any world size wrote it): keep this rank's rows.
                let mut value = r.value;
                f.localize(&mut value)?;
                r = super::resume::Loaded::new(r.path, value)?;
            }
            self.restore(model, &mut optim, r)?;
        }
        self.optim = Some(optim);
        self.hooks(&*model, |cb, t| cb.on_fit_start(t))?;
        self.sanity_check(model, data)?;
        self.hooks(&*model, |cb, t| cb.on_train_start(t))?;
        self.run.clock.start();
        while !self.run.flags.should_stop
            && (super::max_epochs_of(&self.cfg, &self.run) < 0
                || self.run.progress.epoch < super::max_epochs_of(&self.cfg, &self.run))
            && (self.cfg.max_steps < 0 || self.run.progress.global_step < self.cfg.max_steps)
        {
            self.train_epoch(model, data, train, preempt)?;
        }
        if !self.run.flags.preempted {
            self.hooks(&*model, |cb, t| cb.on_train_end(t))?;
            self.hooks(&*model, |cb, t| cb.on_fit_end(t))?;
        }
        if let Some(d) = self.ddp.take() {
            self.saver.wait()?;
            d.world.barrier("end of fit")?;
        }
        if let Some(f) = &self.fsdp {
            self.saver.wait()?;
            f.world.barrier("end of fit")?;
        }
        Ok(())
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix_seed(nanos, &[u64::from(std::process::id())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::TrainerBuilder;

    fn refused(b: TrainerBuilder, manual: bool, optimizers: usize) -> String {
        let cfg = b.build().unwrap().cfg;
        check_optimization(&cfg, manual, optimizers)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn optimization_modes_refuse_what_they_cannot_train() {
        let two = refused(Trainer::builder(), false, 2);
        assert!(
            two.contains("only supported with manual optimization"),
            "{two}"
        );
        // manual optimization trains under DDP (tests/distributed/gan_ddp.rs), not under FSDP
        let cfg = Trainer::builder()
            .strategy("ddp")
            .devices(2)
            .build()
            .unwrap()
            .cfg;
        assert!(check_optimization(&cfg, true, 2).is_ok());
        let fsdp = refused(Trainer::builder().strategy("fsdp").devices(2), true, 2);
        assert!(
            fsdp.contains("not supported with strategy=\"fsdp\""),
            "{fsdp}"
        );
        let clip = refused(Trainer::builder().gradient_clip_val(0.5), true, 1);
        assert!(clip.contains("gradient_clip_val(0.5)"), "{clip}");
        let cfg = Trainer::builder().build().unwrap().cfg;
        assert!(check_optimization(&cfg, true, 2).is_ok());
        assert!(check_optimization(&cfg, false, 1).is_ok());
    }
}
