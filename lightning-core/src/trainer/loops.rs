//! The loops: `fit` (epochs of training batches with validation), `validate`, `test` and
//! `predict`, and the hooks around them, in Lightning 2.x's order:
//!
//! ```text
//! fit: setup -> restore(ckpt) -> on_fit_start -> sanity check -> for each epoch {
//!        for each batch { reseed RNG; training_step; backward; [clip; step; zero_grad;
//!          step-interval schedulers]; log; on_train_batch_end; [mid-epoch validation];
//!          [preemption: save last.ckpt, stop]; [max_steps: stop] }
//!        validation + on_validation_end -> epoch-interval schedulers -> on_train_epoch_end }
//!      -> on_fit_end; pending async saves durable before `fit` returns.
//! ```

use super::logger::CsvLogger;
use super::preempt::Preemption;
use super::progress::Bar;
use super::restore;
use super::saver::Saver;
use super::{
    clip_gradients, effective_max_epochs, need, CkptPath, Ctx, Hook, RunState, SaveErrorPolicy,
    Trainer,
};
use crate::callbacks::{find_last_checkpoint, Callback, ModelCheckpoint};
use crate::checkpoint;
use crate::data::{mix_seed, DataLoader, DataModule, LoaderState};
use crate::error::{Error, Result};
use crate::hparams::Hyperparameters;
use crate::lightning_module::{Interval, LightningModule, Stage, StepContext};
use crate::value::Value;
use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// How far the end-of-epoch sequence got (saved so a resume neither repeats nor skips it).
pub(crate) struct EpochEnd;
impl EpochEnd {
    /// The epoch's validation ran (or was not due).
    pub const VALIDATED: u8 = 1;
    /// The epoch-interval schedulers stepped.
    pub const SCHEDULED: u8 = 2;
    /// `on_train_epoch_end` was called: the next thing is the next epoch.
    pub const DONE: u8 = 3;
}

/// The default checkpoint callback added when checkpointing is on and none is given:
/// Lightning's `ModelCheckpoint()` (every epoch, `epoch=E-step=S.ckpt` in the log dir).
fn default_checkpoint_callback() -> Result<Box<dyn Callback>> {
    Ok(Box::new(ModelCheckpoint::builder().build()?))
}

/// Whether `cb` checkpoints (a `ModelCheckpoint`, or a callback saying so).
fn is_checkpointer(cb: &dyn Callback) -> bool {
    cb.as_any().is::<ModelCheckpoint>() || cb.is_checkpoint_callback()
}

/// The directory a checkpointing callback writes to, once known.
fn checkpoint_dir(cb: &dyn Callback) -> Option<PathBuf> {
    match cb.as_any().downcast_ref::<ModelCheckpoint>() {
        Some(mc) => mc.dirpath().map(Path::to_owned),
        None => cb.checkpoint_dirpath(),
    }
}

/// The best checkpoint of a checkpointing callback, if any.
fn best_path(cb: &dyn Callback) -> Option<PathBuf> {
    match cb.as_any().downcast_ref::<ModelCheckpoint>() {
        Some(mc) => mc
            .best_model_path()
            .map(Path::to_owned)
            .filter(|p| !p.as_os_str().is_empty()),
        None => cb.best_model_path(),
    }
}

fn warn(msg: &str) {
    tracing::warn!("{msg}");
    eprintln!("warning: {msg}");
}

impl Trainer {
    /// Runs `hook` on every callback, each seeing the rest of the trainer through a context.
    fn hooks<M: LightningModule>(&mut self, model: &M, hook: Hook) -> Result<()> {
        if self.callbacks.is_empty() {
            return Ok(());
        }
        if self.cb_states.len() != self.callbacks.len() {
            self.cb_states = self
                .callbacks
                .iter()
                .map(|c| (c.state_key(), c.state_dict()))
                .collect();
        }
        let log_dir = self.logger.as_ref().map(|l| l.dir().to_owned());
        let failures_before = self.saver.failures;
        let mut ctx = Ctx {
            model,
            optim: self.optim.as_ref(),
            run: &self.run,
            cfg: &self.cfg,
            saver: &mut self.saver,
            log_dir,
            states: &mut self.cb_states,
            caller: 0,
            stop_requested: false,
        };
        let mut result = Ok(());
        for (i, cb) in self.callbacks.iter_mut().enumerate() {
            ctx.caller = i;
            result = hook(cb.as_mut(), &mut ctx);
            ctx.states[i] = (cb.state_key(), cb.state_dict());
            if result.is_err() {
                break;
            }
        }
        if ctx.stop_requested {
            self.run.should_stop = true;
        }
        self.save_policy(result, failures_before)
    }

