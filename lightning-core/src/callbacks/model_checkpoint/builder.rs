//! [`ModelCheckpointBuilder`]: Lightning's constructor options, defaults and checks.

use super::files::{expanduser, realpath, str_timedelta};
use super::topk::Book;
use super::{Mode, ModelCheckpoint, SaveLast};
use crate::callbacks::CallbackError;
use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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
    prefix: Option<String>,
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
            prefix: None,
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

    /// Lightning 1.x's `ModelCheckpoint(prefix=..)` (removed in 1.3): every file name,
    /// `last` included, becomes `{prefix}-{name}` (joined with
    /// [`ModelCheckpoint::CHECKPOINT_JOIN_CHAR`], as Lightning's
    /// `_format_checkpoint_name(.., prefix=..)`): `run1-epoch=0-step=6.ckpt`,
    /// `run1-last.ckpt`. `ckpt_path = Last` finds `{prefix}-last*.ckpt` too.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
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
            prefix: self.prefix,
            book: Book::new(mode),
            last_global_step_saved: 0,
            last_time_checked: None,
            last_checkpoint_saved: None,
            defer_save_until_validation: false,
            pending_state: None,
            replaced: vec![],
            warned: HashSet::new(),
        })
    }
}
