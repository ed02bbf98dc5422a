//! `ModelCheckpoint`: Lightning 2.6's checkpoint callback (periodic saves, top-k by a monitored
//! metric, `last.ckpt`), with the same file names, state key and saved state, so runs resume
//! across Python Lightning and lightning-rs.
//!
//! - this file: the callback, its options, and when it saves (Lightning's triggers per hook);
//! - `builder`: the options and their checks;
//! - `topk`: which file a save writes and which older file it replaces;
//! - `state`: the state saved in checkpoints and restored on resume;
//! - `files`: paths, `last` links, removals, and finding the newest `last*.ckpt`.
//!
//! Safety beyond Lightning: bookkeeping rolls back when a save fails; a replaced file is
//! deleted only once the file replacing it is durable (the trainer runs the
//! [`AfterSave`] actions a save hands it); and nothing outside `dirpath`, the file the run
//! resumed from, or a file still tracked is ever deleted.

mod builder;
mod files;
mod state;
mod topk;

pub use builder::ModelCheckpointBuilder;
pub use files::find_last_checkpoint;
pub(crate) use files::find_last_checkpoint_in;

use super::{AfterSave, Callback, CallbackError, TrainerContext};
use super::{MetricValue, Metrics};
use crate::pyfmt;
use crate::value::Value;
use files::lexical_absolute;
use indexmap::IndexMap;
use std::any::Any;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use topk::Book;

/// Whether a lower (`Min`) or higher (`Max`) monitored value is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Lower is better (losses).
    #[default]
    Min,
    /// Higher is better (accuracies).
    Max,
}

impl Mode {
    /// `"min"` or `"max"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Min => "min",
            Mode::Max => "max",
        }
    }

    /// The worst possible score (`+inf` for min, `-inf` for max): NaN scores rank as this.
    pub fn worst(self) -> f64 {
        match self {
            Mode::Min => f64::INFINITY,
            Mode::Max => f64::NEG_INFINITY,
        }
    }

    /// Whether `a` is strictly better than `b` (`torch.lt` / `torch.gt`; false with NaN).
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Mode::Min => a < b,
            Mode::Max => a > b,
        }
    }
}

impl FromStr for Mode {
    type Err = CallbackError;

    /// Parses `"min"` / `"max"`; anything else is Lightning's error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "min" => Ok(Mode::Min),
            "max" => Ok(Mode::Max),
            _ => Err(CallbackError::Config(format!(
                "`mode` can be min, max but got {s}"
            ))),
        }
    }
}

/// Lightning's `save_last`: no `last.ckpt`, a full copy, or a symlink to the newest file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SaveLast {
    /// No `last.ckpt` (`save_last=None/False`).
    #[default]
    False,
    /// `last.ckpt` is written as a full checkpoint (`save_last=True`).
    True,
    /// `last.ckpt` is a relative symlink to the newest checkpoint, a copy where links fail
    /// (`save_last="link"`).
    Link,
}

impl SaveLast {
    fn enabled(self) -> bool {
        self != SaveLast::False
    }
}

impl From<bool> for SaveLast {
    fn from(b: bool) -> Self {
        if b {
            SaveLast::True
        } else {
            SaveLast::False
        }
    }
}