    /// Applies [`SaveErrorPolicy`] to `result` when a checkpoint save failed since
    /// `failures_before` (other errors pass through).
    fn save_policy(&self, result: Result<()>, failures_before: usize) -> Result<()> {
        match result {
            Err(e)
                if self.saver.failures > failures_before
                    && self.cfg.on_save_error == SaveErrorPolicy::WarnAndContinue =>
            {
                warn(&format!(
                    "checkpoint not saved, training goes on (on_save_error=WarnAndContinue): {e}"
                ));
                Ok(())
            }
            r => r,
        }
    }

    /// Resolves `ckpt_path` to a file; `None` for `Last` with nothing saved yet (warned).
    fn resolve_ckpt(&self, ckpt_path: &CkptPath) -> Result<Option<PathBuf>> {
        let path = match ckpt_path {
            CkptPath::Path(p) => p.clone(),
            CkptPath::Last => {
                let dirs: Vec<PathBuf> = self
                    .callbacks
                    .iter()
                    .filter_map(|c| checkpoint_dir(c.as_ref()))
                    .collect();
                match find_last_checkpoint(&dirs, |p| checkpoint::verify(p).is_ok()) {
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
                .find_map(|c| best_path(c.as_ref()))
                .ok_or_else(|| {
                    Error::Msg(
                    "ckpt_path=\"best\" is set but no checkpoint callback has a best model path \
                     (no ModelCheckpoint, or it saved nothing yet)"
                        .into(),
                )
                })?,
        };
        if !path.is_file() {
            return Err(Error::Msg(format!(
                "Checkpoint file not found: {}",
                path.display()
            )));
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
        self.saver = Saver::new(self.cfg.async_checkpointing);
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
        let logged = self.logger.as_ref().map_or(Ok(()), |l| l.save());
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
        let train = need(data.train_loader(), "fit: train")?;
        self.run = RunState {
            seed: self.cfg.seed.unwrap_or_else(random_seed),
            fitting: true,
            num_val_batches: data
                .val_loader()
                .map_or(0, |v| self.cfg.limit_val_batches.apply(v.len())),
            ..RunState::default()
        };
        self.run.val_every =
            super::val_every(&self.cfg, self.cfg.limit_train_batches.apply(train.len()));
        if self.cfg.enable_checkpointing
            && !self.callbacks.iter().any(|c| is_checkpointer(c.as_ref()))
        {
            self.callbacks.push(default_checkpoint_callback()?);
        }
        self.cb_states.clear();
        // The log directory is chosen (not created) first: callbacks resolve their
        // directories from it in `setup`, before `ckpt_path = Last` searches them.
        self.logger = match self.cfg.logger {
            true => Some(CsvLogger::new_version(&self.cfg.default_root_dir)),
            false => None,
        };
        self.hooks(&*model, |cb, t| cb.setup(t))?;
        let resume = match &ckpt_path {
            Some(p) => self.resolve_ckpt(p)?,
            None => None,
        };
        let resume = match resume {
            Some(path) => {
                let ckpt = checkpoint::load(&path)
                    .map_err(|e| Error::Msg(format!("loading checkpoint: {e}")))?;
                restore::require_training_state(&ckpt, &path)?;
                Some((path, ckpt))
            }
            None => None,
        };
        model.move_to(self.cfg.device);
        let mut optim = model.configure_optimizers()?;
        self.run.scaler = self.precision.grad_scaler();
        if let Some(l) = &self.logger {
            l.log_hparams(&model.hparams().to_value())?;
        }
        if let Some((path, ckpt)) = resume {
            // Lightning's order: model, datamodule, callbacks, precision, loops, optimizers, schedulers.
            model.on_load_checkpoint(&ckpt)?;
            restore::load_model_state(model, &ckpt, &path)?;
            self.restore_callbacks(&ckpt, &path)?;
            if let (Some(scaler), Some(state)) =
                (&mut self.run.scaler, ckpt.get(restore::PRECISION_KEY))
            {
                scaler.load_state_dict(state).map_err(|e| {
                    Error::Msg(format!(
                        "{}: restoring the grad scaler: {e}",
                        path.display()
                    ))
                })?;
            }
            let pos = restore::loop_position(&ckpt, &path)?;
            if let (Some(saved), Some(given)) = (pos.seed, self.cfg.seed) {
                if saved != given {
                    warn(&format!(
                        "resuming with the checkpoint's seed {saved}, not the trainer's {given}"
                    ));
                }
            }
            self.run.seed = pos.seed.unwrap_or(self.run.seed);
            self.run.epoch = pos.epoch;
            self.run.global_step = pos.global_step;
            self.run.batches_consumed = pos.batches_consumed;
            self.run.epoch_end = pos.epoch_end;
            self.run.total_batches = pos.total_batches;
            self.run.train_time_before =
                std::time::Duration::from_secs_f64(pos.train_time_s.max(0.0));
            restore::restore_optim(&ckpt, &mut optim, &path)?;
            self.run.resumed_from = Some(path);
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
        Ok(())
    }

    fn restore_callbacks(&mut self, ckpt: &Value, path: &Path) -> Result<()> {
        let states = ckpt.get("callbacks");
        for cb in &mut self.callbacks {
            let key = cb.state_key();
            match states.and_then(|s| s.get(&key)) {
                Some(s) => cb.load_state_dict(s).map_err(|e| {
                    Error::Msg(format!("{}: restoring callback {key}: {e}", path.display()))
                })?,
                None => warn(&format!(
                    "{}: no state for callback {key} in the checkpoint; it starts fresh",
                    path.display()
                )),
            }
        }
        Ok(())
    }

    fn sanity_check<M: LightningModule>(&mut self, model: &mut M, data: &DataModule) -> Result<()> {
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
        self.run.sanity_checking = true;
        let r = self.eval_batches(model, val, Stage::Validate, n);
        self.run.metrics.reduce_epoch(Stage::Validate);
        self.run.metrics.callback_metrics.clear();
        self.run.sanity_checking = false;
        r
    }

    /// Runs `n` batches of an evaluation loop without gradients, accumulating metrics.
    fn eval_batches<M: LightningModule>(
        &mut self,
        model: &mut M,
        loader: &DataLoader,
        stage: Stage,
        n: usize,
    ) -> Result<()> {
        let device = self.cfg.device;
        let (epoch, step) = (self.run.epoch, self.run.global_step);
        let metrics = &mut self.run.metrics;
        let precision = self.precision;
        tch::no_grad(|| {
            for (idx, batch) in loader.epoch_iter(0, LoaderState::default()).take(n) {
                let batch = batch.to_device(device);
                let mut ctx = StepContext::new(stage, epoch, step);
                precision.autocast(|| match stage {
                    Stage::Test => model.test_step(&batch, idx, &mut ctx),
                    _ => model.validation_step(&batch, idx, &mut ctx),
                })?;
                metrics.record_step(&ctx.logged, stage, batch.size());
            }
            Ok(())
        })
    }

    /// One validation run inside `fit`, then `on_validation_end`.
    fn fit_validation<M: LightningModule>(
        &mut self,
        model: &mut M,
        val: &DataLoader,
    ) -> Result<()> {
        let n = self.cfg.limit_val_batches.apply(val.len());
        if n == 0 {
            return Ok(());
        }
        self.eval_batches(model, val, Stage::Validate, n)?;
        self.run.val_batches += n as i64;
        self.run.val_ran = true;
        let row = self.run.metrics.reduce_epoch(Stage::Validate);
        let (epoch, step) = (self.run.epoch, self.run.global_step - 1);
        if let Some(l) = &mut self.logger {
            l.log_row(&row, epoch, step.max(0));
        }
        self.hooks(&*model, |cb, t| cb.on_validation_end(t))
    }

    fn val_due(&self, data: &DataModule) -> bool {
        data.val_loader().is_some()
            && (self.run.epoch + 1) % self.cfg.check_val_every_n_epoch as i64 == 0
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
        let acc = self.cfg.accumulate_grad_batches;
        if self.run.batches_consumed < n {
            let bar = Bar::new(self.cfg.enable_progress_bar, n, format!("Epoch {epoch}"));
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
                self.train_step(model, batch, idx, n, acc)?;
                bar.step(&self.run.metrics.prog_bar);
                self.hooks(&*model, |cb, t| cb.on_train_batch_end(t))?;
                if let (Some(k), Some(val)) = (self.run.val_every, data.val_loader()) {
                    if (idx + 1).is_multiple_of(k) && idx + 1 < n && self.val_due(data) {
                        self.fit_validation(model, val)?;
                    }
                }
                if preempt.requested() {
                    bar.finish();
                    return self.save_preempted(model);
                }
                if self.cfg.max_steps >= 0 && self.run.global_step >= self.cfg.max_steps {
                    self.run.should_stop = true;
                    break;
                }
            }
            bar.finish();
        }
        // End of epoch: validation, epoch schedulers, on_train_epoch_end (resumable phases).
        if self.run.epoch_end < EpochEnd::VALIDATED {
            if let (true, Some(val)) = (self.val_due(data), data.val_loader()) {
                self.run.epoch_end = EpochEnd::VALIDATED;
                self.fit_validation(model, val)?;
            }
            self.run.epoch_end = EpochEnd::VALIDATED;
        }
        if self.run.epoch_end < EpochEnd::SCHEDULED {
            if let Some(o) = self.optim.as_mut() {
                for s in o
                    .schedulers
                    .iter_mut()
                    .filter(|s| s.interval == Interval::Epoch)
                {
                    if (epoch + 1) % s.frequency as i64 == 0 {
                        s.scheduler.step(o.optimizer.as_mut());
                    }
                }
            }
            self.run.epoch_end = EpochEnd::SCHEDULED;
        }
        let row = self.run.metrics.reduce_epoch(Stage::Train);
        if let Some(l) = &mut self.logger {
            l.log_row(&row, epoch, (self.run.global_step - 1).max(0));
        }
        if self.run.epoch_end < EpochEnd::DONE {
            self.run.epoch_end = EpochEnd::DONE;
            self.hooks(&*model, |cb, t| cb.on_train_epoch_end(t))?;
        }
        if let Some(l) = &self.logger {
            l.save()?;
        }
        self.run.epoch += 1;
        self.run.batches_consumed = 0;
        self.run.epoch_end = 0;
        self.run.is_last_batch = false;
        Ok(())
    }

    fn train_step<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: crate::data::Batch,
        idx: usize,
        n: usize,
        acc: usize,
    ) -> Result<()> {
        let batch = batch.to_device(self.cfg.device);
        let epoch = self.run.epoch;
        // RNG (dropout etc.) depends only on (seed, epoch, batch): a resume reproduces it.
        tch::manual_seed(mix_seed(self.run.seed, &[epoch as u64, idx as u64]) as i64);
        let mut ctx = StepContext::new(Stage::Train, epoch, self.run.global_step);
        let precision = self.precision;
        let loss = precision.autocast(|| model.training_step(&batch, idx, &mut ctx))?;
        let scaled = if acc > 1 { loss / acc as f64 } else { loss };
        let scaled = match &self.run.scaler {
            Some(s) => s.scale(&scaled),
            None => scaled,
        };
        scaled.f_backward().map_err(|e| {
            Error::Msg(format!(
                "backward of training_step's loss (epoch {epoch}, batch {idx}): {e}"
            ))
        })?;
        self.run.batches_consumed = idx + 1;
        self.run.total_batches += 1;
        self.run.is_last_batch = idx + 1 == n;
        let stepped = (idx + 1).is_multiple_of(acc) || idx + 1 == n;
        if stepped {
            let o = self
                .optim
                .as_mut()
                .ok_or_else(|| Error::Msg("fit: no optimizer configured".into()))?;
            let step_err = |e: crate::optim::OptimError| {
                Error::Msg(format!("optimizer step (epoch {epoch}, batch {idx}): {e}"))
            };
            if let Some(v) = self.cfg.gradient_clip_val {
                // Gradients are unscaled before clipping, as Lightning does.
                if let Some(s) = &mut self.run.scaler {
                    let _found_inf = s.unscale_(o.optimizer.as_ref()).map_err(step_err)?;
                }
                clip_gradients(&o.optimizer.params(), v, self.cfg.gradient_clip_algorithm)?;
            }
            match &mut self.run.scaler {
                // A step with inf/NaN gradients is skipped; the step still counts (Lightning).
                Some(s) => {
                    s.step(o.optimizer.as_mut()).map_err(step_err)?;
                    s.update().map_err(step_err)?;
                }
                None => o.optimizer.step().map_err(step_err)?,
            }
            o.optimizer.zero_grad();
            self.run.global_step += 1;
            let gs = self.run.global_step;
            for s in o
                .schedulers
                .iter_mut()
                .filter(|s| s.interval == Interval::Step)
            {
                if gs % s.frequency as i64 == 0 {
                    s.scheduler.step(o.optimizer.as_mut());
                }
            }
        }
        self.run
            .metrics
            .record_step(&ctx.logged, Stage::Train, batch.size());
        if stepped && self.run.global_step % self.cfg.log_every_n_steps as i64 == 0 {
            if let Some(l) = &mut self.logger {
                l.log_row(&self.run.metrics.step_row, epoch, self.run.global_step - 1);
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
            .find_map(|c| checkpoint_dir(c.as_ref()))
            .unwrap_or_else(|| self.cfg.default_root_dir.join("checkpoints"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            context: format!("creating checkpoint directory {}", dir.display()),
            source: e,
        })?;
        let path = dir.join("last.ckpt");
        if self.cb_states.len() != self.callbacks.len() {
            self.cb_states = self
                .callbacks
                .iter()
                .map(|c| (c.state_key(), c.state_dict()))
                .collect();
        }
        let ckpt = restore::dump(
            model,
            self.optim.as_ref(),
            &self.cb_states,
            &self.run,
            false,
        );
        self.saver.save(&path, ckpt)?;
        self.saver.wait()?;
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

    /// Loads the weights of `ckpt_path` (if given) for an evaluation loop.
    fn eval_setup<M: LightningModule>(
        &mut self,
        model: &mut M,
        ckpt_path: Option<CkptPath>,
    ) -> Result<()> {
        self.run.fitting = false;
        if self.cfg.logger && self.logger.is_none() {
            self.logger = Some(CsvLogger::new_version(&self.cfg.default_root_dir));
        }
        self.hooks(&*model, |cb, t| cb.setup(t))?;
        if let Some(p) = ckpt_path {
            if let Some(path) = self.resolve_ckpt(&p)? {
                let ckpt = checkpoint::load(&path)
                    .map_err(|e| Error::Msg(format!("loading checkpoint: {e}")))?;
                model.on_load_checkpoint(&ckpt)?;
                restore::load_model_state(model, &ckpt, &path)?;
            }
        }
        model.move_to(self.cfg.device);
        Ok(())
    }

    fn eval_loop<M: LightningModule>(
        &mut self,
        model: &mut M,
        loader: &DataLoader,
        stage: Stage,
        ckpt_path: Option<CkptPath>,
    ) -> Result<IndexMap<String, f64>> {
        self.eval_setup(model, ckpt_path)?;
        let limit = if stage == Stage::Test {
            self.cfg.limit_test_batches
        } else {
            self.cfg.limit_val_batches
        };
        self.eval_batches(model, loader, stage, limit.apply(loader.len()))?;
        let row = self.run.metrics.reduce_epoch(stage);
        if let Some(l) = &mut self.logger {
            l.log_row(&row, self.run.epoch, self.run.global_step);
            l.save()?;
        }
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
        self.eval_loop(model, val, Stage::Validate, ckpt_path)
    }

    /// Runs the test loop once and returns the logged epoch metrics.
    pub fn test<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<IndexMap<String, f64>> {
        let test = need(data.test_loader(), "test: test")?;
        self.eval_loop(model, test, Stage::Test, ckpt_path)
    }

    /// Runs `predict_step` over the predict loader and returns each batch's output.
    pub fn predict<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<Vec<Tensor>> {
        let loader = need(data.predict_loader(), "predict: predict")?;
        self.eval_setup(model, ckpt_path)?;
        let n = self.cfg.limit_predict_batches.apply(loader.len());
        let (device, epoch, step) = (self.cfg.device, self.run.epoch, self.run.global_step);
        tch::no_grad(|| {
            loader
                .epoch_iter(0, LoaderState::default())
                .take(n)
                .map(|(idx, batch)| {
                    let mut ctx = StepContext::new(Stage::Predict, epoch, step);
                    model.predict_step(&batch.to_device(device), idx, &mut ctx)
                })
                .collect()
        })
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix_seed(nanos, &[u64::from(std::process::id())])
}
