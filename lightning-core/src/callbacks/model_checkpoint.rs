//! `ModelCheckpoint`: Lightning 2.6's checkpoint callback (periodic saves, top-k by a monitored
//! metric, `last.ckpt`), with the same file names, state key and saved state, so runs resume
//! across Python Lightning and lightning-rs.
//!
//! Safety beyond Lightning: bookkeeping rolls back when a save fails, worse files are deleted
//! only after the new file is saved (and after `last` is re-pointed), and nothing outside
//! `dirpath`, the file the run resumed from, or a file still tracked is ever deleted.

use super::{Callback, CallbackError, TrainerContext};
use crate::pyfmt::{self, MetricValue, Metrics};
use crate::value::{Dict, Key, Value};
use indexmap::IndexMap;
use std::any::Any;
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

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

/// Builder for [`ModelCheckpoint`]; every option of Lightning's constructor, same defaults.
#[derive(Clone, Debug)]
pub struct ModelCheckpointBuilder {
    dirpath: Option<PathBuf>,
    filename: Option<String>,
    monitor: Option<String>,
    verbose: bool,
    save_last: SaveLast,
    save_top_k: i64,
    save_on_exception: bool,
    save_weights_only: bool,
    mode: Result<Mode, String>,
    auto_insert_metric_name: bool,
    every_n_train_steps: Option<i64>,
    train_time_interval: Option<Duration>,
    every_n_epochs: Option<i64>,
    save_on_train_epoch_end: Option<bool>,
    enable_version_counter: bool,
    last_name: String,
}

impl Default for ModelCheckpointBuilder {
    fn default() -> Self {
        ModelCheckpointBuilder {
            dirpath: None,
            filename: None,
            monitor: None,
            verbose: false,
            save_last: SaveLast::False,
            save_top_k: 1,
            save_on_exception: false,
            save_weights_only: false,
            mode: Ok(Mode::Min),
            auto_insert_metric_name: true,
            every_n_train_steps: None,
            train_time_interval: None,
            every_n_epochs: None,
            save_on_train_epoch_end: None,
            enable_version_counter: true,
            last_name: ModelCheckpoint::CHECKPOINT_NAME_LAST.to_owned(),
        }
    }
}

