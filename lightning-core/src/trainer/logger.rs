//! Logged metrics: per-step values, epoch means, `callback_metrics`, and the CSV logger that
//! writes `metrics.csv` and `hparams.yaml` into `lightning_logs/version_N` as Lightning's
//! `CSVLogger` does: cells as Python's csv module writes `str(value)` (floats via
//! [`crate::pyfmt::repr_float`]), `\r\n` line ends, minimal quoting.

use crate::error::{Error, Result};
use crate::lightning_module::{Logged, Stage};
use crate::pyfmt;
use crate::value::Value;
use indexmap::IndexMap;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// An epoch-mean accumulator for one metric.
#[derive(Clone, Debug, Default)]
struct Mean {
    sum: f64,
    weight: f64,
    forked: bool,
    prog_bar: bool,
}

/// Metrics of the current run, as Lightning's logger connector keeps them.
#[derive(Debug, Default)]
pub(crate) struct MetricStore {
    /// What callbacks see (`trainer.callback_metrics`).
    pub callback_metrics: IndexMap<String, f64>,
    /// What the progress bar shows.
    pub prog_bar: IndexMap<String, f64>,
    /// Per-step values of the last step, for the logger.
    pub step_row: IndexMap<String, f64>,
    /// Epoch accumulators: training, and evaluation (validation inside an epoch keeps its own).
    means: [IndexMap<String, Mean>; 2],
}

fn bucket(stage: Stage) -> usize {
    usize::from(stage != Stage::Train)
}

impl MetricStore {
    /// Records one step's `log` calls; `batch_size` weights the epoch means.
    pub fn record_step(&mut self, logged: &[Logged], stage: Stage, batch_size: i64) {
        self.step_row.clear();
        for l in logged {
            let forked = l.on_step && l.on_epoch;
            if l.on_step {
                let key = if forked {
                    format!("{}_step", l.name)
                } else {
                    l.name.clone()
                };
                self.callback_metrics.insert(l.name.clone(), l.value);
                if forked {
                    self.callback_metrics.insert(key.clone(), l.value);
                }
                if l.prog_bar {
                    self.prog_bar.insert(key.clone(), l.value);
                }
                self.step_row.insert(key, l.value);
            }
            if l.on_epoch {
                let m = self.means[bucket(stage)].entry(l.name.clone()).or_default();
                let w = batch_size.max(1) as f64;
                m.sum += l.value * w;
                m.weight += w;
                m.forked = forked;
                m.prog_bar = l.prog_bar;
            }
        }
    }

    /// Ends an epoch (or a validation/test run): turns the accumulated means into metrics and
    /// returns the row for the logger.
    pub fn reduce_epoch(&mut self, stage: Stage) -> IndexMap<String, f64> {
        let mut row = IndexMap::new();
        for (name, m) in self.means[bucket(stage)].drain(..) {
            let v = if m.weight > 0.0 {
                m.sum / m.weight
            } else {
                f64::NAN
            };
            let key = if m.forked {
                format!("{name}_epoch")
            } else {
                name.clone()
            };
            self.callback_metrics.insert(name, v);
            if m.forked {
                self.callback_metrics.insert(key.clone(), v);
            }
            if m.prog_bar {
                self.prog_bar.insert(key.clone(), v);
            }
            row.insert(key, v);
        }
        row
    }
}

/// Lightning's `CSVLogger`: `<root>/lightning_logs/version_N/{metrics.csv,hparams.yaml}`.
#[derive(Debug)]
pub(crate) struct CsvLogger {
    dir: PathBuf,
    rows: Vec<IndexMap<String, String>>,
    keys: BTreeSet<String>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl CsvLogger {
    /// The next free `version_N` under `<root>/lightning_logs` (created on the first write).
    pub fn new_version(root: &Path) -> Self {
        let base = root.join("lightning_logs");
        let next = match fs::read_dir(&base) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("version_")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .map_or(0, |m| m + 1),
            Err(_) => 0,
        };
        let dir = base.join(format!("version_{next}"));
        CsvLogger {
            dir,
            rows: Vec::new(),
            keys: BTreeSet::new(),
        }
    }

    /// `<root>/lightning_logs/version_N`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a row as Lightning's logger connector and `CSVLogger` do: a logged `step` metric
    /// replaces `step` (as `int(value)`) and adds no `epoch`; otherwise `epoch` is added
    /// unless logged. Values are written as Python's `str(float)`, `epoch`/`step` as ints.
    pub fn log_row(&mut self, metrics: &IndexMap<String, f64>, epoch: i64, step: i64) {
        if metrics.is_empty() {
            return;
        }
        let mut row: IndexMap<String, String> = metrics
            .iter()
            .filter(|(k, _)| *k != "step")
            .map(|(k, v)| (k.clone(), pyfmt::repr_float(*v)))
            .collect();
        let step = match metrics.get("step") {
            // Python's `int(float)`, truncating toward zero (a NaN or infinite step raises
            // there; here it saturates).
            Some(s) => *s as i64,
            None => {
                row.entry("epoch".into()).or_insert(epoch.to_string());
                step
            }
        };
        row.insert("step".into(), step.to_string());
        self.keys.extend(row.keys().cloned());
        self.rows.push(row);
    }