/// Saves checkpoints periodically and keeps the best `k` by a monitored metric, as Lightning's
/// `ModelCheckpoint`.
///
/// ```
/// use lightning_core::callbacks::{Mode, ModelCheckpoint, SaveLast};
/// let ckpt = ModelCheckpoint::builder()
///     .dirpath("runs/ckpts")
///     .filename("{epoch:02d}-{val_loss:.2f}")
///     .monitor("val_loss")
///     .mode(Mode::Min)
///     .save_top_k(3)
///     .save_last(SaveLast::True)
///     .build()?;
/// assert_eq!(
///     lightning_core::callbacks::Callback::state_key(&ckpt),
///     "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, \
///      'every_n_epochs': 1, 'train_time_interval': None}"
/// );
/// # Ok::<(), lightning_core::callbacks::CallbackError>(())
/// ```
#[derive(Debug)]
pub struct ModelCheckpoint {
    dirpath: Option<PathBuf>,
    filename: Option<String>,
    monitor: Option<String>,
    verbose: bool,
    save_last: SaveLast,
    save_top_k: i64,
    save_on_exception: bool,
    save_weights_only: bool,
    mode: Mode,
    auto_insert_metric_name: bool,
    every_n_train_steps: i64,
    every_n_epochs: i64,
    train_time_interval: Option<Duration>,
    save_on_train_epoch_end: Option<bool>,
    enable_version_counter: bool,
    last_name: String,
    /// Lightning 1.x's `prefix` of every file name.
    prefix: Option<String>,
    book: Book,
    last_global_step_saved: i64,
    last_time_checked: Option<Duration>,
    last_checkpoint_saved: Option<PathBuf>,
    defer_save_until_validation: bool,
    /// State loaded before `dirpath` was known; applied once it is.
    pending_state: Option<Value>,
    /// Files the current hook's saves replaced: handed to the trainer at the end of the hook
    /// as [`AfterSave::Remove`], to go once those saves are durable.
    replaced: Vec<PathBuf>,
    warned: HashSet<String>,
}

impl ModelCheckpoint {
    /// Joins the parts of a file name (`epoch=1-step=10`).
    pub const CHECKPOINT_JOIN_CHAR: &'static str = "-";
    /// Between a metric's name and its value.
    pub const CHECKPOINT_EQUALS_CHAR: &'static str = "=";
    /// The default last checkpoint's name.
    pub const CHECKPOINT_NAME_LAST: &'static str = "last";
    /// The files' extension.
    pub const FILE_EXTENSION: &'static str = ".ckpt";
    /// The first `-vN` suffix on a name clash.
    pub const STARTING_VERSION: u32 = 1;

    /// A builder with Lightning's defaults.
    pub fn builder() -> ModelCheckpointBuilder {
        ModelCheckpointBuilder::default()
    }

    /// The checkpoint directory (resolved at `setup` when not given).
    pub fn dirpath(&self) -> Option<&Path> {
        self.dirpath.as_deref()
    }
    /// The monitored metric.
    pub fn monitor(&self) -> Option<&str> {
        self.monitor.as_deref()
    }
    /// Min or max.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// `save_top_k`.
    pub fn save_top_k(&self) -> i64 {
        self.save_top_k
    }
    /// `save_last`.
    pub fn save_last(&self) -> SaveLast {
        self.save_last
    }
    /// `save_weights_only`.
    pub fn save_weights_only(&self) -> bool {
        self.save_weights_only
    }
    /// The effective `every_n_epochs` (1 when no trigger was given).
    pub fn every_n_epochs(&self) -> i64 {
        self.every_n_epochs
    }
    /// The effective `every_n_train_steps` (0: off).
    pub fn every_n_train_steps(&self) -> i64 {
        self.every_n_train_steps
    }
    /// `train_time_interval`.
    pub fn train_time_interval(&self) -> Option<Duration> {
        self.train_time_interval
    }
    /// The best checkpoint so far (with no monitor: the latest top-k save).
    pub fn best_model_path(&self) -> Option<&Path> {
        self.book.best_model_path.as_deref()
    }
    /// The best monitored score so far.
    pub fn best_model_score(&self) -> Option<f64> {
        self.book.best_model_score
    }
    /// The kept checkpoints and their scores, in the order they were saved.
    pub fn best_k_models(&self) -> &IndexMap<PathBuf, f64> {
        &self.book.best_k_models
    }
    /// The worst of the kept top-k checkpoints (the next to go), once k are kept.
    pub fn kth_best_model_path(&self) -> Option<&Path> {
        self.book.kth_best_model_path.as_deref()
    }
    /// The score of [`Self::kth_best_model_path`] (the worst value before k are kept).
    pub fn kth_value(&self) -> f64 {
        self.book.kth_value
    }
    /// The last checkpoint (`last.ckpt`) written, if any.
    pub fn last_model_path(&self) -> Option<&Path> {
        self.book.last_model_path.as_deref()
    }
    /// The monitored score of the latest top-k save (NaN stored as the worst value).
    pub fn current_score(&self) -> Option<f64> {
        self.book.current_score
    }