impl ModelCheckpointBuilder {
    /// Directory for the files (default: `<log_dir>/checkpoints`, or
    /// `<default_root_dir>/checkpoints` without a logger). Made absolute and resolved.
    pub fn dirpath(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dirpath = Some(dir.into());
        self
    }
    /// File name template, Python `str.format` style (default `{epoch}-{step}`).
    pub fn filename(mut self, template: impl Into<String>) -> Self {
        self.filename = Some(template.into());
        self
    }
    /// The logged metric that ranks checkpoints.
    pub fn monitor(mut self, key: impl Into<String>) -> Self {
        self.monitor = Some(key.into());
        self
    }
    /// Log each decision (via `tracing`).
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }
    /// `last.ckpt`: `SaveLast::True` (or `true`), `SaveLast::Link`, or off.
    pub fn save_last(mut self, s: impl Into<SaveLast>) -> Self {
        self.save_last = s.into();
        self
    }
    /// How many best files to keep: `-1` all, `0` none, `k` the best k (default 1).
    pub fn save_top_k(mut self, k: i64) -> Self {
        self.save_top_k = k;
        self
    }
    /// Save a checkpoint when training raises an error.
    pub fn save_on_exception(mut self, on: bool) -> Self {
        self.save_on_exception = on;
        self
    }
    /// Save only the model's weights (no optimizer or loop state).
    pub fn save_weights_only(mut self, on: bool) -> Self {
        self.save_weights_only = on;
        self
    }
    /// Whether lower or higher monitored values are better (default min).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Ok(mode);
        self
    }
    /// The mode by name, `"min"` or `"max"`; another name makes [`Self::build`] fail.
    pub fn mode_str(mut self, mode: &str) -> Self {
        self.mode = Mode::from_str(mode).map_err(|_| mode.to_owned());
        self
    }
    /// Insert `name=` before each `{name}` of the template (default true).
    pub fn auto_insert_metric_name(mut self, on: bool) -> Self {
        self.auto_insert_metric_name = on;
        self
    }
    /// Save every n optimizer steps (exclusive with the other triggers).
    pub fn every_n_train_steps(mut self, n: i64) -> Self {
        self.every_n_train_steps = Some(n);
        self
    }
    /// Save every n epochs (default 1 when no trigger is given).
    pub fn every_n_epochs(mut self, n: i64) -> Self {
        self.every_n_epochs = Some(n);
        self
    }
    /// Save whenever this much training time has passed since the last check.
    pub fn train_time_interval(mut self, d: Duration) -> Self {
        self.train_time_interval = Some(d);
        self
    }
    /// Save at train-epoch end (`Some(true)`), at validation end (`Some(false)`), or decide
    /// from the trainer's validation schedule as Lightning does (`None`, the default).
    pub fn save_on_train_epoch_end(mut self, v: Option<bool>) -> Self {
        self.save_on_train_epoch_end = v;
        self
    }
    /// Append `-v1`, `-v2`, ... on name clashes instead of overwriting (default true).
    pub fn enable_version_counter(mut self, on: bool) -> Self {
        self.enable_version_counter = on;
        self
    }
    /// Template of the last checkpoint's name (Lightning's `CHECKPOINT_NAME_LAST`, `last`).
    pub fn last_name(mut self, template: impl Into<String>) -> Self {
        self.last_name = template.into();
        self
    }

    /// Validates the options as Lightning's constructor does.
    pub fn build(self) -> Result<ModelCheckpoint, CallbackError> {
        let mode = self
            .mode
            .map_err(|m| CallbackError::Config(format!("`mode` can be min, max but got {m}")))?;
        let (every_n_epochs, every_n_train_steps) = if self.every_n_train_steps.is_none()
            && self.every_n_epochs.is_none()
            && self.train_time_interval.is_none()
        {
            (1, 0)
        } else {
            (
                self.every_n_epochs.unwrap_or(0),
                self.every_n_train_steps.unwrap_or(0),
            )
        };
        if self.save_top_k < -1 {
            return Err(CallbackError::Config(format!(
                "Invalid value for save_top_k={}. Must be >= -1",
                self.save_top_k
            )));
        }
        if every_n_train_steps < 0 {
            return Err(CallbackError::Config(format!(
                "Invalid value for every_n_train_steps={every_n_train_steps}. Must be >= 0"
            )));
        }
        if every_n_epochs < 0 {
            return Err(CallbackError::Config(format!(
                "Invalid value for every_n_epochs={every_n_epochs}. Must be >= 0"
            )));
        }
        let triggered = usize::from(every_n_train_steps >= 1)
            + usize::from(every_n_epochs >= 1)
            + usize::from(self.train_time_interval.is_some());
        if triggered > 1 {
            return Err(CallbackError::Config(format!(
                "Combination of parameters every_n_train_steps={every_n_train_steps}, \
                 every_n_epochs={every_n_epochs} and train_time_interval={} should be mutually \
                 exclusive.",
                self.train_time_interval
                    .map_or("None".to_owned(), str_timedelta)
            )));
        }
        if self.monitor.is_none() && !matches!(self.save_top_k, -1..=1) {
            return Err(CallbackError::Config(format!(
                "ModelCheckpoint(save_top_k={}, monitor=None) is not a valid configuration. No \
                 quantity for top_k to track.",
                self.save_top_k
            )));
        }
        let dirpath = match self.dirpath {
            Some(d) => Some(
                realpath(&expanduser(&d)).map_err(|source| CallbackError::Io {
                    context: format!("ModelCheckpoint: resolving dirpath {}", d.display()),
                    source,
                })?,
            ),
            None => None,
        };
        Ok(ModelCheckpoint {
            dirpath,
            filename: self.filename,
            monitor: self.monitor,
            verbose: self.verbose,
            save_last: self.save_last,
            save_top_k: self.save_top_k,
            save_on_exception: self.save_on_exception,
            save_weights_only: self.save_weights_only,
            mode,
            auto_insert_metric_name: self.auto_insert_metric_name,
            every_n_train_steps,
            every_n_epochs,
            train_time_interval: self.train_time_interval,
            save_on_train_epoch_end: self.save_on_train_epoch_end,
            enable_version_counter: self.enable_version_counter,
            last_name: self.last_name,
            book: Book::new(mode),
            last_global_step_saved: 0,
            last_time_checked: None,
            last_checkpoint_saved: None,
            defer_save_until_validation: false,
            pending_state: None,
            pending_removals: vec![],
            warned: HashSet::new(),
        })
    }
}

/// What `ModelCheckpoint` tracks about its files (its saved state, less config).
#[derive(Clone, Debug)]
struct Book {
    current_score: Option<f64>,
    best_k_models: IndexMap<PathBuf, f64>,
    kth_best_model_path: Option<PathBuf>,
    kth_value: f64,
    best_model_score: Option<f64>,
    best_model_path: Option<PathBuf>,
    last_model_path: Option<PathBuf>,
}

