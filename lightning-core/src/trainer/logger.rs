//! Logged metrics: per-step values, epoch means, `callback_metrics`; and the run's loggers
//! ([`crate::loggers`]) behind Lightning's logger connector (which rows reach them, when).

use crate::error::Result;
use crate::lightning_module::{Logged, Stage};
use crate::loggers::{
    next_version, CsvLogger, Logger, LoggerError, Loggers, Metrics, RunStatus, Scalar,
};
use crate::value::Value;
use indexmap::IndexMap;
use std::collections::HashMap;
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

    /// The epoch accumulators of `stage` as `[sum, weight]` pairs in name order, handed to
    /// `reduce` (which sums them over the ranks of a sharded evaluation) and written back, so
    /// the epoch means become the means over every rank's samples.
    pub fn sync_epoch(
        &mut self,
        stage: Stage,
        reduce: impl FnOnce(&mut [f64]) -> Result<()>,
    ) -> Result<()> {
        let means = &mut self.means[bucket(stage)];
        let mut names: Vec<String> = means.keys().cloned().collect();
        names.sort();
        let mut flat: Vec<f64> = names
            .iter()
            .flat_map(|k| means.get(k).map_or([0.0, 0.0], |m| [m.sum, m.weight]))
            .collect();
        reduce(&mut flat)?;
        for (k, pair) in names.iter().zip(flat.chunks(2)) {
            if let Some(m) = means.get_mut(k) {
                (m.sum, m.weight) = (pair[0], pair[1]);
            }
        }
        Ok(())
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

/// The trainer's loggers and Lightning's logger connector in front of them: which loggers a
/// run has (only global rank 0 logs), their directories, and the rows the connector builds
/// (`epoch` added, a logged `step` used as the step).
///
/// Loggers whose save directory is object storage (`s3://...`: `default_root_dir`, or a
/// logger's own `save_dir`) write into a local staging directory and every `save`/`finalize`
/// uploads what changed to `<save_dir>/<name>/version_N/` (versions numbered from what the
/// bucket holds), so the run's logs and its default checkpoint folder
/// (`<log_dir>/checkpoints`) are there, as with Lightning's fsspec paths.
#[derive(Default)]
pub(crate) struct Logging {
    /// `logger=True`: a fresh [`CsvLogger`] each `fit`.
    default_csv: bool,
    loggers: Vec<Box<dyn Logger>>,
    /// Whether this process logs in the current run.
    active: bool,
    /// Local staging of logs bound for object storage.
    mirror: Option<Mirror>,
}

/// Local staging of logs bound for object storage.
struct Mirror {
    staging: tempfile::TempDir,
    /// Each staged save directory (a folder of `staging`) and the URL it mirrors.
    roots: Vec<(PathBuf, PathBuf)>,
    /// What was uploaded: file -> (modified, length).
    uploaded: HashMap<PathBuf, (std::time::SystemTime, u64)>,
}

impl Mirror {
    fn new() -> Result<Self> {
        let staging = tempfile::Builder::new()
            .prefix("lightning-rs-logs-")
            .tempdir()
            .map_err(crate::loggers::io_err(
                "creating a local staging directory for the logs".into(),
            ))
            .map_err(crate::Error::from)?;
        Ok(Mirror {
            staging,
            roots: Vec::new(),
            uploaded: HashMap::new(),
        })
    }

    /// The local folder staging the save directory `remote` (the same one each time).
    fn stage(&mut self, remote: &Path) -> PathBuf {
        if let Some((local, _)) = self.roots.iter().find(|(_, r)| r == remote) {
            return local.clone();
        }
        let local = self
            .staging
            .path()
            .join(format!("save_dir_{}", self.roots.len()));
        self.roots.push((local.clone(), remote.to_owned()));
        local
    }

    /// The remote path of a local path under a staged save directory.
    fn remote_of(&self, local: &Path) -> Option<PathBuf> {
        self.roots.iter().find_map(|(l, remote)| {
            let rel = local.strip_prefix(l).ok()?;
            Some(match rel.as_os_str().is_empty() {
                true => remote.clone(),
                false => remote.join(rel),
            })
        })
    }

    /// Uploads every staged file that changed since its last upload.
    fn sync(&mut self) -> Result<(), LoggerError> {
        let mut stack = vec![self.staging.path().to_owned()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(crate::loggers::io_err(format!("listing {}", dir.display())))?;
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
                if self.uploaded.get(&path) == Some(&stamp) {
                    continue;
                }
                let Some(url) = self.remote_of(&path) else {
                    continue;
                };
                crate::storage::copy(&path, &url).map_err(LoggerError::Upload)?;
                self.uploaded.insert(path, stamp);
            }
        }
        Ok(())
    }
}