    /// Renders a checkpoint path as Lightning's `format_checkpoint_name`: the template
    /// (`filename`, else the configured one, else `{epoch}-{step}`) filled from `metrics`,
    /// with `prefix-`, `-v{ver}` and `.ckpt`, under `dirpath` when it is known.
    pub fn format_checkpoint_name(
        &self,
        metrics: &Metrics,
        filename: Option<&str>,
        ver: Option<u32>,
        prefix: Option<&str>,
    ) -> Result<PathBuf, CallbackError> {
        let template = filename.or(self.filename.as_deref());
        let mut name = pyfmt::format_checkpoint_template(
            template,
            metrics,
            prefix,
            self.auto_insert_metric_name,
            Self::CHECKPOINT_JOIN_CHAR,
            Self::CHECKPOINT_EQUALS_CHAR,
        )
        .map_err(|msg| CallbackError::Template {
            template: template.unwrap_or("{epoch}-{step}").to_owned(),
            msg,
        })?;
        if let Some(v) = ver {
            name = format!("{name}{}v{v}", Self::CHECKPOINT_JOIN_CHAR);
        }
        let file = format!("{name}{}", Self::FILE_EXTENSION);
        Ok(match &self.dirpath {
            Some(d) => d.join(file),
            None => PathBuf::from(file),
        })
    }

    /// Lightning's `__resolve_ckpt_dir`: the given dirpath, else `<log_dir>/checkpoints`, else
    /// `<default_root_dir>/checkpoints`.
    fn resolve_dir(&self, t: &TrainerContext<'_>) -> PathBuf {
        if let Some(d) = &self.dirpath {
            return d.clone();
        }
        match t.run.log_dir {
            Some(log) => log.join("checkpoints"),
            None => t.run.default_root_dir.join("checkpoints"),
        }
    }

    /// Resolves `dirpath` and applies a state loaded before it was known.
    fn ensure_setup(&mut self, t: &TrainerContext<'_>) -> crate::Result<()> {
        if self.dirpath.is_none() {
            self.dirpath = Some(self.resolve_dir(t));
        }
        if let Some(state) = self.pending_state.take() {
            self.apply_state(&state)?;
        }
        if self.last_time_checked.is_none() {
            self.last_time_checked = Some(t.run.train_time);
        }
        Ok(())
    }

    fn warn_once(&mut self, msg: String) {
        if self.warned.insert(msg.clone()) {
            tracing::warn!("{msg}");
        }
    }

    /// `trainer.callback_metrics` plus `epoch` and `step` as ints.
    fn monitor_candidates(t: &TrainerContext<'_>) -> Metrics {
        let mut m: Metrics = t
            .run
            .callback_metrics
            .iter()
            .map(|(k, v)| (k.clone(), MetricValue::Float(*v)))
            .collect();
        let epoch = match m.get("epoch") {
            Some(v) => MetricValue::Int(v.as_f64() as i64),
            None => MetricValue::Int(t.run.current_epoch),
        };
        m.insert("epoch".into(), epoch);
        let step = match m.get("step") {
            Some(v) => MetricValue::Int(v.as_f64() as i64),
            None => MetricValue::Int(t.run.global_step),
        };
        m.insert("step".into(), step);
        m
    }

    fn should_skip_saving(&self, t: &TrainerContext<'_>) -> bool {
        !t.run.is_fitting
            || t.run.sanity_checking
            || t.run.fast_dev_run
            || self.last_global_step_saved == t.run.global_step
    }

    /// Lightning's `_should_save_on_train_epoch_end`.
    fn should_save_on_train_epoch_end(&self, t: &TrainerContext<'_>) -> bool {
        if let Some(v) = self.save_on_train_epoch_end {
            return v;
        }
        if t.run.check_val_every_n_epoch != Some(1) {
            return false;
        }
        if t.run.num_val_batches == 0 {
            return true;
        }
        !t.run.val_check_within_epoch
    }

    fn epoch_due(&self, t: &TrainerContext<'_>) -> bool {
        self.every_n_epochs >= 1 && (t.run.current_epoch + 1) % self.every_n_epochs == 0
    }