impl Book {
    fn new(mode: Mode) -> Book {
        Book {
            current_score: None,
            best_k_models: IndexMap::new(),
            kth_best_model_path: None,
            kth_value: mode.worst(),
            best_model_score: None,
            best_model_path: None,
            last_model_path: None,
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
    book: Book,
    last_global_step_saved: i64,
    last_time_checked: Option<Duration>,
    last_checkpoint_saved: Option<PathBuf>,
    defer_save_until_validation: bool,
    /// State loaded before `dirpath` was known; applied once it is.
    pending_state: Option<Value>,
    /// Files to delete once the current hook's saves (top-k and last) are done.
    /// Files to delete, each with the file whose save replaced it (deleted only once that
    /// replacement is on disk).
    pending_removals: Vec<(PathBuf, PathBuf)>,
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
    fn resolve_dir(&self, t: &dyn TrainerContext) -> PathBuf {
        if let Some(d) = &self.dirpath {
            return d.clone();
        }
        match t.log_dir() {
            Some(log) => log.join("checkpoints"),
            None => t.default_root_dir().join("checkpoints"),
        }
    }

    /// Resolves `dirpath` and applies a state loaded before it was known.
    fn ensure_setup(&mut self, t: &dyn TrainerContext) -> crate::Result<()> {
        if self.dirpath.is_none() {
            self.dirpath = Some(self.resolve_dir(t));
        }
        if let Some(state) = self.pending_state.take() {
            self.apply_state(&state)?;
        }
        if self.last_time_checked.is_none() {
            self.last_time_checked = Some(t.train_time());
        }
        Ok(())
    }

    fn warn_once(&mut self, msg: String) {
        if self.warned.insert(msg.clone()) {
            tracing::warn!("{msg}");
        }
    }

    /// `trainer.callback_metrics` plus `epoch` and `step` as ints.
    fn monitor_candidates(t: &dyn TrainerContext) -> Metrics {
        let mut m: Metrics = t
            .callback_metrics()
            .iter()
            .map(|(k, v)| (k.clone(), MetricValue::Float(*v)))
            .collect();
        let epoch = match m.get("epoch") {
            Some(v) => MetricValue::Int(v.as_f64() as i64),
            None => MetricValue::Int(t.current_epoch()),
        };
        m.insert("epoch".into(), epoch);
        let step = match m.get("step") {
            Some(v) => MetricValue::Int(v.as_f64() as i64),
            None => MetricValue::Int(t.global_step()),
        };
        m.insert("step".into(), step);
        m
    }

    fn should_skip_saving(&self, t: &dyn TrainerContext) -> bool {
        !t.is_fitting() || t.sanity_checking() || self.last_global_step_saved == t.global_step()
    }

    /// Lightning's `_should_save_on_train_epoch_end`.
    fn should_save_on_train_epoch_end(&self, t: &dyn TrainerContext) -> bool {
        if let Some(v) = self.save_on_train_epoch_end {
            return v;
        }
        if t.check_val_every_n_epoch() != Some(1) {
            return false;
        }
        if t.num_val_batches() == 0 {
            return true;
        }
        !t.val_check_within_epoch()
    }

    fn epoch_due(&self, t: &dyn TrainerContext) -> bool {
        self.every_n_epochs >= 1 && (t.current_epoch() + 1) % self.every_n_epochs == 0
    }

    /// The save at train-epoch or validation end: top-k when the epoch is due; `last` only
    /// when that saved a file (Lightning 2.6), or to re-point a `link`.
    fn save_due_at_epoch_end(
        &mut self,
        t: &mut dyn TrainerContext,
        cands: &Metrics,
    ) -> crate::Result<()> {
        if self.epoch_due(t) {
            self.save_topk(t, cands)?;
        }
        if self.last_global_step_saved == t.global_step()
            || (self.save_last == SaveLast::Link && self.last_checkpoint_saved.is_some())
        {
            self.save_last_checkpoint(t, cands)?;
        }
        Ok(())
    }

    fn file_exists(t: &dyn TrainerContext, path: &Path) -> bool {
        t.is_global_zero() && path.exists()
    }

    /// Writes a checkpoint through the trainer (durable there), creating its folder.
    fn save_file(&mut self, t: &mut dyn TrainerContext, path: &Path) -> crate::Result<()> {
        if t.is_global_zero() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| CallbackError::Io {
                    context: format!("creating checkpoint directory {}", parent.display()),
                    source,
                })?;
            }
        }
        // the file holds this callback's state as updated for this save (as Lightning's)
        t.save_checkpoint_from(path, self.save_weights_only, &*self)?;
        self.last_global_step_saved = t.global_step();
        self.last_checkpoint_saved = Some(path.to_owned());
        Ok(())
    }

    /// Runs `f` (which updates the bookkeeping, then saves); restores it when `f` fails.
    fn transact(&mut self, f: impl FnOnce(&mut Self) -> crate::Result<()>) -> crate::Result<()> {
        let before = self.book.clone();
        let r = f(self);
        if r.is_err() {
            self.book = before;
        }
        r
    }

    fn save_topk(&mut self, t: &mut dyn TrainerContext, cands: &Metrics) -> crate::Result<()> {
        if self.save_top_k == 0 {
            return Ok(());
        }
        match self.monitor.clone() {
            Some(monitor) => {
                if !cands.contains_key(&monitor) {
                    let err = CallbackError::MonitorNotFound {
                        monitor: monitor.clone(),
                        keys: cands.keys().cloned().collect(),
                    };
                    if t.validation_ran() {
                        return Err(err.into());
                    }
                    self.warn_once(err.to_string());
                }
                let current = cands.get(&monitor).map(|v| v.as_f64());
                match current {
                    Some(c) if self.check_monitor_top_k(c) => {
                        self.update_best_and_save(c, t, cands)
                    }
                    _ => {
                        if self.verbose {
                            tracing::info!(
                                "Epoch {}, global step {}: {} was not in top {}",
                                t.current_epoch(),
                                t.global_step(),
                                pyfmt::repr_str(&monitor),
                                self.save_top_k
                            );
                        }
                        Ok(())
                    }
                }
            }
            None => self.save_none_monitor(t, cands),
        }
    }

    /// Lightning's `check_monitor_top_k` (`torch.lt`/`gt` against the kth value).
    fn check_monitor_top_k(&self, current: f64) -> bool {
        if self.save_top_k == -1 {
            return true;
        }
        if (self.book.best_k_models.len() as i64) < self.save_top_k {
            return true;
        }
        let kth = self
            .book
            .kth_best_model_path
            .as_ref()
            .and_then(|p| self.book.best_k_models.get(p).copied())
            .or_else(|| self.extreme(false).map(|(_, v)| v))
            .unwrap_or(self.mode.worst());
        self.mode.better(current, kth)
    }

    /// The best (`best = true`) or worst kept model, first in save order on ties (Python's
    /// `min`/`max` over the dict).
    fn extreme(&self, best: bool) -> Option<(PathBuf, f64)> {
        let mut it = self.book.best_k_models.iter();
        let (mut p, mut v) = it.next().map(|(p, v)| (p, *v))?;
        for (q, w) in it {
            let replace = if best {
                self.mode.better(*w, v)
            } else {
                self.mode.better(v, *w)
            };
            if replace {
                p = q;
                v = *w;
            }
        }
        Some((p.clone(), v))
    }

    /// A name from the template, versioned past existing files (except `del`, about to go).
    fn interpolated_path(
        &self,
        cands: &Metrics,
        t: &dyn TrainerContext,
        del: Option<&Path>,
    ) -> Result<PathBuf, CallbackError> {
        let mut path = self.format_checkpoint_name(cands, None, None, None)?;
        if self.enable_version_counter {
            let mut ver = Self::STARTING_VERSION;
            while Self::file_exists(t, &path) && Some(path.as_path()) != del {
                path = self.format_checkpoint_name(cands, None, Some(ver), None)?;
                ver += 1;
            }
        }
        Ok(path)
    }

    fn update_best_and_save(
        &mut self,
        current: f64,
        t: &mut dyn TrainerContext,
        cands: &Metrics,
    ) -> crate::Result<()> {
        let mut del: Option<PathBuf> = None;
        let mode = self.mode;
        let top_k = self.save_top_k;
        self.transact(|me| {
            let k = if top_k == -1 {
                me.book.best_k_models.len() + 1
            } else {
                top_k as usize
            };
            if me.book.best_k_models.len() == k && k > 0 {
                del = me.book.kth_best_model_path.clone();
                if let Some(d) = &del {
                    me.book.best_k_models.shift_remove(d);
                }
            }
            // never let NaN become best: it ranks as the worst value
            let current = if current.is_nan() {
                mode.worst()
            } else {
                current
            };
            let path = me.interpolated_path(cands, t, del.as_deref())?;
            me.book.current_score = Some(current);
            me.book.best_k_models.insert(path.clone(), current);
            if me.book.best_k_models.len() == k {
                if let Some((p, v)) = me.extreme(false) {
                    me.book.kth_best_model_path = Some(p);
                    me.book.kth_value = v;
                }
            }
            if let Some((p, v)) = me.extreme(true) {
                me.book.best_model_path = Some(p);
                me.book.best_model_score = Some(v);
            }
            if me.verbose {
                tracing::info!(
                    "Epoch {}, global step {}: {} reached {current:0.5} (best {:0.5}), saving \
                     model to {} as top {k}",
                    t.current_epoch(),
                    t.global_step(),
                    pyfmt::repr_str(me.monitor.as_deref().unwrap_or("")),
                    me.book.best_model_score.unwrap_or(current),
                    pyfmt::repr_str(&path.to_string_lossy()),
                );
            }
            me.save_file(t, &path)?;
            if let Some(d) = del.take() {
                if me.should_remove(t, &d, &path) {
                    me.pending_removals.push((d, path.clone()));
                }
            }
            Ok(())
        })
    }

    fn save_none_monitor(
        &mut self,
        t: &mut dyn TrainerContext,
        cands: &Metrics,
    ) -> crate::Result<()> {
        let top_k = self.save_top_k;
        self.transact(|me| {
            let path = me.interpolated_path(cands, t, me.book.best_model_path.as_deref())?;
            let previous = me.book.best_model_path.replace(path.clone());
            me.save_file(t, &path)?;
            if let Some(prev) = previous {
                if top_k == 1 && me.should_remove(t, &prev, &path) {
                    me.pending_removals.push((prev, path.clone()));
                }
            }
            Ok(())
        })
    }

    fn save_last_checkpoint(
        &mut self,
        t: &mut dyn TrainerContext,
        cands: &Metrics,
    ) -> crate::Result<()> {
        if !self.save_last.enabled() {
            return Ok(());
        }
        let last_name = self.last_name.clone();
        self.transact(|me| {
            let mut path = me.format_checkpoint_name(cands, Some(&last_name), None, None)?;
            if me.enable_version_counter {
                let mut ver = Self::STARTING_VERSION;
                while Self::file_exists(t, &path)
                    && Some(path.as_path()) != me.book.last_model_path.as_deref()
                {
                    path = me.format_checkpoint_name(cands, Some(&last_name), Some(ver), None)?;
                    ver += 1;
                }
            }
            let previous = me.book.last_model_path.replace(path.clone());
            match me.last_checkpoint_saved.clone() {
                Some(target) if me.save_last == SaveLast::Link && me.save_top_k != 0 => {
                    if t.is_global_zero() {
                        // the target must be complete on disk before `last` points at it
                        t.wait_for_pending_saves()?;
                        link_checkpoint(&target, &path)?;
                    }
                }
                _ => me.save_file(t, &path)?,
            }
            if let Some(prev) = previous {
                if me.should_remove(t, &prev, &path) {
                    me.pending_removals.push((prev, path.clone()));
                }
            }
            Ok(())
        })
    }

    /// Lightning's `_should_remove_checkpoint`, stricter: never the resumed-from file (also
    /// through links), never anything outside `dirpath` (after resolving `..`).
    fn should_remove(&self, t: &dyn TrainerContext, previous: &Path, current: &Path) -> bool {
        if previous == current {
            return false;
        }
        let prev = lexical_absolute(previous);
        if let Some(resume) = t.resumed_from() {
            if lexical_absolute(&resume) == prev {
                return false;
            }
            if let (Ok(a), Ok(b)) = (previous.canonicalize(), resume.canonicalize()) {
                if a == b {
                    return false;
                }
            }
        }
        let Some(dir) = &self.dirpath else {
            return false;
        };
        let dir = lexical_absolute(dir);
        prev.parent().is_some_and(|p| p.starts_with(&dir))
    }

    /// Deletes the files queued by this hook's saves (rank 0 only), skipping any file that is
    /// tracked again (best, top-k, last, newest) or is the resumed-from checkpoint.
    /// Waits for in-flight (async) saves first: a file goes only once its replacement is
    /// durable; if that save failed, nothing is deleted and its error is returned.
    ///
    /// Unless `force`d (at the end of `fit`), a save still being written in the background
    /// defers the deletions to a later hook instead of blocking the step loop on the write.
    fn flush_removals(&mut self, t: &mut dyn TrainerContext, force: bool) -> crate::Result<()> {
        if !t.is_global_zero() || self.pending_removals.is_empty() {
            self.pending_removals.clear();
            return Ok(());
        }
        if !force && t.save_in_flight() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.pending_removals);
        t.wait_for_pending_saves()?;
        for (path, replacement) in queued {
            // A failed background save may already have been reported (and, with a
            // warn-and-continue policy, swallowed): a file goes only when the file that
            // replaced it is really on disk.
            if std::fs::symlink_metadata(&replacement).is_err() {
                tracing::warn!(
                    "keeping {}: {} replaced it but is not on disk (its save failed)",
                    path.display(),
                    replacement.display()
                );
                continue;
            }
            let tracked = self.book.best_k_models.contains_key(&path)
                || self.book.best_model_path.as_deref() == Some(&path)
                || self.book.last_model_path.as_deref() == Some(&path)
                || self.last_checkpoint_saved.as_deref() == Some(&path);
            if tracked || !self.should_remove(t, &path, Path::new("")) {
                continue;
            }
            let r = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!("could not remove old checkpoint {}: {e}", path.display());
            }
        }
        Ok(())
    }

    /// Runs a hook body, then deletes what it queued (only when it succeeded).
    fn hook(
        &mut self,
        t: &mut dyn TrainerContext,
        f: impl FnOnce(&mut Self, &mut dyn TrainerContext) -> crate::Result<()>,
    ) -> crate::Result<()> {
        self.ensure_setup(t)?;
        match f(self, t) {
            Ok(()) => self.flush_removals(t, false),
            Err(e) => {
                self.pending_removals.clear();
                Err(e)
            }
        }
    }

    fn path_str(p: &Option<PathBuf>) -> Value {
        Value::Str(
            p.as_ref()
                .map_or(String::new(), |p| p.to_string_lossy().into_owned()),
        )
    }

    /// Applies a saved state (Lightning's `load_state_dict` rule: everything only when the
    /// saved `dirpath` equals ours, else just `best_model_path`, with a warning).
    fn apply_state(&mut self, state: &Value) -> Result<(), CallbackError> {
        let key = self.state_key();
        let err = |k: &str, msg: String| CallbackError::State {
            state_key: key.clone(),
            key: k.to_owned(),
            msg,
        };
        if state.as_dict().is_none() {
            return Err(err(
                "",
                format!("expected a dict, found {}", state.type_name()),
            ));
        }
        let ours = self
            .dirpath
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned());
        let from_ckpt = match state.get("dirpath") {
            None => ours.clone(),
            Some(Value::None) => None,
            Some(Value::Str(s)) => Some(s.clone()),
            Some(v) => {
                return Err(err(
                    "dirpath",
                    format!("expected str, found {}", v.type_name()),
                ))
            }
        };
        let get_path = |k: &str| -> Result<Option<Option<PathBuf>>, CallbackError> {
            match state.get(k) {
                None => Ok(None),
                Some(Value::None) => Ok(Some(None)),
                Some(Value::Str(s)) if s.is_empty() => Ok(Some(None)),
                Some(Value::Str(s)) => Ok(Some(Some(PathBuf::from(s)))),
                Some(v) => Err(err(k, format!("expected str, found {}", v.type_name()))),
            }
        };
        let best_model_path =
            get_path("best_model_path")?.ok_or_else(|| err("best_model_path", "missing".into()))?;
        let mut book = self.book.clone();
        if from_ckpt == ours {
            let score = state
                .get("best_model_score")
                .ok_or_else(|| err("best_model_score", "missing".into()))?;
            book.best_model_score = score_value(score).map_err(|m| err("best_model_score", m))?;
            if let Some(p) = get_path("kth_best_model_path")? {
                book.kth_best_model_path = p;
            }
            if let Some(v) = state.get("kth_value") {
                if let Some(x) = score_value(v).map_err(|m| err("kth_value", m))? {
                    book.kth_value = x;
                }
            }
            if let Some(v) = state.get("best_k_models") {
                let d = v.as_dict().ok_or_else(|| {
                    err(
                        "best_k_models",
                        format!("expected dict, found {}", v.type_name()),
                    )
                })?;
                let mut models = IndexMap::new();
                for (k, s) in d {
                    let Key::Str(p) = k else {
                        return Err(err("best_k_models", format!("non-string key {k}")));
                    };
                    let s = score_value(s)
                        .map_err(|m| err("best_k_models", format!("{p}: {m}")))?
                        .unwrap_or(self.mode.worst());
                    models.insert(PathBuf::from(p), s);
                }
                book.best_k_models = models;
            }
            if let Some(p) = get_path("last_model_path")? {
                book.last_model_path = p;
            }
        } else {
            tracing::warn!(
                "The dirpath has changed from {} to {}, therefore `best_model_score`, \
                 `kth_best_model_path`, `kth_value`, `last_model_path` and `best_k_models` won't \
                 be reloaded. Only `best_model_path` will be reloaded.",
                from_ckpt.as_deref().map_or("None".into(), pyfmt::repr_str),
                ours.as_deref().map_or("None".into(), pyfmt::repr_str),
            );
        }
        book.best_model_path = best_model_path;
        self.book = book;
        Ok(())
    }
}

