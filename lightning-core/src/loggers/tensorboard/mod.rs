//! Lightning's `TensorBoardLogger`: TensorBoard event files
//! (`events.out.tfevents.<secs>.<host>.<pid>.<n>`) and `hparams.yaml` in
//! `<save_dir>/<name>/version_N`. Scalars are written as torch's `SummaryWriter.add_scalar`
//! writes them (`Summary.Value.simple_value`, a 32-bit float), hyperparameters as
//! `torch.utils.tensorboard.summary.hparams` builds them for the HPARAMS tab.

mod event_file;
mod hparams;
mod proto;

use self::event_file::{now, EventFileWriter};
use self::proto::{Event, Summary, SummaryValue, What};
use super::Version;
use super::{write_hparams_yaml, LogLocation, Logger, LoggerError, Metrics, RunStatus, Scalar};
use crate::value::{Dict, Value};
use std::path::Path;

/// Lightning's `TensorBoardLogger`. Point TensorBoard at the save directory to watch a run
/// live: the file is flushed at the end of every epoch and of every run.
///
/// Lightning's behaviours kept: `log_hyperparams` logs `hp_metric = -1` (unless
/// [`TensorBoardLogger::with_default_hp_metric`]`(false)`, which logs no hparams at all, as
/// Lightning) and the hparams plugin's summaries of the flattened hyperparameters (nested
/// dicts as `a/b`; bools, ints and floats as numbers; other values as Python's `str()`);
/// `hparams.yaml` is written beside the event file; metric names get `prefix-` when a
/// prefix is set.
///
/// ```
/// use lightning_core::loggers::{CsvLogger, TensorBoardLogger};
/// use lightning_core::trainer::Trainer;
///
/// // Lightning's `logger=[TensorBoardLogger(root), CSVLogger(root)]`: both log into
/// // `<root>/lightning_logs/version_N`, the same N.
/// let root = std::env::temp_dir().join("tb-doc");
/// let trainer = Trainer::builder()
///     .default_root_dir(&root)
///     .logger((TensorBoardLogger::default(), CsvLogger::default()))
///     .build()?;
/// // then: tensorboard --logdir <root>/lightning_logs
/// # Ok::<(), lightning_core::Error>(())
/// ```
#[derive(Debug)]
pub struct TensorBoardLogger {
    location: LogLocation,
    default_hp_metric: bool,
    prefix: String,
    /// Every hyperparameter logged, for `hparams.yaml`.
    hparams: Dict,
    writer: Option<EventFileWriter>,
}

impl Default for TensorBoardLogger {
    /// A logger writing under the trainer's `default_root_dir`.
    fn default() -> Self {
        TensorBoardLogger {
            location: LogLocation::default(),
            default_hp_metric: true,
            prefix: String::new(),
            hparams: Dict::new(),
            writer: None,
        }
    }
}

impl TensorBoardLogger {
    /// A logger writing under `save_dir` (Lightning's `TensorBoardLogger(save_dir)`).
    pub fn new(save_dir: impl AsRef<Path>) -> Self {
        let mut l = TensorBoardLogger::default();
        l.location.set_save_dir(save_dir.as_ref().to_owned());
        l
    }