    /// The save at train-epoch or validation end: top-k when the epoch is due; `last` only
    /// when that saved a file (Lightning 2.6), or to re-point a `link`.
    fn save_due_at_epoch_end(
        &mut self,
        t: &mut TrainerContext<'_>,
        cands: &Metrics,
    ) -> crate::Result<()> {
        if self.epoch_due(t) {
            self.save_topk(t, cands)?;
        }
        if self.last_global_step_saved == t.run.global_step
            || (self.save_last == SaveLast::Link && self.last_checkpoint_saved.is_some())
        {
            self.save_last_checkpoint(t, cands)?;
        }
        Ok(())
    }

    fn file_exists(t: &TrainerContext<'_>, path: &Path) -> bool {
        t.run.is_global_zero && t.run.checkpoint_io.exists(path).unwrap_or(false)
    }

    /// Writes a checkpoint through the trainer (which creates its folder and makes it
    /// durable); the file holds this callback's state as updated for this save, as Lightning's.
    fn save_file(&mut self, t: &mut TrainerContext<'_>, path: &Path) -> crate::Result<()> {
        t.save_checkpoint(path, self.save_weights_only, &*self)?;
        self.last_global_step_saved = t.run.global_step;
        self.last_checkpoint_saved = Some(path.to_owned());
        Ok(())
    }

    /// Runs a hook body; when it succeeds, the files its saves replaced go once those saves
    /// are durable (rank 0 only), except a file that is tracked again (best, top-k, last,
    /// newest) or protected ([`Self::should_remove`]). When it fails nothing is deleted.
    fn hook(
        &mut self,
        t: &mut TrainerContext<'_>,
        f: impl FnOnce(&mut Self, &mut TrainerContext<'_>) -> crate::Result<()>,
    ) -> crate::Result<()> {
        self.ensure_setup(t)?;
        self.replaced.clear();
        f(self, t)?;
        if !t.run.is_global_zero {
            self.replaced.clear();
            return Ok(());
        }
        for path in std::mem::take(&mut self.replaced) {
            let tracked = self.book.best_k_models.contains_key(&path)
                || self.book.best_model_path.as_deref() == Some(&path)
                || self.book.last_model_path.as_deref() == Some(&path)
                || self.last_checkpoint_saved.as_deref() == Some(&path);
            if !tracked && self.should_remove(t, &path, Path::new("")) {
                t.when_durable(AfterSave::Remove(path))?;
            }
        }
        Ok(())
    }
}

impl Callback for ModelCheckpoint {
    /// `ModelCheckpoint{'monitor': .., 'mode': .., 'every_n_train_steps': .., 'every_n_epochs':
    /// .., 'train_time_interval': ..}`, exactly as Lightning's `repr` of those kwargs.
    fn state_key(&self) -> String {
        crate::checkpoint::schema::model_checkpoint_state_key(
            self.monitor.as_deref(),
            self.mode.as_str(),
            self.every_n_train_steps,
            self.every_n_epochs,
            self.train_time_interval
                .map(pyfmt::repr_timedelta)
                .as_deref(),
        )
    }

    /// Resolves `dirpath`, removes temporary links a killed run left there, and warns (as
    /// Lightning) when a fit starts in a non-empty directory.
    fn setup(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.ensure_setup(t)?;
        if let (true, Some(dir)) = (t.run.is_global_zero, &self.dirpath) {
            t.run.checkpoint_io.prepare_dir(dir);
        }
        if t.run.is_global_zero
            && t.run.is_fitting
            && self.save_top_k != 0
            && let Some(dir) = &self.dirpath
            && t.run.checkpoint_io.dir_has_files(dir)
        {
            tracing::warn!(
                "Checkpoint directory {} exists and is not empty.",
                dir.display()
            );
        }
        Ok(())
    }