/// A score stored in a state: a one-element tensor (what Lightning stores), a float or int,
/// or `None`.
fn score_value(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::None => Ok(None),
        Value::Float(x) => Ok(Some(*x)),
        Value::Int(i) => Ok(Some(*i as f64)),
        Value::Tensor(t) if t.numel() == 1 => t
            .reshape([-1])
            .f_double_value(&[0])
            .map(Some)
            .map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a one-element tensor, a number or None, found {}",
            other.type_name()
        )),
    }
}

/// A 0-dim float64 tensor (Lightning stores scores as tensors; float64 keeps ours exact).
fn score_tensor(x: f64) -> Value {
    Value::Tensor(
        Tensor::from_slice(&[x])
            .reshape([])
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )
}

impl Callback for ModelCheckpoint {
    /// `ModelCheckpoint{'monitor': .., 'mode': .., 'every_n_train_steps': .., 'every_n_epochs':
    /// .., 'train_time_interval': ..}`, exactly as Lightning's `repr` of those kwargs.
    fn state_key(&self) -> String {
        format!(
            "ModelCheckpoint{{'monitor': {}, 'mode': {}, 'every_n_train_steps': {}, \
             'every_n_epochs': {}, 'train_time_interval': {}}}",
            self.monitor
                .as_deref()
                .map_or("None".into(), pyfmt::repr_str),
            pyfmt::repr_str(self.mode.as_str()),
            self.every_n_train_steps,
            self.every_n_epochs,
            self.train_time_interval
                .map_or("None".into(), pyfmt::repr_timedelta),
        )
    }

