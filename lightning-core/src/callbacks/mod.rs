//! Callbacks: hooks the trainer calls, with state saved in the checkpoint under
//! [`Callback::state_key`] (Lightning's `callbacks` dict).
//!
//! The contract between the trainer and callbacks: every hook gets a [`TrainerContext`], which
//! is a read-only view of the run ([`RunInfo`]) plus a handle on the trainer
//! ([`TrainerHandle`]: save a checkpoint, act once saves are durable, ask to stop). Callbacks
//! see the run only through it, so they can be tested with a fake handle and a hand-made
//! [`RunInfo`].

mod early_stopping;
pub(crate) mod error;
mod lr_monitor;
mod model_checkpoint;
mod swa;
mod timer;
mod weight_averaging;

pub use early_stopping::{EarlyStopping, EarlyStoppingBuilder, StoppingReason};
pub use error::CallbackError;
pub use lr_monitor::{
    LearningRateMonitor, Optimization, OptimizerView, ParamGroupView, SchedulerView,
};
pub(crate) use model_checkpoint::find_last_checkpoint_in;
pub use model_checkpoint::{
    find_last_checkpoint, Mode, ModelCheckpoint, ModelCheckpointBuilder, SaveLast,
};
pub use swa::{StochasticWeightAveraging, SwaStart};
pub use timer::{Timer, TimerInterval};
pub use weight_averaging::{Averaging, WeightAveraging};

pub use crate::pyfmt::{MetricValue, Metrics};

use crate::lightning_module::OptimizerConfig;
use crate::storage::CheckpointIO;
use crate::traverse::TensorKind;
use crate::value::Value;
use indexmap::IndexMap;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a callback can see of the running trainer, as of the hook being called.
#[derive(Clone, Copy, Debug)]
pub struct RunInfo<'a> {
    /// The current epoch (0-based).
    pub current_epoch: i64,
    /// Optimizer steps taken so far.
    pub global_step: i64,
    /// Metrics logged so far in this epoch/step (name -> value), as Lightning's
    /// `callback_metrics`.
    pub callback_metrics: &'a IndexMap<String, f64>,
    /// The log directory of this run (`<root>/lightning_logs/version_N`), if a logger is on.
    pub log_dir: Option<&'a Path>,
    /// The trainer's `default_root_dir`.
    pub default_root_dir: &'a Path,
    /// Whether this process is rank 0 (the only one that writes or deletes files).
    pub is_global_zero: bool,
    /// The checkpoint this run resumed from, never to be deleted.
    pub resumed_from: Option<&'a Path>,
    /// Wall time spent training so far (for `train_time_interval`).
    pub train_time: Duration,
    /// Whether the sanity-check validation is running (callbacks save nothing then).
    pub sanity_checking: bool,
    /// Whether this batch is the last of the epoch.
    pub is_last_batch: bool,
    /// Whether the trainer is running `fit` (callbacks save nothing in validate/test/predict).
    pub is_fitting: bool,
    /// Validation batches per validation run (Lightning's `num_val_batches`); 0 means no
    /// validation, so checkpoints are taken at train-epoch end.
    pub num_val_batches: usize,
    /// Lightning's `check_val_every_n_epoch` (`None`: validation is scheduled by steps only).
    pub check_val_every_n_epoch: Option<i64>,
    /// Whether validation runs inside the epoch rather than once at its end
    /// (Lightning's `val_check_interval != 1.0`).
    pub val_check_within_epoch: bool,
    /// Whether a validation run has completed in this `fit` (Lightning's `val_loop._has_run`):
    /// a monitored key missing after that is an error, before it only a warning.
    pub validation_ran: bool,
    /// Where checkpoint files are written, listed and removed (the trainer's
    /// [`CheckpointIO`]).
    pub checkpoint_io: &'a dyn CheckpointIO,
    /// Whether metrics logged now reach the logger (Lightning's `should_update_logs`: the
    /// step about to run, `global_step + 1`, is a multiple of `log_every_n_steps`, or the
    /// trainer is stopping).
    pub should_update_logs: bool,
    /// `fast_dev_run` is on: checkpointing and early stopping stand down (Lightning's).
    pub fast_dev_run: bool,
    /// The epoch limit of this `fit` (Lightning's `trainer.max_epochs`, including epochs a
    /// callback added with [`TrainerHandle::extend_max_epochs`]; -1: unlimited).
    pub max_epochs: i64,
    /// Whether the strategy shards the module (`strategy="fsdp"`): each rank's parameters
    /// are its shards.
    pub sharded: bool,
}