impl Logging {
    pub fn new(choice: Loggers) -> Self {
        let (default_csv, loggers) = match choice {
            Loggers::Default => (true, Vec::new()),
            Loggers::Off => (false, Vec::new()),
            Loggers::Given(l) => (false, l),
        };
        Logging {
            default_csv,
            loggers,
            active: false,
            mirror: None,
        }
    }

    /// A run starts: `fit` (`new_run`: the default CSV logger starts a new version) or an
    /// evaluation (which keeps the loggers of an earlier run). Chooses the directories (not
    /// created yet: callbacks resolve theirs from them in `setup`); loggers sharing a
    /// `save_dir` and name share the next free version.
    pub fn start(&mut self, default_root_dir: &Path, rank_zero: bool, new_run: bool) -> Result<()> {
        if !new_run && self.active {
            return Ok(());
        }
        self.active = rank_zero && (self.default_csv || !self.loggers.is_empty());
        if !self.active {
            return Ok(());
        }
        if self.default_csv && (new_run || self.loggers.is_empty()) {
            self.loggers = vec![Box::new(CsvLogger::default())];
        }
        let mut chosen = HashMap::new();
        let url = crate::storage::is_url;
        // The save directory each unresolved logger will get, when it is object storage.
        let remote_of = |loc: &crate::loggers::LogLocation| -> Option<PathBuf> {
            if loc.log_dir().is_some() {
                return None;
            }
            let dir = loc.save_dir().unwrap_or(default_root_dir);
            url(dir).then(|| dir.to_owned())
        };
        for l in &mut self.loggers {
            let Some(loc) = l.location_mut() else {
                continue;
            };
            let Some(remote) = remote_of(loc) else {
                continue;
            };
            // One staging directory for the trainer's life, made when first needed: loggers
            // of an earlier fit keep their directories in it.
            let m = match &mut self.mirror {
                Some(m) => m,
                None => self.mirror.insert(Mirror::new()?),
            };
            let local = m.stage(&remote);
            if loc.save_dir().is_some() {
                loc.set_save_dir(local.clone());
            }
            // new versions are numbered from what the bucket holds
            if loc.version().is_none() {
                chosen
                    .entry(loc.root(&local))
                    .or_insert_with(|| next_version(&loc.root(&remote)));
            }
        }
        let save_dir = match &mut self.mirror {
            Some(m) if url(default_root_dir) => m.stage(default_root_dir),
            _ => default_root_dir.to_owned(),
        };
        for l in &mut self.loggers {
            if let Some(loc) = l.location_mut() {
                loc.resolve(&save_dir, &mut chosen);
            }
        }
        Ok(())
    }

    /// The first logger's directory (`trainer.log_dir`; its object-storage URL when the logs
    /// are mirrored there).
    pub fn log_dir(&self) -> Option<PathBuf> {
        if !self.active {
            return None;
        }
        let dir = self.loggers.iter().find_map(|l| l.log_dir())?;
        Some(
            self.mirror
                .as_ref()
                .and_then(|m| m.remote_of(dir))
                .unwrap_or_else(|| dir.to_owned()),
        )
    }

