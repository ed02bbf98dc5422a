//! Loggers: where the trainer sends hyperparameters and metrics, as Lightning's `Logger`
//! classes. [`CsvLogger`] writes `metrics.csv` and `hparams.yaml`; [`TensorBoardLogger`]
//! writes TensorBoard event files. Both write into `<save_dir>/<name>/version_N`, the next
//! free version chosen when a `fit` (or `validate`/`test`) starts; loggers that share a
//! `save_dir` and `name` share that version directory, as Lightning's default TensorBoard +
//! CSV pair does.
//!
//! Pick them with [`TrainerBuilder::logger`](crate::trainer::TrainerBuilder::logger): `true`
//! (the default: one [`CsvLogger`]), `false` (none), one logger, or several (a tuple or a
//! `Vec<Box<dyn Logger>>`, see [`Loggers`]).

mod csv;
pub mod tensorboard;

pub use self::csv::CsvLogger;
pub use self::tensorboard::TensorBoardLogger;

use crate::value::Value;
use indexmap::IndexMap;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// A logger error: a log file or directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// An I/O error writing a log file or creating a log directory.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Uploading log files to object storage failed (the local copies are kept).
    #[error("uploading logs: {0}")]
    Upload(#[source] crate::checkpoint::CheckpointError),
    /// The logger was written to before its directory was chosen (the trainer chooses it when
    /// a run starts, or call [`LogLocation::resolve`]).
    #[error("{logger}: no log directory yet (the trainer chooses it when a run starts)")]
    NoLogDir {
        /// The logger's type.
        logger: &'static str,
    },
}

pub(crate) fn io_err(context: String) -> impl FnOnce(std::io::Error) -> LoggerError {
    move |source| LoggerError::Io { context, source }
}

/// A logged value as Python passes it to a logger: an `int` (`epoch`, the trainer adds it)
/// or a `float` (every metric logged with `log`). Loggers that print values print them as
/// Python does (`3` and `3.0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    /// A Python `int`.
    Int(i64),
    /// A Python `float`.
    Float(f64),
}

impl Scalar {
    /// The value as f64.
    pub fn as_f64(self) -> f64 {
        match self {
            Scalar::Int(i) => i as f64,
            Scalar::Float(x) => x,
        }
    }
}

impl fmt::Display for Scalar {
    /// Python's `str(value)`: `3`, `3.0`, `1e-05`, `nan`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => f.write_str(&crate::pyfmt::repr_float(*x)),
        }
    }
}

/// One call's metrics by name, in the order they were logged.
pub type Metrics = IndexMap<String, Scalar>;

/// How a run ended, passed to [`Logger::finalize`] (Lightning's `"success"` / `"failed"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// The run finished.
    Success,
    /// The run stopped with an error.
    Failed,
}

impl RunStatus {
    /// Lightning's spelling: `"success"` or `"failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
        }
    }
}

/// A logger's version: a number (the folder `version_N`) or a name (the folder itself), as
/// Lightning's `version: int | str`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// `version_N`.
    Number(u64),
    /// A folder name used as given.
    Named(String),
}

impl Version {
    /// The folder this version writes to: `version_N`, or the name.
    pub fn dir_name(&self) -> String {
        match self {
            Version::Number(n) => format!("version_{n}"),
            Version::Named(s) => s.clone(),
        }
    }
}

impl From<u64> for Version {
    fn from(n: u64) -> Self {
        Version::Number(n)
    }
}

impl From<&str> for Version {
    fn from(s: &str) -> Self {
        Version::Named(s.to_owned())
    }
}

impl From<String> for Version {
    fn from(s: String) -> Self {
        Version::Named(s)
    }
}

/// Where a directory logger writes: `<save_dir>/<name>/<version>`. The trainer fills in what
/// was left unset when a run starts ([`LogLocation::resolve`]): `save_dir` defaults to the
/// trainer's `default_root_dir`, `version` to the next free `version_N`. Once resolved it
/// stays fixed for the logger's life (later runs of the same trainer log into the same
/// directory, as Lightning's loggers do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLocation {
    save_dir: Option<PathBuf>,
    name: String,
    version: Option<Version>,
    log_dir: Option<PathBuf>,
}

impl Default for LogLocation {
    fn default() -> Self {
        LogLocation::new(None, "lightning_logs", None)
    }
}