impl<'a> RunInfo<'a> {
    /// A run at epoch 0, step 0, fitting on rank 0 with the given metrics and root directory
    /// and everything else off (for tests and fake trainers; set the fields you need).
    pub fn new(callback_metrics: &'a IndexMap<String, f64>, default_root_dir: &'a Path) -> Self {
        RunInfo {
            current_epoch: 0,
            global_step: 0,
            callback_metrics,
            log_dir: None,
            default_root_dir,
            is_global_zero: true,
            resumed_from: None,
            train_time: Duration::ZERO,
            sanity_checking: false,
            is_last_batch: false,
            is_fitting: true,
            fast_dev_run: false,
            num_val_batches: 0,
            check_val_every_n_epoch: Some(1),
            val_check_within_epoch: false,
            validation_ran: true,
            should_update_logs: true,
            checkpoint_io: &crate::storage::DefaultCheckpointIO,
            max_epochs: 1000,
            sharded: false,
        }
    }
}

/// Something to do once a checkpoint file is durable on disk (never when its save failed, so
/// an older file is only replaced by a complete newer one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterSave {
    /// Delete this older checkpoint (a file, a link, or a directory); a missing one is fine
    /// and a failure is only logged.
    Remove(PathBuf),
    /// Point `link` at `target` with a relative symlink, or, where links cannot be made, with
    /// a durable atomic copy; `link` never disappears in between.
    Link {
        /// The checkpoint to point at.
        target: PathBuf,
        /// The link to (re)create, e.g. `last.ckpt`.
        link: PathBuf,
    },
}

impl AfterSave {
    /// Carries the action out now through `io` (a failed removal is only logged).
    pub fn apply(&self, io: &dyn CheckpointIO) -> Result<(), CallbackError> {
        match self {
            AfterSave::Remove(path) => {
                if let Err(e) = io.remove_checkpoint(path) {
                    tracing::warn!("could not remove old checkpoint {}: {e}", path.display());
                }
                Ok(())
            }
            AfterSave::Link { target, link } => Ok(io.link(target, link)?),
        }
    }
}

/// What a callback can ask of the trainer: the trainer implements it, tests fake it.
pub trait TrainerHandle {
    /// Writes a checkpoint of the whole run (or the weights only) to `path`, creating its
    /// folder; the file's `callbacks` dict holds `caller`'s state as of now (and every other
    /// callback's). With async checkpointing it returns once a snapshot is taken.
    fn save_checkpoint(
        &mut self,
        path: &Path,
        weights_only: bool,
        caller: &dyn Callback,
    ) -> crate::Result<()>;
    /// Runs `action` once every checkpoint save requested so far is durable: at once when
    /// none is in flight, else when the background write finishes (dropped if it fails).
    fn when_durable(&mut self, action: AfterSave) -> crate::Result<()>;
    /// Blocks until every checkpoint save requested so far is durable, and returns the
    /// error of one that failed (for a callback that reads or ships the file it saved). A
    /// handle whose saves are synchronous has nothing to wait for.
    fn wait_for_saves(&mut self) -> crate::Result<()> {
        Ok(())
    }
    /// Asks the trainer to stop at the next opportunity (Lightning's `trainer.should_stop = True`).
    fn request_stop(&mut self);
    /// The optimizers and LR schedulers of the running `fit` (empty outside `fit` and in
    /// fake handles); weight decays are read only when `weight_decay` is set.
    fn optimization(&self, weight_decay: bool) -> Optimization {
        let _ = weight_decay;
        Optimization::default()
    }
    /// The module's parameters and buffers by name (handles sharing its storage: writing
    /// their values under `no_grad` changes the module), for callbacks that keep a copy of
    /// the weights (weight averaging). Empty where the trainer lends none.
    fn module_tensors(&self) -> Vec<(String, tch::Tensor)> {
        Vec::new()
    }
    /// The module's persistent tensors in `state_dict` order (PyTorch's), each with its kind
    /// (parameter or buffer), sharing storage with the module. Empty where the trainer lends
    /// none.
    fn module_state(&self) -> Vec<(String, tch::Tensor, TensorKind)> {
        Vec::new()
    }
    /// The running `fit`'s optimizers and their LR schedulers, to change (Lightning's
    /// `trainer.optimizers` / `trainer.lr_scheduler_configs`: stochastic weight averaging
    /// swaps in its scheduler). `None` outside `fit` and in fake handles.
    fn optimizer_config(&mut self) -> Option<&mut OptimizerConfig> {
        None
    }
    /// Adds `epochs` to this `fit`'s epoch limit (when it has one) after the hook returns
    /// (Lightning's `trainer.fit_loop.max_epochs += epochs`).
    fn extend_max_epochs(&mut self, epochs: i64) {
        let _ = epochs;
    }
    /// The epoch starting now runs its training steps forward only: no backward, no
    /// optimizer step (Lightning's `fit_loop._skip_backward`, with gradient accumulation over
    /// the whole epoch; stochastic weight averaging's epoch that re-estimates batch-norm
    /// statistics). As in Lightning the epoch's last batch still counts an optimizer step
    /// that changes nothing (no parameter has a gradient; a grad scaler is not involved):
    /// `global_step` advances by one, and schedulers, validation and checkpoints follow as
    /// usual.
    fn skip_optimization_this_epoch(&mut self) {}
    /// Sends `metrics` to the logger at `step` as Lightning's `logger.log_metrics(metrics,
    /// step)` (a row without an `epoch` column) and adds them to `callback_metrics`. Fake
    /// handles drop them.
    fn log_metrics(&mut self, metrics: IndexMap<String, f64>, step: i64) {
        let _ = (metrics, step);
    }
}

