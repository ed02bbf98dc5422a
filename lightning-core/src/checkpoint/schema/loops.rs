//! Lightning's `loops` entry: the progress trackers of the fit, validate, test and predict
//! loops, in Lightning 2.6.6's layout.

use super::{Fields, SchemaError};
use crate::value::Value;

/// One of Lightning's progress trackers (`_ReadyCompletedTracker`, `_StartedTracker`,
/// `_ProcessedTracker`): the counters a tracker kind lacks are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracker {
    /// `ready`.
    pub ready: i64,
    /// `completed`.
    pub completed: i64,
    /// `started` (started and processed trackers).
    pub started: Option<i64>,
    /// `processed` (processed trackers).
    pub processed: Option<i64>,
}

impl Tracker {
    /// A `_ReadyCompletedTracker`.
    pub fn ready_completed(ready: i64, completed: i64) -> Self {
        Tracker {
            ready,
            completed,
            started: None,
            processed: None,
        }
    }

    /// A `_StartedTracker` with `ready == started`.
    pub fn started(started: i64, completed: i64) -> Self {
        Tracker {
            started: Some(started),
            ..Tracker::ready_completed(started, completed)
        }
    }

    /// A `_ProcessedTracker` with `ready == started == processed`.
    pub fn processed(processed: i64, completed: i64) -> Self {
        Tracker {
            processed: Some(processed),
            ..Tracker::started(processed, completed)
        }
    }

    pub(super) fn to_value(self) -> Value {
        let mut d = Value::dict();
        d.insert("ready", self.ready);
        d.insert("completed", self.completed);
        if let Some(s) = self.started {
            d.insert("started", s);
        }
        if let Some(p) = self.processed {
            d.insert("processed", p);
        }
        d
    }

    pub(super) fn from_value(v: &Value, key: &str) -> Result<Self, SchemaError> {
        let f = Fields::of(v, key)?;
        Ok(Tracker {
            ready: f.int_or_zero("ready")?,
            completed: f.int_or_zero("completed")?,
            started: f.int("started")?,
            processed: f.int("processed")?,
        })
    }
}

/// Lightning's `_Progress` (`total` since the loop was created, `current` since it last
/// reset), with `is_last_batch` for batch progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// `total`.
    pub total: Tracker,
    /// `current`.
    pub current: Tracker,
    /// `is_last_batch` (`_BatchProgress` only).
    pub is_last_batch: Option<bool>,
}

impl Progress {
    /// A progress with both trackers of the same kind.
    pub fn new(total: Tracker, current: Tracker) -> Self {
        Progress {
            total,
            current,
            is_last_batch: None,
        }
    }

    /// A `_BatchProgress`.
    pub fn batches(total: Tracker, current: Tracker, is_last_batch: bool) -> Self {
        Progress {
            is_last_batch: Some(is_last_batch),
            ..Progress::new(total, current)
        }
    }

    pub(super) fn to_value(self) -> Value {
        let mut d = Value::dict();
        d.insert("total", self.total.to_value());
        d.insert("current", self.current.to_value());
        if let Some(b) = self.is_last_batch {
            d.insert("is_last_batch", b);
        }
        d
    }

    pub(super) fn from_value(v: &Value, key: &str) -> Result<Self, SchemaError> {
        let f = Fields::of(v, key)?;
        let tracker = |k: &str| {
            f.get(k).map_or(Ok(Tracker::default()), |x| {
                Tracker::from_value(x, &f.path(k))
            })
        };
        Ok(Progress {
            total: tracker("total")?,
            current: tracker("current")?,
            is_last_batch: f.boolean("is_last_batch")?,
        })
    }
}

