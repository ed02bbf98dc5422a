//! The fit loop, in Lightning 2.x's order:
//!
//! ```text
//! fit: setup -> restore(ckpt) -> on_fit_start -> sanity check -> for each epoch {
//!        for each batch { reseed RNG; training_step; backward; [clip; step; zero_grad;
//!          step-interval schedulers]; [last batch: epoch-interval schedulers];
//!          on_train_batch_end; [validation]; [preemption: save last.ckpt, stop];
//!          [max_steps: stop] }
//!        [end-of-epoch validation + on_validation_end] -> on_train_epoch_end }
//!      -> on_fit_end; pending async saves durable before `fit` returns.
//! ```

use super::ddp::{save_on_rank_zero, Ddp, World};
use super::preempt::Preemption;
use super::progress::Bar;
use super::saver::Saver;
use super::state::{LoopPoint, RunState};
use super::strategy::Strategy;
use super::{checkpoint_of, clip_gradients, effective_max_epochs, need, warn, CkptPath, Trainer};
use crate::callbacks::{find_last_checkpoint_in, Callback, ModelCheckpoint};
use crate::checkpoint::schema::{Checkpoint, EpochPhase};
use crate::data::{mix_seed, DataLoader, DataModule, LoaderState};
use crate::error::{Error, RestoreError, Result};
use crate::hparams::Hyperparameters;
use crate::lightning_module::{
    Interval, LightningModule, ManualOptim, OptimizerConfig, Stage, StepContext,
};
use crate::storage::CheckpointIO;
use crate::traverse::state_dict_from_value;
use crate::value::{Key, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// The default checkpoint callback added when checkpointing is on and none is given:
/// Lightning's `ModelCheckpoint()` (every epoch, `epoch=E-step=S.ckpt` in the log dir).
fn default_checkpoint_callback() -> Result<Box<dyn Callback>> {
    Ok(Box::new(ModelCheckpoint::builder().build()?))
}

/// A checkpoint read for a resume or an evaluation, with its path.
pub(crate) struct Loaded {
    pub path: PathBuf,
    pub value: Value,
    pub ckpt: Checkpoint,
}

impl Loaded {
    /// Reads `path` (CPU tensors) through `io` and checks it has Lightning's shape.
    pub fn read(io: &dyn CheckpointIO, path: PathBuf) -> Result<Self> {
        let value = io.load_checkpoint(&path).map_err(Error::Load)?;
        let ckpt = Checkpoint::from_value(&value).map_err(|e| restore_err(&path, e.into()))?;
        Ok(Loaded { path, value, ckpt })
    }

    /// Copies the checkpoint's `state_dict` into the module (strict, as Lightning's resume),
    /// after the module's `on_load_checkpoint`.
    pub fn load_model<M: LightningModule>(&self, model: &mut M) -> Result<()> {
        model.on_load_checkpoint(&self.value)?;
        let sd = state_dict_from_value(&Value::OrderedDict(self.ckpt.state_dict.clone()))
            .map_err(|e| Error::Msg(format!("{}: {e}", self.path.display())))?;
        model
            .load_state_dict(&sd, true)
            .map_err(|e| restore_err(&self.path, e.into()))?;
        Ok(())
    }
}

fn restore_err(path: &Path, source: RestoreError) -> Error {
    Error::Restore {
        path: path.to_owned(),
        source,
    }
}

/// Restores the optimizers and schedulers (after model and loops, as Lightning): the file's
/// `optimizer_states` and `lr_schedulers` in `configure_optimizers`'s order.
fn restore_optim(ckpt: &Checkpoint, optim: &mut OptimizerConfig) -> Result<(), RestoreError> {
    let states = ckpt.optimizer_states.as_deref().unwrap_or(&[]);
    if states.len() != optim.len() {
        return Err(RestoreError::Count {
            what: "optimizer",
            found: states.len(),
            configured: optim.len(),
        });
    }
    let scheds = ckpt.lr_schedulers.as_deref().unwrap_or(&[]);
    let configured = optim.schedulers().count();
    if scheds.len() != configured {
        return Err(RestoreError::Count {
            what: "LR scheduler",
            found: scheds.len(),
            configured,
        });
    }
    let several = optim.len() > 1;
    let mut scheds = scheds.iter().enumerate();
    for (i, (state, e)) in states.iter().zip(optim.entries_mut()).enumerate() {
        e.optimizer
            .load_state_dict(state)
            .map_err(|source| RestoreError::Optim {
                what: match several {
                    true => format!("optimizer {i}"),
                    false => "the optimizer".into(),
                },
                source,
            })?;
        for (cfg, (j, s)) in e.schedulers.iter_mut().zip(scheds.by_ref()) {
            cfg.scheduler
                .load_state_dict(s)
                .map_err(|source| RestoreError::Optim {
                    what: format!("LR scheduler {j}"),
                    source,
                })?;
        }
    }
    Ok(())
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
    if matches!(cfg.strategy, Strategy::Ddp(_)) && cfg.devices * cfg.num_nodes > 1 {
        return Err(Error::Config(
            "manual optimization is not supported with strategy=\"ddp\" yet: the DDP reducer \
             is driven for one backward per forward, and a manual step may run several (with \
             parameters toggled off); train on one process or use automatic optimization"
                .into(),
        ));
    }
    Ok(())
}

impl Trainer {
    /// Resolves `ckpt_path` to a file; `None` for `Last` with nothing saved yet (warned).
    pub(crate) fn resolve_ckpt(&self, ckpt_path: &CkptPath) -> Result<Option<PathBuf>> {
        let path = match ckpt_path {
            CkptPath::Path(p) => p.clone(),
            CkptPath::Last => {
                let dirs: Vec<PathBuf> = self
                    .callbacks
                    .iter()
                    .filter_map(|c| c.checkpoint_dirpath())
                    .collect();
                let io = &*self.cfg.checkpoint_io;
                match find_last_checkpoint_in(io, &dirs, |p| io.verify(p).is_ok()) {
                    Some(p) => p,
                    None => {
                        warn(&format!(
                            "ckpt_path=\"last\" is set, but there is no last checkpoint available in {dirs:?}. \
                             No checkpoint will be loaded. HINT: set `ModelCheckpoint(save_last=true)` with a fixed dirpath."
                        ));
                        return Ok(None);
                    }
                }
            }
            CkptPath::Best => self
                .callbacks
                .iter()
                .find_map(|c| c.best_model_path().filter(|p| !p.as_os_str().is_empty()))
                .ok_or_else(|| {
                    Error::Config(
                        "ckpt_path=\"best\" is set but no checkpoint callback has a best model \
                         path (no ModelCheckpoint, or it saved nothing yet)"
                            .into(),
                    )
                })?,
        };
        if !self.cfg.checkpoint_io.exists(&path).map_err(Error::Load)? {
            return Err(Error::CheckpointNotFound(path));
        }
        Ok(Some(path))
    }

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
        if result.is_err() {
            if let Err(e) = self.hooks(&*model, |cb, t| cb.on_exception(t)) {
                tracing::error!("on_exception: {e}");
            }
        }
        self.run.train_time_before = self.run.train_time();
        self.run.train_started = None;
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
        let manual = !model.automatic_optimization();
        if manual {
            // before a DDP job is joined: a refused configuration starts no ranks
            check_optimization(&self.cfg, true, 1)?;
        }
        let world = match &self.cfg.strategy {
            Strategy::Ddp(o) if self.cfg.devices * self.cfg.num_nodes > 1 => {
                Some((World::get(&self.cfg, o)?, o.clone()))
            }
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
            seed: self.cfg.seed.unwrap_or_else(random_seed),
            fitting: true,
            world_size: world.as_ref().map_or(1, |(w, _)| w.env.world_size),
            manual,
            num_val_batches: data
                .val_loader()
                .map_or(0, |v| self.cfg.limit_val_batches.apply(v.len())),
            datamodule: data.named_state().cloned(),
            ..RunState::default()
        };
        self.run.val_every =
            super::val_every(&self.cfg, self.cfg.limit_train_batches.apply(train.len()));
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
        let resume = match &ckpt_path {
            Some(p) => self
                .resolve_ckpt(p)?
                .map(|p| Loaded::read(&*self.cfg.checkpoint_io, p))
                .transpose()?,
            None => None,
        };
        if let Some(r) = &resume {
            if r.ckpt.optimizer_states.is_none() {
                return Err(restore_err(&r.path, RestoreError::WeightsOnly));
            }
        }
        if self.cfg.enable_model_summary && self.is_global_zero() {
            println!("{}", super::summary::model_summary(&*model));
        }
        model.move_to(self.cfg.device);
        let mut optim = model.configure_optimizers()?;
        check_optimization(&self.cfg, manual, optim.len())?;
        self.ddp = match world {
            Some((w, opts)) => {
                let buffers: Vec<Tensor> =
                    model.named_buffers().into_iter().map(|(_, b)| b).collect();
                Some(Ddp::wrap(w, &opts, &model.parameters(), &buffers)?)
            }
            None => None,
        };
        self.run.scaler = self.cfg.precision.grad_scaler();
        self.logging.log_hyperparams(&model.hparams().to_value())?;
        if let Some(r) = resume {
            self.restore(model, &mut optim, r)?;
        }
        self.optim = Some(optim);
        self.hooks(&*model, |cb, t| cb.on_fit_start(t))?;
        self.sanity_check(model, data)?;
        self.run.train_started = Some(Instant::now());
        let max_epochs = effective_max_epochs(&self.cfg);
        while !self.run.should_stop
            && (max_epochs < 0 || self.run.epoch < max_epochs)
            && (self.cfg.max_steps < 0 || self.run.global_step < self.cfg.max_steps)
        {
            self.train_epoch(model, data, train, preempt)?;
        }
        if !self.run.preempted {
            self.hooks(&*model, |cb, t| cb.on_fit_end(t))?;
        }
        if let Some(d) = self.ddp.take() {
            self.saver.wait()?;
            d.world.barrier("end of fit")?;
        }
        Ok(())
    }

    /// Restores a run, in Lightning's order: datamodule, model, callbacks, precision, loops,
    /// optimizers, schedulers.
    fn restore<M: LightningModule>(
        &mut self,
        model: &mut M,
        optim: &mut OptimizerConfig,
        r: Loaded,
    ) -> Result<()> {
        self.restore_datamodule(&r)?;
        r.load_model(model)?;
        self.restore_callbacks(&r)?;
        if let (Some(scaler), Some(state)) = (&mut self.run.scaler, &r.ckpt.precision) {
            scaler.load_state_dict(state).map_err(|source| {
                restore_err(
                    &r.path,
                    RestoreError::Optim {
                        what: "the grad scaler".into(),
                        source,
                    },
                )
            })?;
        }
        let seed = self
            .run
            .restore_position(&r.ckpt)
            .map_err(|e| Error::Config(format!("{}: {e}", r.path.display())))?;
        if let Some(saved) = seed {
            if let Some(given) = self.cfg.seed.filter(|&g| g != saved) {
                warn(&format!(
                    "resuming with the checkpoint's seed {saved}, not the trainer's {given}"
                ));
            }
            self.run.seed = saved;
        }
        restore_optim(&r.ckpt, optim).map_err(|e| restore_err(&r.path, e))?;
        self.run.resumed_from = Some(r.path);
        Ok(())
    }

    /// Gives the datamodule the state saved under its name, if the file has one
    /// (Lightning's `restore_datamodule`).
    pub(crate) fn restore_datamodule(&self, r: &Loaded) -> Result<()> {
        let Some(dm) = &self.run.datamodule else {
            return Ok(());
        };
        match r.value.get(&dm.name) {
            Some(state) => dm.load_state_dict(state).map_err(|e| {
                restore_err(
                    &r.path,
                    RestoreError::DataModule {
                        name: dm.name.clone(),
                        source: Box::new(e),
                    },
                )
            }),
            None => Ok(()),
        }
    }

    /// Lightning's `restore_callbacks`: every callback's `on_load_checkpoint` with the whole
    /// file, then each one's `load_state_dict` with its saved state.
    pub(crate) fn restore_callbacks(&mut self, r: &Loaded) -> Result<()> {
        for cb in &mut self.callbacks {
            cb.on_load_checkpoint(&r.value).map_err(|e| {
                restore_err(
                    &r.path,
                    RestoreError::Callback {
                        key: cb.state_key(),
                        source: Box::new(e),
                    },
                )
            })?;
        }
        // a weights-only file has no `callbacks` (fit refuses it; evaluation loads it)
        let Some(states) = r.ckpt.callbacks.as_ref() else {
            return Ok(());
        };
        for cb in &mut self.callbacks {
            let key = cb.state_key();
            match states.get(&Key::Str(key.clone())) {
                Some(s) => cb.load_state_dict(s).map_err(|e| {
                    restore_err(
                        &r.path,
                        RestoreError::Callback {
                            key: key.clone(),
                            source: Box::new(e),
                        },
                    )
                })?,
                None => warn(&format!(
                    "{}: no state for callback {key} in the checkpoint; it starts fresh",
                    r.path.display()
                )),
            }
        }
        Ok(())
    }

    fn train_epoch<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        train: &DataLoader,
        preempt: &Preemption,
    ) -> Result<()> {
        let n = self.cfg.limit_train_batches.apply(train.len());
        let epoch = self.run.epoch;
        self.run.val_every = super::val_every(&self.cfg, n);
        self.run.begin_epoch();
        let (started, consumed_before) = (std::time::Instant::now(), self.run.batches_consumed);
        if self.run.batches_consumed < n {
            self.hooks(&*model, |cb, t| cb.on_train_epoch_start(t))?;
            let rank_zero = self.is_global_zero();
            let bar = Bar::new(
                self.cfg.enable_progress_bar && rank_zero,
                n,
                format!("Epoch {epoch}"),
            );
            let start = LoaderState {
                epoch,
                batches_consumed: self.run.batches_consumed,
            };
            for (idx, batch) in train
                .epoch_iter(self.run.seed, start)
                .take_while(|(i, _)| *i < n)
            {
                let before = self.saver.failures;
                let polled = self.saver.poll();
                self.save_policy(polled, before)?;
                if let Some(e) = self.world.as_ref().and_then(|w| w.failed_rank()) {
                    return Err(e);
                }
                self.hooks(&*model, |cb, t| cb.on_train_batch_start(t))?;
                let stepped = self.train_step(model, batch, idx, n)?;
                bar.step(&self.run.metrics.prog_bar);
                self.run.point = LoopPoint::TrainBatchEnd { stepped };
                let hooked = self.hooks(&*model, |cb, t| cb.on_train_batch_end(t));
                self.run.point = LoopPoint::AfterBatch { stepped };
                hooked?;
                if let (Some(k), Some(val)) = (self.run.val_every, data.val_loader()) {
                    if (idx + 1).is_multiple_of(k) && idx + 1 < n && self.val_due(data) {
                        self.fit_validation(model, val)?;
                    }
                }
                let last = idx + 1 == n;
                if !last {
                    self.run.point = LoopPoint::Outside;
                }
                // under DDP every rank stops at the same step when any rank was signalled
                let preempted = match &self.world {
                    Some(w) => w.any(preempt.requested())?,
                    None => preempt.requested(),
                };
                if preempted {
                    bar.finish();
                    self.run.point = LoopPoint::Outside;
                    return self.save_preempted(model);
                }
                if self.cfg.max_steps >= 0 && self.run.global_step >= self.cfg.max_steps {
                    self.run.should_stop = true;
                    break;
                }
            }
            bar.finish();
        }
        self.end_epoch(model, data, n)?;
        // In a log (no terminal, so no bar): one line per epoch, as Lightning's bar leaves.
        if self.cfg.enable_progress_bar && self.is_global_zero() && !Bar::drawn() {
            let batches = (self.run.batches_consumed.min(n)).saturating_sub(consumed_before.min(n));
            let line = super::summary::epoch_line(
                epoch,
                batches,
                started.elapsed(),
                self.callback_metrics(),
            );
            println!("{line}");
        }
        self.logging.save()?;
        self.run.end_epoch();
        Ok(())
    }

    /// The end of an epoch, each phase once even across a resume: the epoch-interval
    /// schedulers (when its last batch ran), the epoch's validation, `on_train_epoch_end`.
    fn end_epoch<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        n: usize,
    ) -> Result<()> {
        let epoch = self.run.epoch;
        if self.run.batches_consumed >= n && !self.run.phase.schedulers_stepped() {
            // a file of an earlier version saved before this epoch's schedulers stepped
            self.step_epoch_schedulers();
        }
        if !self.run.phase.validated() {
            if let (true, Some(val)) = (self.val_due(data), data.val_loader()) {
                // the last batch stepped the optimizer (the epoch's last batch always does)
                self.run.point = LoopPoint::AfterBatch { stepped: true };
                self.run.phase = EpochPhase::Validated;
                self.fit_validation(model, val)?;
            }
            self.run.phase = EpochPhase::Validated;
        }
        self.run.point = LoopPoint::Outside;
        let row = self.run.metrics.reduce_epoch(Stage::Train);
        self.logging
            .log_row(&row, epoch, self.run.log_step().max(0))?;
        if self.run.phase != EpochPhase::Done {
            self.run.phase = EpochPhase::Done;
            self.hooks(&*model, |cb, t| cb.on_train_epoch_end(t))?;
        }
        Ok(())
    }

    /// Steps the epoch-interval schedulers due this epoch (Lightning: right after the last
    /// batch's training step, before `on_train_batch_end`).
    fn step_epoch_schedulers(&mut self) {
        let epoch = self.run.epoch;
        // in manual optimization the training step steps its schedulers (Lightning)
        if let Some(o) = self.optim.as_mut().filter(|_| !self.run.manual) {
            for e in o.entries_mut() {
                for s in e
                    .schedulers
                    .iter_mut()
                    .filter(|s| s.interval == Interval::Epoch)
                {
                    if (epoch + 1) % s.frequency as i64 == 0 {
                        s.scheduler.step(e.optimizer.as_mut());
                        self.run.scheduler_steps.0 += 1;
                        self.run.scheduler_steps.1 += 1;
                    }
                }
            }
        }
        self.run.phase = match self.run.phase {
            EpochPhase::LegacyValidated => EpochPhase::Validated,
            _ => EpochPhase::SchedulersStepped,
        };
    }

    /// One training batch: forward, backward, and (every `accumulate_grad_batches` batches or
    /// at the epoch's end) clipping, the optimizer step and step-interval schedulers; after
    /// the epoch's last batch the epoch-interval schedulers step. Returns whether the
    /// optimizer stepped.
    fn train_step<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: crate::data::Batch,
        idx: usize,
        n: usize,
    ) -> Result<bool> {
        let batch = batch.to_device(self.cfg.device);
        let epoch = self.run.epoch;
        let acc = self.cfg.accumulate_grad_batches;
        let step_err = |what: &'static str| {
            move |e: Error| Error::Step {
                what,
                epoch,
                batch: idx,
                source: Box::new(e),
            }
        };
        // RNG (dropout etc.) depends only on (seed, epoch, batch): a resume reproduces it.
        tch::manual_seed(mix_seed(self.run.seed, &[epoch as u64, idx as u64]) as i64);
        let stepped = (idx + 1).is_multiple_of(acc) || idx + 1 == n;
        if let Some(d) = &mut self.ddp {
            d.before_forward(stepped)?;
        }
        let mut ctx = StepContext::new(Stage::Train, epoch, self.run.global_step);
        let precision = self.cfg.precision;
        if self.run.manual {
            return self.manual_train_step(model, &batch, idx, n, ctx);
        }
        let loss = precision.autocast(self.cfg.device, || {
            model.training_step(&batch, idx, &mut ctx)
        })??;
        let scaled = if acc > 1 { loss / acc as f64 } else { loss };
        let scaled = match &self.run.scaler {
            Some(s) => s.scale(&scaled),
            None => scaled,
        };
        if let Some(d) = &mut self.ddp {
            d.before_backward(&scaled, stepped)?;
        }
        scaled
            .f_backward()
            .map_err(|e| step_err("backward of training_step's loss")(e.into()))?;
        self.run.batches_consumed = idx + 1;
        self.run.total_batches += 1;
        self.run.is_last_batch = idx + 1 == n;
        if stepped {
            self.optimizer_step().map_err(step_err("optimizer step"))?;
        }
        self.after_train_step(ctx, &batch, idx, n, stepped)?;
        Ok(stepped)
    }

    /// A batch's end shared by both optimization modes: the step's logged metrics, the log
    /// row when due, and after the epoch's last batch the epoch-interval schedulers.
    fn after_train_step(
        &mut self,
        mut ctx: StepContext,
        batch: &crate::data::Batch,
        idx: usize,
        n: usize,
        stepped: bool,
    ) -> Result<()> {
        if let Some(w) = &self.world {
            w.sync_logged(&mut ctx.logged)?;
        }
        self.run
            .metrics
            .record_step(&ctx.logged, Stage::Train, batch.size());
        let step = self.run.log_step();
        if stepped && (step + 1) % self.cfg.log_every_n_steps as i64 == 0 {
            self.logging
                .log_row(&self.run.metrics.step_row, self.run.epoch, step)?;
        }
        if idx + 1 == n {
            self.step_epoch_schedulers();
        }
        Ok(())
    }

    /// A training batch in manual optimization: `training_step` gets the optimizers and the
    /// grad scaler (through `ctx`) and runs backward and the steps itself; the trainer counts
    /// its optimizer steps (`global_step`, as Lightning's `optim_step_progress`).
    fn manual_train_step<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: &crate::data::Batch,
        idx: usize,
        n: usize,
        mut ctx: StepContext,
    ) -> Result<bool> {
        let optim = self
            .optim
            .take()
            .ok_or_else(|| Error::Config("fit: no optimizer configured".into()))?;
        ctx.manual = Some(ManualOptim::new(optim, self.run.scaler.take()));
        let precision = self.cfg.precision;
        let out = precision
            .autocast(self.cfg.device, || {
                model.training_step(batch, idx, &mut ctx)
            })
            .map_err(Error::from)
            .and_then(|r| r);
        if let Some(m) = ctx.manual.take() {
            self.optim = Some(m.optim);
            self.run.scaler = m.scaler;
            self.run.global_step += m.steps;
            self.run.manual_steps.0 += m.steps;
            self.run.manual_steps.1 += m.steps;
        }
        // the returned loss is not back-propagated (Lightning detaches it)
        let _loss = out.map_err(|e| Error::Step {
            what: "training_step (manual optimization)",
            epoch: self.run.epoch,
            batch: idx,
            source: Box::new(e),
        })?;
        self.run.batches_consumed = idx + 1;
        self.run.total_batches += 1;
        self.run.is_last_batch = idx + 1 == n;
        // every batch "steps" for Lightning's loggers and counters (no accumulation here)
        self.after_train_step(ctx, batch, idx, n, true)?;
        Ok(true)
    }

    /// Clipping (on unscaled gradients), the optimizer step through the grad scaler,
    /// `zero_grad`, and the step-interval schedulers.
    fn optimizer_step(&mut self) -> Result<()> {
        let o = self
            .optim
            .as_mut()
            .and_then(|o| o.entries_mut().first_mut())
            .ok_or_else(|| Error::Config("fit: no optimizer configured".into()))?;
        if let Some(v) = self.cfg.gradient_clip_val {
            // Gradients are unscaled before clipping, as Lightning does.
            if let Some(s) = &mut self.run.scaler {
                let _found_inf = s.unscale_(o.optimizer.as_ref())?;
            }
            clip_gradients(&o.optimizer.params(), v, self.cfg.gradient_clip_algorithm)?;
        }
        match &mut self.run.scaler {
            // A step with inf/NaN gradients is skipped; the step still counts (Lightning).
            Some(s) => {
                s.step(o.optimizer.as_mut())?;
                s.update()?;
            }
            None => o.optimizer.step()?,
        }
        o.optimizer.zero_grad();
        self.run.global_step += 1;
        // Lightning counts a step-interval scheduler's `frequency` in batches of the epoch
        // (`batch_idx + 1`), not in global steps
        let batch = self.run.batches_consumed;
        for s in o
            .schedulers
            .iter_mut()
            .filter(|s| s.interval == Interval::Step)
        {
            if batch.is_multiple_of(s.frequency) {
                s.scheduler.step(o.optimizer.as_mut());
                self.run.scheduler_steps.0 += 1;
                self.run.scheduler_steps.1 += 1;
            }
        }
        Ok(())
    }

    /// Saves `last.ckpt` in the first checkpoint directory (or `<root>/checkpoints`) after a
    /// preemption signal, waits until it is durable, and stops.
    fn save_preempted<M: LightningModule>(&mut self, model: &M) -> Result<()> {
        let dir = self
            .callbacks
            .iter()
            .find_map(|c| c.checkpoint_dirpath())
            .unwrap_or_else(|| self.cfg.default_root_dir.join("checkpoints"));
        let path = dir.join("last.ckpt");
        let callbacks = self.callbacks.iter().map(|c| c.as_ref());
        let (optim, run) = (self.optim.as_ref(), &self.run);
        save_on_rank_zero(self.world.as_deref(), &mut self.saver, &path, true, || {
            checkpoint_of(model, optim, callbacks, run, false)
        })?;
        warn(&format!(
            "received a preemption signal: saved {} at epoch {} step {}; resume with ckpt_path=last",
            path.display(),
            self.run.epoch,
            self.run.global_step
        ));
        self.run.should_stop = true;
        self.run.preempted = true;
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
        let ddp = refused(Trainer::builder().strategy("ddp").devices(2), true, 2);
        assert!(ddp.contains("not supported with strategy=\"ddp\""), "{ddp}");
        let clip = refused(Trainer::builder().gradient_clip_val(0.5), true, 1);
        assert!(clip.contains("gradient_clip_val(0.5)"), "{clip}");
        let cfg = Trainer::builder().build().unwrap().cfg;
        assert!(check_optimization(&cfg, true, 2).is_ok());
        assert!(check_optimization(&cfg, false, 1).is_ok());
    }
}
