//! Lightning's `CSVLogger`: `metrics.csv` and `hparams.yaml` in `<save_dir>/<name>/version_N`.
//! Cells as Python's csv module writes `str(value)` (floats via [`crate::pyfmt::repr_float`]),
//! `\r\n` line ends, minimal quoting; the header is every key seen, sorted.

use super::Version;
use super::{create_dir, io_err, write_hparams_yaml, LogLocation, Logger, LoggerError, Metrics};
use crate::value::Value;
use indexmap::IndexMap;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Lightning's `CSVLogger`: `<save_dir>/lightning_logs/version_N/{metrics.csv,hparams.yaml}`.
/// The rows are kept in memory and the whole file is rewritten on each [`Logger::save`] (the
/// trainer saves at the end of each epoch and of each run).
///
/// ```
/// use lightning_core::loggers::CsvLogger;
/// // `save_dir` defaults to the trainer's `default_root_dir`, the version to the next free one
/// let csv = CsvLogger::default().with_name("runs").with_version(3);
/// ```
#[derive(Debug, Default)]
pub struct CsvLogger {
    location: LogLocation,
    rows: Vec<IndexMap<String, String>>,
    keys: BTreeSet<String>,
}

impl CsvLogger {
    /// A CSV logger writing under `save_dir` (Lightning's `CSVLogger(save_dir)`).
    pub fn new(save_dir: impl AsRef<Path>) -> Self {
        let mut l = CsvLogger::default();
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

    fn dir(&self) -> Result<&Path, LoggerError> {
        self.location.log_dir().ok_or(LoggerError::NoLogDir {
            logger: "CsvLogger",
        })
    }
}

impl Logger for CsvLogger {
    fn location(&self) -> Option<&LogLocation> {
        Some(&self.location)
    }

    fn location_mut(&mut self) -> Option<&mut LogLocation> {
        Some(&mut self.location)
    }

    /// Writes `hparams.yaml`.
    fn log_hyperparams(&mut self, params: &Value) -> Result<(), LoggerError> {
        write_hparams_yaml(self.dir()?, params)
    }

    /// Adds a row: the metrics as Python's `str(value)` and `step`.
    fn log_metrics(&mut self, metrics: &Metrics, step: i64) -> Result<(), LoggerError> {
        let mut row: IndexMap<String, String> = metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        row.insert("step".into(), step.to_string());
        self.keys.extend(row.keys().cloned());
        self.rows.push(row);
        Ok(())
    }

    /// Writes `metrics.csv` (header: every key seen, sorted, as CSVLogger).
    fn save(&mut self) -> Result<(), LoggerError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut out = String::new();
        out.push_str(
            &self
                .keys
                .iter()
                .map(|k| csv_field(k))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str(CSV_LINE_END);
        for row in &self.rows {
            let cells: Vec<String> = self
                .keys
                .iter()
                .map(|k| row.get(k).map(|v| csv_field(v)).unwrap_or_default())
                .collect();
            out.push_str(&cells.join(","));
            out.push_str(CSV_LINE_END);
        }
        let dir: PathBuf = self.dir()?.to_owned();
        create_dir(&dir)?;
        let path = dir.join("metrics.csv");
        fs::write(&path, out).map_err(io_err(format!("writing {}", path.display())))
    }
}

/// The line end of Python's csv module (`excel` dialect), which `CSVLogger` uses.
const CSV_LINE_END: &str = "\r\n";

/// A cell as Python's csv module writes it with `QUOTE_MINIMAL`: quoted (with `"` doubled)
/// when it holds the delimiter, the quote or a line-end character.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