/// The fit loop's progress as Lightning 2.6 saves it (`loops.fit_loop`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FitLoop {
    /// `epoch_progress`.
    pub epoch_progress: Progress,
    /// `epoch_loop.state_dict._batches_that_stepped`.
    pub batches_that_stepped: i64,
    /// `epoch_loop.batch_progress`.
    pub batch_progress: Progress,
    /// `epoch_loop.scheduler_progress`.
    pub scheduler_progress: Progress,
    /// `epoch_loop.automatic_optimization.optim_progress.optimizer.step`.
    pub optimizer_step: Progress,
    /// `epoch_loop.automatic_optimization.optim_progress.optimizer.zero_grad`.
    pub optimizer_zero_grad: Progress,
    /// `epoch_loop.manual_optimization.optim_step_progress`.
    pub manual_optim_step: Progress,
    /// `epoch_loop.val_loop.batch_progress`.
    pub val_batch_progress: Progress,
    /// `state_dict.combined_loader`: the state of each stateful training loader (Lightning
    /// writes it for loaders with `state_dict`, e.g. torchdata's `StatefulDataLoader`; we
    /// write our loader's when a checkpoint is saved mid-epoch).
    pub combined_loader: Option<Vec<Value>>,
}

const EPOCH_LOOP: &str = "epoch_loop";
const AUTO: &str = "epoch_loop.automatic_optimization";
const MANUAL: &str = "epoch_loop.manual_optimization";

impl FitLoop {
    fn to_value(&self) -> Value {
        let mut fit = Value::dict();
        let mut state = Value::dict();
        if let Some(loaders) = &self.combined_loader {
            state.insert("combined_loader", Value::List(loaders.clone()));
        }
        fit.insert("state_dict", state);
        let mut stepped = Value::dict();
        stepped.insert("_batches_that_stepped", self.batches_that_stepped);
        fit.insert(format!("{EPOCH_LOOP}.state_dict"), stepped);
        fit.insert(
            format!("{EPOCH_LOOP}.batch_progress"),
            self.batch_progress.to_value(),
        );
        fit.insert(
            format!("{EPOCH_LOOP}.scheduler_progress"),
            self.scheduler_progress.to_value(),
        );
        fit.insert(format!("{AUTO}.state_dict"), Value::dict());
        let mut optimizer = Value::dict();
        optimizer.insert("step", self.optimizer_step.to_value());
        optimizer.insert("zero_grad", self.optimizer_zero_grad.to_value());
        let mut optim = Value::dict();
        optim.insert("optimizer", optimizer);
        fit.insert(format!("{AUTO}.optim_progress"), optim);
        fit.insert(format!("{MANUAL}.state_dict"), Value::dict());
        fit.insert(
            format!("{MANUAL}.optim_step_progress"),
            self.manual_optim_step.to_value(),
        );
        fit.insert(format!("{EPOCH_LOOP}.val_loop.state_dict"), Value::dict());
        fit.insert(
            format!("{EPOCH_LOOP}.val_loop.batch_progress"),
            self.val_batch_progress.to_value(),
        );
        fit.insert("epoch_progress", self.epoch_progress.to_value());
        fit
    }

    fn from_value(v: &Value) -> Result<Self, SchemaError> {
        const AT: &str = "loops.fit_loop";
        let f = Fields::of(v, AT)?;
        let progress = |k: &str| {
            f.get(k).map_or(Ok(Progress::default()), |x| {
                Progress::from_value(x, &f.path(k))
            })
        };
        let stepped = match f.get(&format!("{EPOCH_LOOP}.state_dict")) {
            Some(s) => Fields::of(s, "loops.fit_loop.epoch_loop.state_dict")?
                .int_or_zero("_batches_that_stepped")?,
            None => 0,
        };
        let (step, zero_grad) = match f.get(&format!("{AUTO}.optim_progress")) {
            Some(o) => {
                let key = format!("{AT}.{AUTO}.optim_progress");
                let opt = Fields::of(o, &key)?;
                match opt.get("optimizer") {
                    Some(x) => {
                        let key = format!("{key}.optimizer");
                        let x = Fields::of(x, &key)?;
                        let part = |k: &str| {
                            x.get(k).map_or(Ok(Progress::default()), |p| {
                                Progress::from_value(p, &x.path(k))
                            })
                        };
                        (part("step")?, part("zero_grad")?)
                    }
                    None => Default::default(),
                }
            }
            None => Default::default(),
        };
        let combined_loader = match f.get("state_dict") {
            Some(st) => match Fields::of(st, "loops.fit_loop.state_dict")?.get("combined_loader") {
                Some(Value::List(l)) | Some(Value::Tuple(l)) => Some(l.clone()),
                Some(_) => {
                    return Err(SchemaError::new(
                        format!("{AT}.state_dict.combined_loader"),
                        "expected a list of loader states",
                    ));
                }
                None => None,
            },
            None => None,
        };
        Ok(FitLoop {
            combined_loader,
            epoch_progress: progress("epoch_progress")?,
            batches_that_stepped: stepped,
            batch_progress: progress(&format!("{EPOCH_LOOP}.batch_progress"))?,
            scheduler_progress: progress(&format!("{EPOCH_LOOP}.scheduler_progress"))?,
            optimizer_step: step,
            optimizer_zero_grad: zero_grad,
            manual_optim_step: progress(&format!("{MANUAL}.optim_step_progress"))?,
            val_batch_progress: progress(&format!("{EPOCH_LOOP}.val_loop.batch_progress"))?,
        })
    }
}

