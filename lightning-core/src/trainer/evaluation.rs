//! Evaluation loops: validation (the sanity check and the runs inside `fit`, and
//! `Trainer::validate`) and `Trainer::test`.

use super::ddp::Fsdp;
use super::resume::Loaded;
use super::{need, CkptPath, Trainer};
use crate::data::{DataLoader, DataModule, LoaderState};
use crate::error::Result;
use crate::lightning_module::{LightningModule, Stage, StepContext};
use indexmap::IndexMap;

impl Trainer {
    /// Lightning's sanity check: a few validation batches before training, whose metrics
    /// are then discarded.
    pub(crate) fn sanity_check<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
    ) -> Result<()> {
        let Some(val) = data.val_loader() else {
            return Ok(());
        };
        let n = self
            .cfg
            .num_sanity_val_steps
            .min(self.cfg.limit_val_batches.apply(val.len()));
        if n == 0 {
            return Ok(());
        }
        self.run.flags.sanity_checking = true;
        // What the sanity check logs is discarded; what a resume restored stays.
        let kept = std::mem::take(&mut self.run.metrics.callback_metrics);
        let r = self.eval_batches(model, val, Stage::Validate, n, false);
        self.run.metrics.reduce_epoch(Stage::Validate);
        self.run.metrics.callback_metrics = kept;
        self.run.flags.sanity_checking = false;
        r
    }

    /// Runs `n` batches of an evaluation loop without gradients, accumulating metrics (and,
    /// inside `fit`, the validation progress counters). A `sharded` run (each rank its own
    /// share, maybe of another length) syncs nothing per step; its epoch sums are reduced
    /// once at the end.
    fn eval_batches<M: LightningModule>(
        &mut self,
        model: &mut M,
        loader: &DataLoader,
        stage: Stage,
        n: usize,
        sharded: bool,
    ) -> Result<()> {
        if let Some(f) = &mut self.fsdp {
            f.unshard()?;
        }
        let validate = stage == Stage::Validate;
        let mut r = Ok(());
        if validate {
            r = self.hooks(&*model, |cb, t| cb.on_validation_epoch_start(t));
        }
        if r.is_ok() {
            r = self.eval_batches_inner(model, loader, stage, n, sharded);
        }
        if validate {
            // Even after a failed batch: a callback that swapped weights in swaps them back.
            let end = self.hooks(&*model, |cb, t| cb.on_validation_epoch_end(t));
            r = r.and(end);
        }
        if let Some(f) = &mut self.fsdp {
            f.reshard();
        }
        r
    }

    fn eval_batches_inner<M: LightningModule>(
        &mut self,
        model: &mut M,
        loader: &DataLoader,
        stage: Stage,
        n: usize,
        sharded: bool,
    ) -> Result<()> {
        let device = self.cfg.device;
        let (epoch, step) = (self.run.progress.epoch, self.run.progress.global_step);
        let world = self.world.clone().filter(|_| !sharded);
        let run = &mut self.run;
        let precision = self.cfg.precision;
        let mut fsdp = self.fsdp.as_mut();
        let in_fit = run.setup.fitting && !run.flags.sanity_checking;
        let logging = match run.flags.sanity_checking {
            true => None,
            false => Some(&mut self.logging),
        };
        tch::no_grad(|| {
            let mut logging = logging;
            for next in loader.epoch_iter_until(0, LoaderState::default(), n) {
                let (idx, batch) = next?;
                let batch = batch.to_device_with(device, loader.pins_memory());
                let mut ctx = StepContext::new(stage, epoch, step);
                // FSDP units gather around their own forward
                let active = fsdp.as_deref_mut().map(Fsdp::activate);
                precision.autocast(device, || match stage {
                    Stage::Test => model.test_step(&batch, idx, &mut ctx),
                    _ => model.validation_step(&batch, idx, &mut ctx),
                })??;
                drop(active);
                if let Some(f) = fsdp.as_deref_mut() {
                    f.take_unit_error()?;
                }
                if let Some(w) = &world {
                    w.sync_logged(&mut ctx.logged)?;
                }
                run.metrics.record_step(&ctx.logged, stage, batch.size());
                // `on_step` metrics reach the logger at step = evaluation batches seen so far
                // in this fit/validate/test (Lightning's `update_eval_step_metrics(
                // _seen_batches_per_dataloader)`; the sanity check neither logs nor counts)
                if let Some(l) = logging.as_deref_mut() {
                    l.log_metrics_at(&run.metrics.step_row, run.progress.eval_batches_seen)?;
                    run.progress.eval_batches_seen += 1;
                }
                if in_fit {
                    run.progress.val_batch_done(idx + 1 == n);
                }
            }
            Ok(())
        })
    }

    /// One validation run inside `fit`, then `on_validation_end`.
    pub(crate) fn fit_validation<M: LightningModule>(
        &mut self,
        model: &mut M,
        val: &DataLoader,
    ) -> Result<()> {
        let n = self.cfg.limit_val_batches.apply(val.len());
        if n == 0 {
            return Ok(());
        }
        self.run.progress.begin_validation();
        // Under DDP each rank validates its share (no sample twice, unlike Lightning's padded
        // sampler), and the epoch means are reduced from every rank's sums and counts: the
        // monitored values are the single-process ones, and the same on every rank.
        let sharded = self.world.clone().and_then(|w| {
            let shard = val.eval_shard(w.env.world_size, w.env.rank)?;
            Some((w, shard))
        });
        match sharded {
            Some((w, shard)) => {
                let n = self.cfg.limit_val_batches.apply(shard.len());
                self.eval_batches(model, &shard, Stage::Validate, n, true)?;
                self.run.metrics.sync_epoch(Stage::Validate, |v| w.sum(v))?;
            }
            None => self.eval_batches(model, val, Stage::Validate, n, false)?,
        }
        self.run.flags.val_ran = true;
        let row = self.run.metrics.reduce_epoch(Stage::Validate);
        let (epoch, step) = (self.run.progress.epoch, self.run.progress.global_step - 1);
        self.logging.log_row(&row, epoch, step.max(0))?;
        self.hooks(&*model, |cb, t| cb.on_validation_end(t))
    }

    /// Whether the epoch's validation is due (`check_val_every_n_epoch`).
    pub(crate) fn val_due(&self, data: &DataModule) -> bool {
        data.val_loader().is_some()
            && (self.run.progress.epoch + 1) % self.cfg.check_val_every_n_epoch as i64 == 0
    }

    /// Restores `ckpt_path` (if given) for an evaluation loop as Lightning's
    /// `_restore_modules_and_callbacks`: the module (`on_load_checkpoint`, then the weights),
    /// the datamodule's state, the callbacks (`on_load_checkpoint`, then their states).
    pub(crate) fn eval_setup<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<()> {
        self.run.setup.fitting = false;
        self.run.progress.eval_batches_seen = 0;
        self.run.setup.datamodule = data.named_state().cloned();
        let rank_zero = self.is_global_zero();
        self.logging
            .start(&self.cfg.default_root_dir, rank_zero, false)?;
        self.hooks(&*model, |cb, t| cb.setup(t))?;
        if let Some(p) = ckpt_path
            && let Some(path) = self.resolve_ckpt(&p)?
        {
            let loaded = Loaded::read(&*self.cfg.checkpoint_io, path)?;
            loaded.load_model(model)?;
            self.restore_datamodule(&loaded)?;
            self.restore_callbacks(&loaded)?;
        }
        model.move_to(self.cfg.device);
        Ok(())
    }

    fn eval_loop<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        loader: &DataLoader,
        stage: Stage,
        ckpt_path: Option<CkptPath>,
    ) -> Result<IndexMap<String, f64>> {
        let result = self.eval_run(model, data, loader, stage, ckpt_path);
        // Lightning finalizes the loggers after every run, failed or not
        let finalized = self.logging.finalize(&result);
        let row = result?;
        finalized?;
        Ok(row)
    }

    fn eval_run<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        loader: &DataLoader,
        stage: Stage,
        ckpt_path: Option<CkptPath>,
    ) -> Result<IndexMap<String, f64>> {
        self.eval_setup(model, data, ckpt_path)?;
        let limit = if stage == Stage::Test {
            self.cfg.limit_test_batches
        } else {
            self.cfg.limit_val_batches
        };
        self.eval_batches(model, loader, stage, limit.apply(loader.len()), false)?;
        let row = self.run.metrics.reduce_epoch(stage);
        self.logging
            .log_row(&row, self.run.progress.epoch, self.run.progress.global_step)?;
        Ok(row)
    }

    /// Runs the validation loop once and returns the logged epoch metrics
    /// (`ckpt_path`: evaluate those weights instead of the model's current ones).
    pub fn validate<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<IndexMap<String, f64>> {
        let val = need(data.val_loader(), "validate: val")?;
        self.eval_loop(model, data, val, Stage::Validate, ckpt_path)
    }

    /// Runs the test loop once and returns the logged epoch metrics.
    pub fn test<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<IndexMap<String, f64>> {
        let test = need(data.test_loader(), "test: test")?;
        self.eval_loop(model, data, test, Stage::Test, ckpt_path)
    }
}