impl LogLocation {
    /// A location; `None` leaves the save directory or the version for the trainer to choose.
    /// An empty `name` writes versions directly under `save_dir`.
    pub fn new(
        save_dir: Option<PathBuf>,
        name: impl Into<String>,
        version: Option<Version>,
    ) -> Self {
        LogLocation {
            save_dir,
            name: name.into(),
            version,
            log_dir: None,
        }
    }

    /// The save directory (`None` until resolved when not given).
    pub fn save_dir(&self) -> Option<&Path> {
        self.save_dir.as_deref()
    }

    /// The experiment name (default `lightning_logs`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version (`None` until resolved when not given).
    pub fn version(&self) -> Option<&Version> {
        self.version.as_ref()
    }

    /// `<save_dir>/<name>/<version>`, once resolved.
    pub fn log_dir(&self) -> Option<&Path> {
        self.log_dir.as_deref()
    }

    pub(crate) fn set_save_dir(&mut self, dir: PathBuf) {
        self.save_dir = Some(dir);
    }

    pub(crate) fn set_name(&mut self, name: String) {
        self.name = name;
    }

    pub(crate) fn set_version(&mut self, version: Version) {
        self.version = Some(version);
    }

    /// `<save_dir>/<name>`: the folder holding the versions.
    pub(crate) fn root(&self, save_dir: &Path) -> PathBuf {
        match self.name.is_empty() {
            true => save_dir.to_owned(),
            false => save_dir.join(&self.name),
        }
    }

    /// Fills in the save directory (`default_save_dir`) and the version (the next free
    /// `version_N` under `<save_dir>/<name>`) if unset. `chosen` holds the versions chosen so
    /// far in this resolution, by root: loggers sharing a root share the version.
    pub fn resolve(&mut self, default_save_dir: &Path, chosen: &mut HashMap<PathBuf, u64>) {
        if self.log_dir.is_some() {
            return;
        }
        let save_dir = self
            .save_dir
            .get_or_insert_with(|| default_save_dir.to_owned())
            .clone();
        let root = self.root(&save_dir);
        let version = match &self.version {
            Some(v) => v.clone(),
            None => {
                let n = *chosen
                    .entry(root.clone())
                    .or_insert_with(|| next_version(&root));
                Version::Number(n)
            }
        };
        self.log_dir = Some(root.join(version.dir_name()));
        self.version = Some(version);
    }
}

/// The next free version under `root` (Lightning's `_get_next_version`): one more than the
/// largest `N` of the `version_N` directories there, 0 when there are none. `root` may be an
/// object-storage URL (its `version_N/` prefixes count).
pub fn next_version(root: &Path) -> u64 {
    crate::storage::list_dirs(root)
        .unwrap_or_default()
        .iter()
        .filter_map(|name| name.strip_prefix("version_")?.parse::<u64>().ok())
        .max()
        .map_or(0, |m| m + 1)
}

/// Lightning's `Logger`: what the trainer calls with hyperparameters and metrics. Only
/// global rank 0 has loggers in a DDP run.
///
/// The required methods are the writes; a logger that writes to a directory returns its
/// [`LogLocation`] so the trainer can choose the version, and the other accessors follow.
pub trait Logger: Send {
    /// Where this logger writes, for a logger with a directory (`None` otherwise).
    fn location(&self) -> Option<&LogLocation>;

    /// The location, for the trainer to resolve when a run starts.
    fn location_mut(&mut self) -> Option<&mut LogLocation>;

    /// Records the run's hyperparameters (the module's `hparams`, a dict).
    fn log_hyperparams(&mut self, params: &Value) -> Result<(), LoggerError>;

    /// Records `metrics` at `step`.
    fn log_metrics(&mut self, metrics: &Metrics, step: i64) -> Result<(), LoggerError>;

    /// Makes what was logged so far durable and visible (writes or flushes files).
    fn save(&mut self) -> Result<(), LoggerError> {
        Ok(())
    }

    /// The run ended with `status`: save and release what the logger holds open.
    fn finalize(&mut self, status: RunStatus) -> Result<(), LoggerError> {
        let _ = status;
        self.save()
    }

    /// The experiment name (`lightning_logs` by default; empty for a logger without one).
    fn name(&self) -> &str {
        self.location().map_or("", |l| l.name())
    }

    /// The version, once chosen.
    fn version(&self) -> Option<&Version> {
        self.location().and_then(|l| l.version())
    }