    /// Starts the time trigger's clock. When the run resumed from a file this callback wrote
    /// (a tracked top-k or last file), that file is this step's save: it is not written again
    /// at the same step, so a resumed run leaves the same files as an uninterrupted one.
    fn on_fit_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.ensure_setup(t)?;
        self.last_time_checked = Some(t.run.train_time);
        if let Some(resumed) = t.run.resumed_from {
            let resumed = lexical_absolute(resumed);
            let ours = |p: &Path| lexical_absolute(p) == resumed;
            let b = &self.book;
            if b.best_k_models.keys().any(|p| ours(p))
                || b.best_model_path.as_deref().is_some_and(ours)
                || b.last_model_path.as_deref().is_some_and(ours)
            {
                self.last_global_step_saved = t.run.global_step;
            }
        }
        Ok(())
    }

    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.hook(t, |me, t| {
            let skip_due_to_state = me.should_skip_saving(t);
            let skip_batch =
                me.every_n_train_steps < 1 || t.run.global_step % me.every_n_train_steps != 0;
            let now = t.run.train_time;
            let skip_time = match (me.train_time_interval, me.last_time_checked) {
                (Some(iv), Some(prev)) => now.saturating_sub(prev) < iv,
                _ => true,
            };
            if skip_batch && skip_time {
                return Ok(());
            }
            if !skip_time {
                me.last_time_checked = Some(now);
            }
            let cands = Self::monitor_candidates(t);
            if let Some(monitor) = &me.monitor {
                if !cands.contains_key(monitor) {
                    me.defer_save_until_validation = true;
                    return Ok(());
                }
                if !me.should_save_on_train_epoch_end(t) && t.run.is_last_batch {
                    let will_run_val = t.run.num_val_batches > 0
                        && match t.run.check_val_every_n_epoch {
                            None => true,
                            Some(c) => c > 0 && (t.run.current_epoch + 1) % c == 0,
                        };
                    if will_run_val {
                        me.defer_save_until_validation = true;
                        return Ok(());
                    }
                }
            }
            if skip_due_to_state {
                return Ok(());
            }
            me.save_topk(t, &cands)?;
            me.save_last_checkpoint(t, &cands)
        })
    }

    fn on_train_epoch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if me.should_skip_saving(t) || !me.should_save_on_train_epoch_end(t) {
                return Ok(());
            }
            let cands = Self::monitor_candidates(t);
            me.save_due_at_epoch_end(t, &cands)
        })
    }

    fn on_validation_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if me.should_skip_saving(t) || me.should_save_on_train_epoch_end(t) {
                return Ok(());
            }
            let cands = Self::monitor_candidates(t);
            if me.defer_save_until_validation {
                me.save_topk(t, &cands)?;
                me.save_last_checkpoint(t, &cands)?;
                me.defer_save_until_validation = false;
                return Ok(());
            }
            me.save_due_at_epoch_end(t, &cands)
        })
    }

    fn on_exception(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if !me.save_on_exception
                || t.run.sanity_checking
                || t.run.fast_dev_run
                || me.last_global_step_saved == t.run.global_step
            {
                return Ok(());
            }
            let cands = Self::monitor_candidates(t);
            let path = me.format_checkpoint_name(&cands, None, None, me.prefix.as_deref())?;
            me.save_file(t, &path)?;
            me.save_last_checkpoint(t, &cands)?;
            tracing::info!(
                "training raised an error; saved checkpoint to {}",
                path.display()
            );
            Ok(())
        })
    }

    /// Lightning's `on_train_end`: makes sure `save_last` produced a file.
    fn on_fit_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if me.save_last.enabled() && me.last_checkpoint_saved.is_none() {
                let cands = Self::monitor_candidates(t);
                me.save_last_checkpoint(t, &cands)?;
            }
            Ok(())
        })
    }

    /// Lightning's keys; scores as 0-dim float64 tensors, paths as strings (`""` for none).
    fn state_dict(&self) -> Value {
        self.saved_state()
    }

    /// Restores [`Callback::state_dict`]; applied once `dirpath` is known (at `setup`).
    fn load_state_dict(&mut self, state: &Value) -> crate::Result<()> {
        if self.dirpath.is_some() {
            self.apply_state(state)?;
        } else {
            self.pending_state = Some(state.clone());
        }
        Ok(())
    }

    fn checkpoint_dirpath(&self) -> Option<PathBuf> {
        self.dirpath.clone()
    }

    fn best_model_path(&self) -> Option<PathBuf> {
        self.book.best_model_path.clone()
    }

    fn is_checkpoint_callback(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
pub(crate) mod tests;