    /// The experiment name, the folder under `save_dir` (default `lightning_logs`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.location.set_name(name.into());
        self
    }

    /// A fixed version: a number (`version_N`) or a folder name (default: the next free one).
    pub fn with_version(mut self, version: impl Into<Version>) -> Self {
        self.location.set_version(version.into());
        self
    }

    /// Whether `log_hyperparams` logs the placeholder metric `hp_metric = -1` with the
    /// hyperparameters (default `true`; with `false`, as in Lightning, no hparams summaries
    /// are written at all, only `hparams.yaml`).
    pub fn with_default_hp_metric(mut self, on: bool) -> Self {
        self.default_hp_metric = on;
        self
    }

    /// A prefix for every metric name (`prefix-name`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The event file being written, once the logger has written one.
    pub fn event_file(&self) -> Option<&Path> {
        self.writer.as_ref().map(|w| w.path())
    }

    /// The open event file, created (with its directory) on first use as Lightning's
    /// `experiment` (a `SummaryWriter`) is.
    fn writer(&mut self) -> Result<&mut EventFileWriter, LoggerError> {
        let writer = match self.writer.take() {
            Some(w) => w,
            None => {
                let dir = self.location.log_dir().ok_or(LoggerError::NoLogDir {
                    logger: "TensorBoardLogger",
                })?;
                EventFileWriter::create(dir)?
            }
        };
        Ok(self.writer.insert(writer))
    }

    fn write_summary(&mut self, summary: Summary, step: Option<i64>) -> Result<(), LoggerError> {
        let event = Event {
            wall_time: now(),
            step: step.unwrap_or(0),
            what: Some(What::Summary(summary)),
            source_metadata: None,
        };
        self.writer()?.write(&event)
    }

    /// `add_scalar` for each metric, one event each.
    fn write_scalars(&mut self, metrics: &Metrics, step: Option<i64>) -> Result<(), LoggerError> {
        for (k, v) in metrics {
            let tag = match self.prefix.as_str() {
                "" => k.clone(),
                p => format!("{p}-{k}"),
            };
            let summary = Summary {
                value: vec![SummaryValue {
                    tag,
                    simple_value: Some(v.as_f64() as f32),
                    metadata: None,
                }],
            };
            self.write_summary(summary, step)?;
        }
        Ok(())
    }
}

impl Logger for TensorBoardLogger {
    fn location(&self) -> Option<&LogLocation> {
        Some(&self.location)
    }

    fn location_mut(&mut self) -> Option<&mut LogLocation> {
        Some(&mut self.location)
    }

    /// Keeps the hyperparameters for `hparams.yaml` and writes `hp_metric = -1` and the
    /// hparams plugin's three summaries (Lightning's `log_hyperparams(params)`).
    fn log_hyperparams(&mut self, params: &Value) -> Result<(), LoggerError> {
        if let Some(d) = params.as_dict() {
            self.hparams
                .extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if !self.default_hp_metric {
            return Ok(());
        }
        let flat = hparams::flatten(params);
        let metrics: Metrics = [("hp_metric".to_owned(), Scalar::Int(-1))]
            .into_iter()
            .collect();
        self.write_scalars(&metrics, None)?;
        let names: Vec<String> = metrics.keys().cloned().collect();
        for summary in hparams::summaries(&flat, &names) {
            self.write_summary(summary, None)?;
        }
        Ok(())
    }

    /// One scalar event per metric at `step`.
    fn log_metrics(&mut self, metrics: &Metrics, step: i64) -> Result<(), LoggerError> {
        self.write_scalars(metrics, Some(step))
    }

    /// Flushes the event file (creating it if nothing was logged yet) and writes
    /// `hparams.yaml` unless the directory has one.
    fn save(&mut self) -> Result<(), LoggerError> {
        self.writer()?.flush()?;
        self.write_hparams_file()
    }

    /// Flushes and closes the event file (a later run opens a new one in the same
    /// directory); on success also writes `hparams.yaml` if missing, as Lightning's `save`.
    fn finalize(&mut self, status: RunStatus) -> Result<(), LoggerError> {
        let flushed = self.writer.as_mut().map_or(Ok(()), |w| w.flush());
        self.writer = None;
        flushed?;
        match status {
            RunStatus::Success => self.write_hparams_file(),
            RunStatus::Failed => Ok(()),
        }
    }
}

impl TensorBoardLogger {
    /// `hparams.yaml` with every hyperparameter logged, unless the directory has one (a CSV
    /// logger sharing the directory writes the same file).
    fn write_hparams_file(&self) -> Result<(), LoggerError> {
        let Some(dir) = self.location.log_dir() else {
            return Ok(());
        };
        if dir.is_dir() && !dir.join("hparams.yaml").is_file() {
            write_hparams_yaml(dir, &Value::Dict(self.hparams.clone()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