/// Lightning's `loops` entry: the fit loop's progress and the evaluation loops' batch progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loops {
    /// `fit_loop`.
    pub fit: FitLoop,
    /// `validate_loop.batch_progress` (a `_BatchProgress`).
    pub validate: Progress,
    /// `test_loop.batch_progress` (a `_BatchProgress`).
    pub test: Progress,
    /// `predict_loop.batch_progress` (a `_Progress` of processed trackers).
    pub predict: Progress,
}

impl Loops {
    /// Lightning's `loops` with every counter at zero (a loop that never ran).
    pub fn zero() -> Self {
        let eval = Progress::batches(Tracker::processed(0, 0), Tracker::processed(0, 0), false);
        let rc = Progress::new(
            Tracker::ready_completed(0, 0),
            Tracker::ready_completed(0, 0),
        );
        Loops {
            fit: FitLoop {
                combined_loader: None,
                epoch_progress: Progress::new(Tracker::processed(0, 0), Tracker::processed(0, 0)),
                batches_that_stepped: 0,
                batch_progress: eval,
                scheduler_progress: rc,
                optimizer_step: rc,
                optimizer_zero_grad: Progress::new(Tracker::started(0, 0), Tracker::started(0, 0)),
                manual_optim_step: rc,
                val_batch_progress: eval,
            },
            validate: eval,
            test: eval,
            predict: Progress::new(Tracker::processed(0, 0), Tracker::processed(0, 0)),
        }
    }

    /// The `loops` dict, in Lightning 2.6.6's layout and key order.
    pub fn to_value(&self) -> Value {
        let mut loops = Value::dict();
        loops.insert("fit_loop", self.fit.to_value());
        for (name, p) in [
            ("validate_loop", self.validate),
            ("test_loop", self.test),
            ("predict_loop", self.predict),
        ] {
            let mut l = Value::dict();
            l.insert("state_dict", Value::dict());
            l.insert("batch_progress", p.to_value());
            loops.insert(name, l);
        }
        loops
    }

    /// Reads a `loops` dict (missing parts read as zero).
    pub fn from_value(v: &Value) -> Result<Self, SchemaError> {
        let f = Fields::of(v, "loops")?;
        let eval = |k: &str| -> Result<Progress, SchemaError> {
            match f.get(k) {
                None => Ok(Progress::default()),
                Some(l) => {
                    let key = f.path(k);
                    let l = Fields::of(l, &key)?;
                    l.get("batch_progress")
                        .map_or(Ok(Progress::default()), |p| {
                            Progress::from_value(p, &l.path("batch_progress"))
                        })
                }
            }
        };
        Ok(Loops {
            fit: f
                .get("fit_loop")
                .map_or(Ok(FitLoop::default()), FitLoop::from_value)?,
            validate: eval("validate_loop")?,
            test: eval("test_loop")?,
            predict: eval("predict_loop")?,
        })
    }
}
