//! Callbacks: hooks the trainer calls, with state saved in the checkpoint under
//! [`Callback::state_key`] (Lightning's `callbacks` dict).
//!
//! API contract between the trainer and callbacks such as `ModelCheckpoint`: the trainer
//! implements [`TrainerContext`]; callbacks see the run only through it, so they can be tested
//! with a fake context. Both sides may add methods with default bodies.

use crate::value::Value;
use indexmap::IndexMap;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a callback can see of, and ask of, the running trainer.
pub trait TrainerContext {
    /// The current epoch (0-based).
    fn current_epoch(&self) -> i64;
    /// Optimizer steps taken so far.
    fn global_step(&self) -> i64;
    /// Metrics logged so far in this epoch/step (name -> value), as Lightning's `callback_metrics`.
    fn callback_metrics(&self) -> &IndexMap<String, f64>;
    /// Saves a checkpoint of the whole run (or the weights only) to `path`.
    fn save_checkpoint(&mut self, path: &Path, weights_only: bool) -> crate::Result<()>;
    /// The log directory of this run (`<root>/lightning_logs/version_N`), if a logger is on.
    fn log_dir(&self) -> Option<PathBuf>;
    /// The trainer's `default_root_dir`.
    fn default_root_dir(&self) -> PathBuf;
    /// Whether this process is rank 0 (the only one that writes or deletes files).
    fn is_global_zero(&self) -> bool {
        true
    }
    /// The checkpoint this run resumed from, never to be deleted.
    fn resumed_from(&self) -> Option<PathBuf> {
        None
    }
    /// Wall time spent training so far (for `train_time_interval`).
    fn train_time(&self) -> Duration;
    /// Whether the sanity-check validation is running (callbacks save nothing then).
    fn sanity_checking(&self) -> bool {
        false
    }
    /// Whether this batch is the last of the epoch.
    fn is_last_batch(&self) -> bool {
        false
    }
    /// Saves a checkpoint from inside `caller`'s hook, with `caller`'s current state in the
    /// file's `callbacks` dict (a callback is mutably borrowed while its hook runs, so the
    /// trainer cannot read its state itself; plain `save_checkpoint` writes the state the
    /// caller had before the hook).
    fn save_checkpoint_from(
        &mut self,
        path: &Path,
        weights_only: bool,
        caller: &dyn Callback,
    ) -> crate::Result<()> {
        let _ = caller;
        self.save_checkpoint(path, weights_only)
    }
    /// Waits until every checkpoint save in flight (async checkpointing) is durable, and
    /// returns its error if one failed. Call before deleting a file a newer save replaces.
    fn wait_for_pending_saves(&mut self) -> crate::Result<()> {
        Ok(())
    }
}

/// A trainer hook. Every method has a default that does nothing.
pub trait Callback: Send + Any {
    /// The key of this callback's state in the checkpoint's `callbacks` dict.
    fn state_key(&self) -> String;
    /// Called once before training starts (after a resume has restored state).
    fn on_fit_start(&mut self, _t: &mut dyn TrainerContext) -> crate::Result<()> {
        Ok(())
    }
    /// Called after every training batch's optimizer step.
    fn on_train_batch_end(&mut self, _t: &mut dyn TrainerContext) -> crate::Result<()> {
        Ok(())
    }
    /// Called at the end of every training epoch (before its validation? no: after the
    /// epoch's last batch and its validation, as Lightning 2.x's `on_train_epoch_end`).
    fn on_train_epoch_end(&mut self, _t: &mut dyn TrainerContext) -> crate::Result<()> {
        Ok(())
    }
    /// Called after every validation run.
    fn on_validation_end(&mut self, _t: &mut dyn TrainerContext) -> crate::Result<()> {
        Ok(())
    }
    /// Called when training raised an error (for `save_on_exception`).
    fn on_exception(&mut self, _t: &mut dyn TrainerContext) -> crate::Result<()> {
        Ok(())
    }
    /// Called once when `fit` ends normally.
    fn on_fit_end(&mut self, _t: &mut dyn TrainerContext) -> crate::Result<()> {
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
