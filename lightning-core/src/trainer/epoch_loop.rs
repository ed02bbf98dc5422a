//! One training epoch (Lightning's training epoch loop): its batches, each a training step of
//! the module's kind (`automatic.rs`, `manual.rs`) followed by what every step shares (logged
//! metrics, schedulers, hooks), the validation interval, preemption and `max_steps`; then the
//! end of the epoch. The LR schedulers step here, in one function, by interval.

use super::ddp::save_on_rank_zero;
use super::preempt::Preemption;
use super::progress::Bar;
use super::state::LoopPoint;
use super::{checkpoint_of, warn, Trainer};
use crate::checkpoint::schema::EpochPhase;
use crate::data::{mix_seed, Batch, DataLoader, DataModule, LoaderState};
use crate::error::Result;
use crate::lightning_module::{Interval, LightningModule, Stage, StepContext};

impl Trainer {
    /// Runs the epoch `self.run.progress.epoch` from where it stands (its start, or the
    /// batch a resume left it at) to its end.
    pub(super) fn train_epoch<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        train: &DataLoader,
        preempt: &Preemption,
    ) -> Result<()> {
        let epoch = self.run.progress.epoch;
        let start = LoaderState {
            epoch,
            batches_consumed: self.run.progress.batches_consumed,
            elastic: self.run.progress.elastic,
        };
        let n = self
            .cfg
            .limit_train_batches
            .apply(train.epoch_len(self.run.setup.seed, &start));
        self.run.setup.val_every = super::val_every(&self.cfg, n);
        self.run.progress.begin_epoch();
        let (started, consumed_before) = (
            std::time::Instant::now(),
            self.run.progress.batches_consumed,
        );
        if self.run.progress.batches_consumed < n {
            self.hooks(&*model, |cb, t| cb.on_train_epoch_start(t))?;
            let rank_zero = self.is_global_zero();
            let bar = Bar::new(
                self.cfg.enable_progress_bar && rank_zero,
                n,
                format!("Epoch {epoch}"),
            );
            let mut batches = train.epoch_iter_until(self.run.setup.seed, start, n);
            for next in batches.by_ref() {
                let (idx, batch) = next?;
                let before = self.saver.failures;
                let polled = self.saver.poll();
                self.save_policy(polled, before)?;
                if let Some(e) = self.world.as_ref().and_then(|w| w.failed_rank()) {
                    return Err(e);
                }
                self.hooks(&*model, |cb, t| cb.on_train_batch_start(t))?;
                let batch = batch.to_device_with(self.cfg.device, train.pins_memory());
                let stepped = self.train_batch(model, batch, idx, n)?;
                bar.step(&self.run.metrics.prog_bar);
                self.run.progress.point = LoopPoint::TrainBatchEnd { stepped };
                let hooked = self.hooks(&*model, |cb, t| cb.on_train_batch_end(t));
                self.run.progress.point = LoopPoint::AfterBatch { stepped };
                hooked?;
                if let (Some(k), Some(val)) = (self.run.setup.val_every, data.val_loader())
                    && (idx + 1).is_multiple_of(k)
                    && idx + 1 < n
                    && self.val_due(data)
                {
                    self.fit_validation(model, val)?;
                }
                let last = idx + 1 == n;
                if !last {
                    self.run.progress.point = LoopPoint::Outside;
                }
                // under DDP every rank stops at the same step when any rank was signalled, or
                // when a callback on any rank asked to stop (one all-reduce for both)
                let local = [preempt.requested(), self.run.flags.should_stop];
                let [preempted, stop] = match &self.world {
                    Some(w) => w.any_of(local)?,
                    None => local,
                };
                if preempted {
                    bar.finish();
                    self.run.progress.point = LoopPoint::Outside;
                    return self.save_preempted(model);
                }
                if self.cfg.max_steps >= 0 && self.run.progress.global_step >= self.cfg.max_steps {
                    self.run.flags.should_stop = true;
                    break;
                }
                // A callback asked to stop (Lightning's `trainer.should_stop`: its epoch loop
                // is done at the end of this batch).
                if stop && !last {
                    self.run.flags.should_stop = true;
                    break;
                }
            }
            self.run.clock.data_wait += batches.waited();
            bar.finish();
        }
        self.end_epoch(model, data, n)?;
        // In a log (no terminal, so no bar): one line per epoch, as Lightning's bar leaves;
        // none for an epoch this process ran no batch of (a resume at the epoch's end).
        let consumed = self.run.progress.batches_consumed;
        let batches = (consumed.min(n)).saturating_sub(consumed_before.min(n));
        if self.cfg.enable_progress_bar && self.is_global_zero() && !Bar::drawn() && batches > 0 {
            let line = super::summary::epoch_line(
                epoch,
                batches,
                started.elapsed(),
                self.callback_metrics(),
            );
            println!("{line}");
        }
        self.logging.save()?;
        self.run.progress.end_epoch();
        self.run.flags.skip_optimization = false;
        Ok(())
    }

    /// One training batch: the RNG reseeded from (seed, epoch, batch), the module's kind of
    /// training step, then what both kinds share: the step-interval schedulers when the
    /// optimizer stepped, the step's logged metrics and log row, and after the epoch's last
    /// batch the epoch-interval schedulers. Returns whether the optimizer stepped.
    fn train_batch<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: Batch,
        idx: usize,
        n: usize,
    ) -> Result<bool> {
        let (epoch, step) = (self.run.progress.epoch, self.run.progress.global_step);
        // RNG (dropout etc.) depends only on (seed, epoch, batch): a resume reproduces it.
        tch::manual_seed(mix_seed(self.run.setup.seed, &[epoch as u64, idx as u64]) as i64);
        let mut ctx = StepContext::new(Stage::Train, epoch, step);
        let stepped = match self.run.setup.manual {
            true => self.manual_step(model, &batch, idx, n, &mut ctx)?,
            false => self.automatic_step(model, &batch, idx, n, &mut ctx)?,
        };
        if stepped {
            self.step_schedulers(Interval::Step)?;
        }
        if let Some(w) = &self.world {
            w.sync_logged(&mut ctx.logged)?;
        }
        self.run
            .metrics
            .record_step(&ctx.logged, Stage::Train, batch.size());
        let step = self.run.log_step();
        if stepped && (step + 1) % self.cfg.log_every_n_steps as i64 == 0 {
            self.logging
                .log_row(&self.run.metrics.step_row, epoch, step)?;
        }
        if idx + 1 == n {
            self.epoch_end_schedulers()?;
        }
        Ok(stepped)
    }

    /// Steps the LR schedulers of `interval` that are due (Lightning's
    /// `update_lr_schedulers`): a step-interval scheduler's `frequency` counts batches of the
    /// epoch (`batch_idx + 1`, not global steps, as Lightning), an epoch-interval one's
    /// epochs. In manual optimization the training step steps its schedulers (Lightning).
    fn step_schedulers(&mut self, interval: Interval) -> Result<()> {
        // Step-interval metric-driven schedulers step with the others (Lightning's
        // `update_lr_schedulers("step", update_plateau_schedulers=True)`); epoch-interval ones
        // after the epoch-end hooks.
        self.step_due_schedulers(interval, interval == Interval::Step)
    }

    /// The metric-driven (`ReduceLROnPlateau`) epoch schedulers due now.
    fn step_plateau_schedulers(&mut self, interval: Interval) -> Result<()> {
        self.step_due_schedulers(interval, true)
    }

    /// Steps the schedulers of `interval` due now: the others always, the metric-driven
    /// ones only with `plateau`, with the value their `monitor` names in `callback_metrics`
    /// (missing: an error when `strict`, else a warning and no step).
    fn step_due_schedulers(&mut self, interval: Interval, plateau: bool) -> Result<()> {
        let Some(optim) = self.optim.as_mut().filter(|_| !self.run.setup.manual) else {
            return Ok(());
        };
        let progress = &mut self.run.progress;
        let metrics = &self.run.metrics.callback_metrics;
        let count = match interval {
            Interval::Step => progress.batches_consumed,
            Interval::Epoch => (progress.epoch + 1) as usize,
        };
        for e in optim.config.entries_mut() {
            for s in e.schedulers.iter_mut() {
                if s.interval != interval || !count.is_multiple_of(s.frequency) {
                    continue;
                }
                if !s.scheduler.needs_metric() {
                    if !plateau || interval == Interval::Step {
                        s.scheduler.step(e.optimizer.as_mut());
                        progress.scheduler_stepped();
                    }
                    continue;
                }
                if !plateau {
                    continue;
                }
                let key = s.monitor.as_deref().unwrap_or_default();
                match metrics.get(key) {
                    Some(&v) => {
                        s.scheduler.step_with(e.optimizer.as_mut(), v);
                        progress.scheduler_stepped();
                    }
                    None if s.strict => {
                        let available: Vec<&String> = metrics.keys().collect();
                        return Err(crate::error::Error::Config(format!(
                            "ReduceLROnPlateau conditioned on metric {key} which is not available. \
                             Available metrics are: {available:?}. Condition can be set using \
                             `monitor` key in lr scheduler dict"
                        )));
                    }
                    None => super::warn(&format!(
                        "ReduceLROnPlateau conditioned on metric {key} which is not available but \
                         strict is set to `False`. Skipping learning rate update."
                    )),
                }
            }
        }
        Ok(())
    }

    /// The epoch-interval schedulers due this epoch (Lightning: right after the last
    /// batch's training step, before `on_train_batch_end`), recorded as a phase of the
    /// epoch's end so a resume neither repeats nor skips them.
    fn epoch_end_schedulers(&mut self) -> Result<()> {
        self.step_due_schedulers(Interval::Epoch, false)?;
        let phase = &mut self.run.progress.phase;
        *phase = match *phase {
            EpochPhase::LegacyValidated => EpochPhase::Validated,
            _ => EpochPhase::SchedulersStepped,
        };
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
        let epoch = self.run.progress.epoch;
        if self.run.progress.batches_consumed >= n && !self.run.progress.phase.schedulers_stepped()
        {
            // a file of an earlier version saved before this epoch's schedulers stepped
            self.epoch_end_schedulers()?;
        }
        if !self.run.progress.phase.validated() {
            if let (true, Some(val)) = (self.val_due(data), data.val_loader()) {
                // the last batch stepped the optimizer (the epoch's last batch always does)
                self.run.progress.point = LoopPoint::AfterBatch { stepped: true };
                self.run.progress.phase = EpochPhase::Validated;
                self.fit_validation(model, val)?;
            }
            self.run.progress.phase = EpochPhase::Validated;
        }
        self.run.progress.point = LoopPoint::Outside;
        let row = self.run.metrics.reduce_epoch(Stage::Train);
        self.logging
            .log_row(&row, epoch, self.run.log_step().max(0))?;
        if !matches!(
            self.run.progress.phase,
            EpochPhase::EndHooksRan | EpochPhase::Done
        ) {
            self.run.progress.phase = EpochPhase::EndHooksRan;
            self.hooks(&*model, |cb, t| cb.on_train_epoch_end(t))?;
        }
        if self.run.progress.phase == EpochPhase::EndHooksRan {
            // Lightning: metric-driven schedulers step after the epoch-end hooks.
            self.step_plateau_schedulers(Interval::Epoch)?;
            self.run.progress.phase = EpochPhase::Done;
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
        save_on_rank_zero(
            self.world.as_deref(),
            self.fsdp.as_ref(),
            &mut self.saver,
            &path,
            true,
            || checkpoint_of(model, optim, callbacks, run, false),
        )?;
        warn(&format!(
            "received a preemption signal: saved {} at epoch {} step {}; resume with ckpt_path=last",
            path.display(),
            self.run.progress.epoch,
            self.run.progress.global_step
        ));
        self.run.flags.should_stop = true;
        self.run.flags.preempted = true;
        Ok(())
    }
}