    /// Uploads mirrored logs that changed.
    fn sync(&mut self) -> Result<()> {
        match (&mut self.mirror, self.active) {
            (Some(m), true) => m.sync().map_err(Into::into),
            _ => Ok(()),
        }
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut dyn Logger) -> Result<(), LoggerError>,
    ) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        for l in &mut self.loggers {
            f(l.as_mut())?;
        }
        Ok(())
    }

    /// Sends a row as Lightning's logger connector does: a logged `step` metric replaces
    /// `step` (as `int(value)`) and adds no `epoch`; otherwise `epoch` is added unless logged.
    pub fn log_row(
        &mut self,
        metrics: &IndexMap<String, f64>,
        epoch: i64,
        step: i64,
    ) -> Result<()> {
        if metrics.is_empty() {
            return Ok(());
        }
        let mut row: Metrics = metrics
            .iter()
            .filter(|(k, _)| *k != "step")
            .map(|(k, v)| (k.clone(), Scalar::Float(*v)))
            .collect();
        let step = match metrics.get("step") {
            // Python's `int(float)`, truncating toward zero (a NaN or infinite step raises
            // there; here it saturates).
            Some(s) => *s as i64,
            None => {
                row.entry("epoch".into()).or_insert(Scalar::Int(epoch));
                step
            }
        };
        self.each(|l| l.log_metrics(&row, step))
    }

    /// Sends metrics as `logger.log_metrics(metrics, step=step)` does: the metrics and `step`,
    /// no `epoch` (Lightning's evaluation step metrics and `LearningRateMonitor`).
    pub fn log_metrics_at(&mut self, metrics: &IndexMap<String, f64>, step: i64) -> Result<()> {
        if metrics.is_empty() {
            return Ok(());
        }
        let row: Metrics = metrics
            .iter()
            .map(|(k, v)| (k.clone(), Scalar::Float(*v)))
            .collect();
        self.each(|l| l.log_metrics(&row, step))
    }

    /// Lightning's `_log_hyperparams`: every logger's `log_hyperparams`, then `save`.
    pub fn log_hyperparams(&mut self, hparams: &Value) -> Result<()> {
        self.each(|l| {
            l.log_hyperparams(hparams)?;
            l.save()
        })?;
        self.sync()
    }

    pub fn save(&mut self) -> Result<()> {
        self.each(|l| l.save())?;
        self.sync()
    }

    /// The run ended with `run`: every logger's `finalize` with `success` or `failed` (all of
    /// them, the first error returned).
    pub fn finalize<T>(&mut self, run: &Result<T>) -> Result<()> {
        let status = match run {
            Ok(_) => RunStatus::Success,
            Err(_) => RunStatus::Failed,
        };
        let mut first = Ok(());
        let _ = self.each(|l| {
            if let Err(e) = l.finalize(status)
                && first.is_ok()
            {
                first = Err(e);
            }
            Ok(())
        });
        first?;
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn csv_run(dir: &Path) -> Logging {
        let mut l = Logging::new(Loggers::Default);
        l.start(dir, true, true).unwrap();
        l
    }

    fn read_csv(l: &Logging) -> String {
        fs::read_to_string(l.log_dir().unwrap().join("metrics.csv")).unwrap()
    }

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
        let mut l = csv_run(dir.path());
        assert!(l.log_dir().unwrap().ends_with("lightning_logs/version_0"));
        l.log_row(&[("val_loss".to_string(), 1.0)].into_iter().collect(), 0, 3)
            .unwrap();
        l.log_row(&[("a".to_string(), 0.5)].into_iter().collect(), 1, 7)
            .unwrap();
        l.save().unwrap();
        let text = read_csv(&l);
        assert_eq!(text, "a,epoch,step,val_loss\r\n,0,3,1.0\r\n0.5,1,7,\r\n");
        let l2 = csv_run(dir.path());
        assert!(l2.log_dir().unwrap().ends_with("version_1"));
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
        let mut l = csv_run(dir.path());
        for (x, _) in cases {
            l.log_row(&[("a".to_string(), *x)].into_iter().collect(), 0, 1)
                .unwrap();
        }
        l.save().unwrap();
        let text = read_csv(&l);
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
        let mut l = csv_run(dir.path());
        l.log_row(&[("step".to_string(), 7.9)].into_iter().collect(), 3, 100)
            .unwrap();
        l.log_row(&[("epoch".to_string(), 2.0)].into_iter().collect(), 3, 101)
            .unwrap();
        l.log_row(
            &[("a,\"b\"".to_string(), 0.5)].into_iter().collect(),
            3,
            102,
        )
        .unwrap();
        l.save().unwrap();
        let text = read_csv(&l);
        assert_eq!(
            text,
            "\"a,\"\"b\"\"\",epoch,step\r\n,,7\r\n,2.0,101\r\n0.5,3,102\r\n"
        );
    }
}