    /// Resolves `dirpath`, removes temporary links a killed run left there, and warns (as
    /// Lightning) when a fit starts in a non-empty directory.
    fn setup(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
        self.ensure_setup(t)?;
        if let (true, Some(dir)) = (t.is_global_zero(), &self.dirpath) {
            remove_stale_link_temps(dir);
            crate::checkpoint::remove_stale_temp_files(dir);
        }
        if t.is_global_zero() && t.is_fitting() && self.save_top_k != 0 {
            if let Some(dir) = &self.dirpath {
                if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                    tracing::warn!(
                        "Checkpoint directory {} exists and is not empty.",
                        dir.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Starts the time trigger's clock. When the run resumed from a file this callback wrote
    /// (a tracked top-k or last file), that file is this step's save: it is not written again
    /// at the same step, so a resumed run leaves the same files as an uninterrupted one.
    fn on_fit_start(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
        self.ensure_setup(t)?;
        self.last_time_checked = Some(t.train_time());
        if let Some(resumed) = t.resumed_from() {
            let resumed = lexical_absolute(&resumed);
            let ours = |p: &Path| lexical_absolute(p) == resumed;
            let b = &self.book;
            if b.best_k_models.keys().any(|p| ours(p))
                || b.best_model_path.as_deref().is_some_and(ours)
                || b.last_model_path.as_deref().is_some_and(ours)
            {
                self.last_global_step_saved = t.global_step();
            }
        }
        Ok(())
    }

    fn on_train_batch_end(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
        self.hook(t, |me, t| {
            let skip_due_to_state = me.should_skip_saving(t);
            let skip_batch =
                me.every_n_train_steps < 1 || t.global_step() % me.every_n_train_steps != 0;
            let now = t.train_time();
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
                if !me.should_save_on_train_epoch_end(t) && t.is_last_batch() {
                    let will_run_val = t.num_val_batches() > 0
                        && match t.check_val_every_n_epoch() {
                            None => true,
                            Some(c) => c > 0 && (t.current_epoch() + 1) % c == 0,
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

    fn on_train_epoch_end(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if me.should_skip_saving(t) || !me.should_save_on_train_epoch_end(t) {
                return Ok(());
            }
            let cands = Self::monitor_candidates(t);
            me.save_due_at_epoch_end(t, &cands)
        })
    }

    fn on_validation_end(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
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

    fn on_exception(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if !me.save_on_exception
                || t.sanity_checking()
                || me.last_global_step_saved == t.global_step()
            {
                return Ok(());
            }
            let cands = Self::monitor_candidates(t);
            let path = me.format_checkpoint_name(&cands, None, None, None)?;
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
    fn on_fit_end(&mut self, t: &mut dyn TrainerContext) -> crate::Result<()> {
        self.hook(t, |me, t| {
            if me.save_last.enabled() && me.last_checkpoint_saved.is_none() {
                let cands = Self::monitor_candidates(t);
                me.save_last_checkpoint(t, &cands)?;
            }
            Ok(())
        })?;
        self.flush_removals(t, true)
    }

    /// Lightning's keys; scores as 0-dim float64 tensors, paths as strings (`""` for none).
    fn state_dict(&self) -> Value {
        let mut d = Value::dict();
        d.insert("monitor", Value::from(self.monitor.clone()));
        d.insert(
            "best_model_score",
            self.book.best_model_score.map_or(Value::None, score_tensor),
        );
        d.insert(
            "best_model_path",
            Self::path_str(&self.book.best_model_path),
        );
        d.insert(
            "current_score",
            self.book.current_score.map_or(Value::None, score_tensor),
        );
        d.insert(
            "dirpath",
            Value::from(
                self.dirpath
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            ),
        );
        let mut models = Dict::new();
        for (p, s) in &self.book.best_k_models {
            models.insert(Key::Str(p.to_string_lossy().into_owned()), score_tensor(*s));
        }
        d.insert("best_k_models", Value::Dict(models));
        d.insert(
            "kth_best_model_path",
            Self::path_str(&self.book.kth_best_model_path),
        );
        d.insert("kth_value", score_tensor(self.book.kth_value));
        d.insert(
            "last_model_path",
            Self::path_str(&self.book.last_model_path),
        );
        d
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

/// Points `link` at `target` with a relative symlink (a copy where links are not possible),
/// replacing what was there atomically: a temporary link is renamed over `link`, so a `last`
/// file always exists once one was written.
fn link_checkpoint(target: &Path, link: &Path) -> Result<(), CallbackError> {
    link_or_copy(target, link, symlink)
}

/// Creates a symlink `link` -> `target` (`target` relative to `link`'s folder).
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    let r = std::os::unix::fs::symlink(target, link);
    #[cfg(not(unix))]
    let r = {
        let _ = (target, link);
        Err(std::io::ErrorKind::Unsupported.into())
    };
    r
}

/// [`link_checkpoint`] with the link-making function given (tests make it fail).
fn link_or_copy(
    target: &Path,
    link: &Path,
    make_link: fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), CallbackError> {
    let io = |what: &str, p: &Path| {
        let ctx = format!("{what} {}", p.display());
        move |source| CallbackError::Io {
            context: ctx,
            source,
        }
    };
    let (abs_target, abs_link) = (lexical_absolute(target), lexical_absolute(link));
    if abs_target == abs_link {
        return Ok(());
    }
    let dir = abs_link.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let name = abs_link
        .file_name()
        .map_or("last".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(link_temp_name(&name));
    let _ = std::fs::remove_file(&tmp);
    if let Ok(m) = std::fs::symlink_metadata(&abs_link) {
        if m.is_dir() {
            std::fs::remove_dir_all(&abs_link).map_err(io("removing", &abs_link))?;
        }
    }
    let rel = relative_path(&abs_target, &dir);
    if let Err(e) = make_link(&rel, &tmp) {
        tracing::debug!("symlink {} failed ({e}); copying instead", tmp.display());
        // fall back to a durable copy
        let _ = std::fs::remove_file(&tmp);
        std::fs::copy(&abs_target, &tmp).map_err(io("copying checkpoint to", &tmp))?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(io("opening", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        let _ = (&f).flush();
    }
    if let Err(e) = std::fs::rename(&tmp, &abs_link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("replacing", &abs_link)(e));
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The temporary name [`link_checkpoint`] creates next to `name` before renaming it over.
fn link_temp_name(name: &str) -> String {
    format!(".{name}{LINK_TEMP_MARK}{}", std::process::id())
}

const LINK_TEMP_MARK: &str = ".tmp-link-";

/// Deletes `.<name>.tmp-link-<pid>` entries in `dir` (left when a run died mid-link).
fn remove_stale_link_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(LINK_TEMP_MARK) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!("could not remove stale {}: {err}", e.path().display());
            }
        }
    }
}

/// `os.path.abspath`: absolute, with `.` and `..` resolved lexically.
fn lexical_absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// `os.path.relpath(target, base)` for absolute, normalized paths.
fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// `os.path.expanduser` for a leading `~`.
fn expanduser(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => p.to_owned(),
        },
        Err(_) => p.to_owned(),
    }
}

/// `os.path.realpath` (non-strict): absolute, symlinks of the existing part resolved.
fn realpath(p: &Path) -> std::io::Result<PathBuf> {
    let abs = lexical_absolute(p);
    let mut existing = abs.clone();
    let mut rest = vec![];
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return Ok(out);
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => return Ok(abs),
        }
    }
}

/// Python's `str(timedelta)`: `[D day[s], ]H:MM:SS[.ffffff]`.
fn str_timedelta(d: Duration) -> String {
    let micros = d.as_micros();
    let days = micros / 86_400_000_000;
    let secs = (micros / 1_000_000) % 86_400;
    let frac = micros % 1_000_000;
    let mut s = String::new();
    if days > 0 {
        s = format!("{days} day{}, ", if days == 1 { "" } else { "s" });
    }
    s += &format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60);
    if frac > 0 {
        s += &format!(".{frac:06}");
    }
    s
}

/// The newest `last*.ckpt` in `dirs` (by modification time, as Lightning's
/// `ckpt_path="last"`) that `verify` accepts; damaged files are reported and skipped.
///
/// The trainer passes a check that reads the file back completely (for example
/// `|p| lightning_core::checkpoint::load(p).is_ok()`), so a torn or corrupt `last.ckpt` never
/// becomes the resume point while an older good one exists.
pub fn find_last_checkpoint(dirs: &[PathBuf], verify: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut seen = HashSet::new();
    let mut cands = vec![];
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = lexical_absolute(&entry.path());
            let is_last = path.extension().is_some_and(|e| e == "ckpt")
                && path.file_stem().is_some_and(|s| {
                    s.to_string_lossy()
                        .starts_with(ModelCheckpoint::CHECKPOINT_NAME_LAST)
                });
            if !is_last || !seen.insert(path.clone()) {
                continue;
            }
            match std::fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(mtime) => cands.push((mtime, path)),
                Err(e) => tracing::warn!("skipping checkpoint {}: {e}", path.display()),
            }
        }
    }
    cands.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, path) in cands {
        if verify(&path) {
            return Some(path);
        }
        tracing::warn!(
            "skipping damaged checkpoint {} (it does not read back completely)",
            path.display()
        );
    }
    None
}

#[cfg(test)]
#[path = "model_checkpoint_tests.rs"]
pub(crate) mod tests;