/// Shallow handles of named tensors kept with some tag (the averaging callbacks' copies).
fn named_handles<T>(tensors: &[(String, tch::Tensor, T)]) -> Vec<(String, tch::Tensor)> {
    tensors
        .iter()
        .map(|(n, t, _)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// What every hook receives: the run as of now, and a handle on the trainer.
pub struct TrainerContext<'a> {
    /// What the callback can see of the run.
    pub run: RunInfo<'a>,
    handle: &'a mut dyn TrainerHandle,
}

impl<'a> TrainerContext<'a> {
    /// A context over `run` and `handle` (the trainer builds one per hook; tests build theirs).
    pub fn new(run: RunInfo<'a>, handle: &'a mut dyn TrainerHandle) -> Self {
        TrainerContext { run, handle }
    }

    /// Saves a checkpoint with `caller`'s current state in it (see
    /// [`TrainerHandle::save_checkpoint`]).
    pub fn save_checkpoint(
        &mut self,
        path: &Path,
        weights_only: bool,
        caller: &dyn Callback,
    ) -> crate::Result<()> {
        self.handle.save_checkpoint(path, weights_only, caller)
    }

    /// Runs `action` once every save requested so far is durable (see
    /// [`TrainerHandle::when_durable`]).
    pub fn when_durable(&mut self, action: AfterSave) -> crate::Result<()> {
        self.handle.when_durable(action)
    }

    /// Blocks until every save requested so far is durable (see
    /// [`TrainerHandle::wait_for_saves`]).
    pub fn wait_for_saves(&mut self) -> crate::Result<()> {
        self.handle.wait_for_saves()
    }

    /// Asks the trainer to stop at the next opportunity.
    pub fn request_stop(&mut self) {
        self.handle.request_stop();
    }

    /// The optimizers and LR schedulers of the running `fit` (see
    /// [`TrainerHandle::optimization`]).
    pub fn optimization(&self, weight_decay: bool) -> Optimization {
        self.handle.optimization(weight_decay)
    }

    /// Logs `metrics` at `step` (see [`TrainerHandle::log_metrics`]).
    pub fn log_metrics(&mut self, metrics: IndexMap<String, f64>, step: i64) {
        self.handle.log_metrics(metrics, step);
    }

    /// The module's parameters and buffers by name (see [`TrainerHandle::module_tensors`]).
    pub fn module_tensors(&self) -> Vec<(String, tch::Tensor)> {
        self.handle.module_tensors()
    }

    /// The module's persistent tensors in `state_dict` order, with their kinds (see
    /// [`TrainerHandle::module_state`]).
    pub fn module_state(&self) -> Vec<(String, tch::Tensor, TensorKind)> {
        self.handle.module_state()
    }

    /// The running `fit`'s optimizers and schedulers, to change (see
    /// [`TrainerHandle::optimizer_config`]).
    pub fn optimizer_config(&mut self) -> Option<&mut OptimizerConfig> {
        self.handle.optimizer_config()
    }

    /// Adds epochs to the epoch limit (see [`TrainerHandle::extend_max_epochs`]).
    pub fn extend_max_epochs(&mut self, epochs: i64) {
        self.handle.extend_max_epochs(epochs)
    }

    /// Runs the epoch starting now without optimization (see
    /// [`TrainerHandle::skip_optimization_this_epoch`]).
    pub fn skip_optimization_this_epoch(&mut self) {
        self.handle.skip_optimization_this_epoch()
    }
}

/// A trainer hook. Every method has a default that does nothing.
pub trait Callback: Send + Any {
    /// The key of this callback's state in the checkpoint's `callbacks` dict.
    fn state_key(&self) -> String;
    /// Called at the start of `fit`/`validate`/`test`, before a checkpoint's state is restored
    /// into the callbacks (Lightning's `setup`): resolve directories here.
    fn setup(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called once before training starts (after a resume has restored state).
    fn on_fit_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called at the start of every training epoch (also of an epoch a run resumes into).
    fn on_train_epoch_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called before every training batch's `training_step`.
    fn on_train_batch_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called after every training batch's optimizer step.
    fn on_train_batch_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called at the end of every training epoch, after the epoch's last batch and its
    /// validation (Lightning 2.x's `on_train_epoch_end`).
    fn on_train_epoch_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Before a validation run's first batch (also the sanity check's).
    fn on_validation_epoch_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// After a validation run's last batch, before its epoch metrics are reduced.
    fn on_validation_epoch_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// When training starts: after `on_fit_start` and the sanity check.
    fn on_train_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// When training ends (before `on_fit_end`; not after a preemption).
    fn on_train_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called after every validation run (the epoch metrics are in `callback_metrics`).
    fn on_validation_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called when training raised an error (for `save_on_exception`).
    fn on_exception(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// Called once when `fit` ends normally.
    fn on_fit_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        Ok(())
    }
    /// State saved in the checkpoint.
    fn state_dict(&self) -> Value {
        Value::dict()
    }
    /// Restores [`Callback::state_dict`]'s output on resume.
    fn load_state_dict(&mut self, _state: &Value) -> crate::Result<()> {
        Ok(())
    }
    /// Lightning's `Callback.on_save_checkpoint`: called with the whole checkpoint dict just
    /// before it is written (after every callback's [`Callback::state_dict`], before the
    /// module's `on_save_checkpoint`); it may add or change top-level keys. Not called for
    /// weights-only saves, as Lightning.
    fn on_save_checkpoint(&self, _checkpoint: &mut Value) {}
    /// Lightning's `Callback.on_load_checkpoint`: called with the whole checkpoint dict when a
    /// run resumes (or `validate`/`test`/`predict` load a `ckpt_path`), before any callback's
    /// [`Callback::load_state_dict`].
    fn on_load_checkpoint(&mut self, _checkpoint: &Value) -> crate::Result<()> {
        Ok(())
    }

    /// Whether the trainer, resuming, should drop the configured LR schedulers instead of
    /// restoring their saved states, because this callback installs (and restores) its own
    /// (asked after [`Callback::load_state_dict`]; Lightning's stochastic weight averaging
    /// clears `trainer.lr_scheduler_configs` in `on_fit_start` for this).
    fn replaces_lr_schedulers(&self) -> bool {
        false
    }
    /// Where this callback writes checkpoints (set for `ModelCheckpoint` once its directory
    /// is known); the trainer searches these for `ckpt_path = Last` and writes its
    /// preemption checkpoint to the first.
    fn checkpoint_dirpath(&self) -> Option<PathBuf> {
        None
    }
    /// The best checkpoint so far (for `ckpt_path = Best`); `None` for non-checkpointing
    /// callbacks or before any save.
    fn best_model_path(&self) -> Option<PathBuf> {
        None
    }
    /// Whether this callback is a checkpointing callback (then the trainer adds no default
    /// `ModelCheckpoint`).
    fn is_checkpoint_callback(&self) -> bool {
        false
    }
    /// For downcasting (`trainer.callback::<ModelCheckpoint>()`).
    fn as_any(&self) -> &dyn Any;
    /// For downcasting, mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