    /// The save directory, once chosen.
    fn save_dir(&self) -> Option<&Path> {
        self.location().and_then(|l| l.save_dir())
    }

    /// This run's directory, `<save_dir>/<name>/<version>`, once chosen.
    fn log_dir(&self) -> Option<&Path> {
        self.location().and_then(|l| l.log_dir())
    }
}

/// The trainer's `logger` setting: Lightning's `logger=True | False | Logger | [Logger, ..]`.
/// Built by `From`: `true` (the default: a [`CsvLogger`] in `default_root_dir`, a fresh
/// version each `fit`), `false` (no logging), one logger, a tuple of two or three, or a
/// `Vec<Box<dyn Logger>>`.
#[derive(Default)]
pub enum Loggers {
    /// `logger=True`: a [`CsvLogger`] under `default_root_dir`, a new version each `fit`.
    #[default]
    Default,
    /// `logger=False`: nothing is logged.
    Off,
    /// These loggers, in order (the first one's directory is [`Trainer::log_dir`]).
    ///
    /// [`Trainer::log_dir`]: crate::trainer::Trainer::log_dir
    Given(Vec<Box<dyn Logger>>),
}

impl fmt::Debug for Loggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loggers::Default => f.write_str("Default"),
            Loggers::Off => f.write_str("Off"),
            Loggers::Given(l) => write!(f, "Given({} loggers)", l.len()),
        }
    }
}

impl From<bool> for Loggers {
    fn from(on: bool) -> Self {
        match on {
            true => Loggers::Default,
            false => Loggers::Off,
        }
    }
}

impl From<Vec<Box<dyn Logger>>> for Loggers {
    fn from(v: Vec<Box<dyn Logger>>) -> Self {
        Loggers::Given(v)
    }
}

impl From<Box<dyn Logger>> for Loggers {
    fn from(l: Box<dyn Logger>) -> Self {
        Loggers::Given(vec![l])
    }
}

impl From<CsvLogger> for Loggers {
    fn from(l: CsvLogger) -> Self {
        Loggers::Given(vec![Box::new(l)])
    }
}

impl From<TensorBoardLogger> for Loggers {
    fn from(l: TensorBoardLogger) -> Self {
        Loggers::Given(vec![Box::new(l)])
    }
}

impl<A: Logger + 'static, B: Logger + 'static> From<(A, B)> for Loggers {
    fn from((a, b): (A, B)) -> Self {
        Loggers::Given(vec![Box::new(a), Box::new(b)])
    }
}

impl<A: Logger + 'static, B: Logger + 'static, C: Logger + 'static> From<(A, B, C)> for Loggers {
    fn from((a, b, c): (A, B, C)) -> Self {
        Loggers::Given(vec![Box::new(a), Box::new(b), Box::new(c)])
    }
}

/// Writes `hparams.yaml` into `dir` as Lightning's `save_hparams_to_yaml` (`{}` when empty).
pub(crate) fn write_hparams_yaml(dir: &Path, hparams: &Value) -> Result<(), LoggerError> {
    create_dir(dir)?;
    let path = dir.join("hparams.yaml");
    let text = if hparams.as_dict().is_some_and(|d| d.is_empty()) {
        "{}\n".to_owned()
    } else {
        crate::hparams::to_yaml(hparams)
    };
    fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), LoggerError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating log directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggers_sharing_a_root_share_the_next_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("lightning_logs/version_3")).unwrap();
        fs::create_dir_all(dir.path().join("lightning_logs/version_x")).unwrap();
        let mut chosen = HashMap::new();
        let mut a = LogLocation::default();
        let mut b = LogLocation::default();
        let mut c = LogLocation::new(None, "other", None);
        let mut d = LogLocation::new(None, "lightning_logs", Some("run".into()));
        for l in [&mut a, &mut b, &mut c, &mut d] {
            l.resolve(dir.path(), &mut chosen);
        }
        assert_eq!(
            a.log_dir(),
            Some(&*dir.path().join("lightning_logs/version_4"))
        );
        assert_eq!(b.log_dir(), a.log_dir());
        assert_eq!(c.log_dir(), Some(&*dir.path().join("other/version_0")));
        assert_eq!(d.log_dir(), Some(&*dir.path().join("lightning_logs/run")));
        // fixed once resolved
        a.resolve(Path::new("/elsewhere"), &mut HashMap::new());
        assert_eq!(b.log_dir(), a.log_dir());
    }
}