    /// Adds a row as `logger.log_metrics(metrics, step=step)` does: the metrics and `step`,
    /// no `epoch` (Lightning's evaluation step metrics and `LearningRateMonitor`).
    pub fn log_metrics_at(&mut self, metrics: &IndexMap<String, f64>, step: i64) {
        if metrics.is_empty() {
            return;
        }
        let mut row: IndexMap<String, String> = metrics
            .iter()
            .map(|(k, v)| (k.clone(), pyfmt::repr_float(*v)))
            .collect();
        row.insert("step".into(), step.to_string());
        self.keys.extend(row.keys().cloned());
        self.rows.push(row);
    }

    /// Writes `metrics.csv` (header: every key seen, sorted, as CSVLogger).
    pub fn save(&self) -> Result<()> {
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
        self.create_dir()?;
        let path = self.dir.join("metrics.csv");
        fs::write(&path, out).map_err(io_err(format!("writing {}", path.display())))
    }

    fn create_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(io_err(format!(
            "creating log directory {}",
            self.dir.display()
        )))
    }

    /// Writes `hparams.yaml`.
    pub fn log_hparams(&self, hparams: &Value) -> Result<()> {
        self.create_dir()?;
        let path = self.dir.join("hparams.yaml");
        let text = if hparams.as_dict().is_some_and(|d| d.is_empty()) {
            "{}\n".to_owned()
        } else {
            crate::hparams::to_yaml(hparams)
        };
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(name: &str, value: f64, on_step: bool, on_epoch: bool) -> Logged {
        Logged {
            name: name.into(),
            value,
            prog_bar: false,
            on_step,
            on_epoch,
            sync_dist: false,
        }
    }

    #[test]
    fn forked_metrics_get_step_and_epoch_keys_and_weighted_means() {
        let mut m = MetricStore::default();
        m.record_step(&[logged("loss", 1.0, true, true)], Stage::Train, 2);
        assert_eq!(m.step_row.keys().collect::<Vec<_>>(), ["loss_step"]);
        m.record_step(&[logged("loss", 4.0, true, true)], Stage::Train, 1);
        assert!(m.reduce_epoch(Stage::Validate).is_empty());
        let row = m.reduce_epoch(Stage::Train);
        assert_eq!(row["loss_epoch"], 2.0);
        assert_eq!(m.callback_metrics["loss"], 2.0);
        assert_eq!(m.callback_metrics["loss_step"], 4.0);
    }

    #[test]
    fn csv_has_sorted_header_and_python_floats() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = CsvLogger::new_version(dir.path());
        assert!(l.dir().ends_with("lightning_logs/version_0"));
        l.log_row(&[("val_loss".to_string(), 1.0)].into_iter().collect(), 0, 3);
        l.log_row(&[("a".to_string(), 0.5)].into_iter().collect(), 1, 7);
        l.save().unwrap();
        let text = fs::read_to_string(l.dir().join("metrics.csv")).unwrap();
        assert_eq!(text, "a,epoch,step,val_loss\r\n,0,3,1.0\r\n0.5,1,7,\r\n");
        let l2 = CsvLogger::new_version(dir.path());
        assert!(l2.dir().ends_with("version_1"));
    }

    /// `metrics.csv` cells for a set of floats, as CPython 3.11's csv module writes `str(x)`
    /// (facts printed by `python3 -c 'import csv,io; ...'`: `csv.DictWriter` over these values).
    #[test]
    fn csv_floats_are_pythons_str() {
        let cases: &[(f64, &str)] = &[
            (1e-5, "1e-05"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.0, "123456789.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (-0.0, "-0.0"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (2.5e-300, "2.5e-300"),
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::from(0.1f32), "0.10000000149011612"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut l = CsvLogger::new_version(dir.path());
        for (x, _) in cases {
            l.log_row(&[("a".to_string(), *x)].into_iter().collect(), 0, 1);
        }
        l.save().unwrap();
        let text = fs::read_to_string(l.dir().join("metrics.csv")).unwrap();
        let mut want = String::from("a,epoch,step\r\n");
        for (_, s) in cases {
            want.push_str(&format!("{s},0,1\r\n"));
        }
        assert_eq!(text, want);
    }

    /// Lightning's logger connector: a logged `step` becomes the step (`int(value)`) and no
    /// `epoch` is added; a logged `epoch` is kept; csv quoting is minimal.
    #[test]
    fn logged_step_and_epoch_and_quoting_follow_lightning() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = CsvLogger::new_version(dir.path());
        l.log_row(&[("step".to_string(), 7.9)].into_iter().collect(), 3, 100);
        l.log_row(&[("epoch".to_string(), 2.0)].into_iter().collect(), 3, 101);
        l.log_row(
            &[("a,\"b\"".to_string(), 0.5)].into_iter().collect(),
            3,
            102,
        );
        l.save().unwrap();
        let text = fs::read_to_string(l.dir().join("metrics.csv")).unwrap();
        assert_eq!(
            text,
            "\"a,\"\"b\"\"\",epoch,step\r\n,,7\r\n,2.0,101\r\n0.5,3,102\r\n"
        );
    }
}
