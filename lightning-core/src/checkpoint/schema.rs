//! The one schema of a checkpoint: Lightning 2.6's top-level dict, typed.
//!
//! The trainer fills a [`Checkpoint`] and writes [`Checkpoint::to_value`]; resume, the
//! `load_from_checkpoint` loader, `lightning-ckpt` and the tests read files back with
//! [`Checkpoint::from_value`]. Keys, in Lightning's order: `epoch`, `global_step`,
//! `pytorch-lightning_version`, `state_dict`, `loops` ([`Loops`]), `callbacks`,
//! `optimizer_states`, `lr_schedulers`, [`PRECISION_KEY`] (the grad scaler), `hparams_name`,
//! `hyper_parameters`, the datamodule's state under its name, then our own [`RESUME_KEY`]
//! ([`ResumeState`]: what makes a resume bitwise exact), then any other key (a module's
//! `on_save_checkpoint` extras), in file order.

use crate::value::{Dict, Key, Value};

/// The Lightning version our files claim (`pytorch-lightning_version`); `load_from_checkpoint`
/// in Python skips its migrations for versions >= 2.0.
pub const LIGHTNING_VERSION: &str = "2.6.6";
/// Where Lightning's `MixedPrecision` plugin keeps the grad scaler's state (`16-mixed`).
pub const PRECISION_KEY: &str = "MixedPrecision";
/// Our extra top-level key: what an exact resume needs beyond Lightning's dict.
pub const RESUME_KEY: &str = "lightning_rs";

/// A checkpoint dict that does not have the shape Lightning's has.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("checkpoint key `{key}`: {msg}")]
pub struct SchemaError {
    /// The key (dotted path) that is missing or mistyped.
    pub key: String,
    /// What was expected and what was found.
    pub msg: String,
}

impl SchemaError {
    fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
        SchemaError {
            key: key.into(),
            msg: msg.into(),
        }
    }

    fn mistyped(key: &str, want: &str, found: &Value) -> Self {
        SchemaError::new(key, format!("expected {want}, found {}", found.type_name()))
    }
}

/// The parts of a Lightning checkpoint, typed; [`Checkpoint::to_value`] gives the dict
/// `trainer.save_checkpoint` writes, [`Checkpoint::from_value`] reads one.
///
/// ```
/// use lightning_core::checkpoint::schema::{Checkpoint, LIGHTNING_VERSION};
/// let mut c = Checkpoint { epoch: 2, global_step: 20, ..Default::default() };
/// c.state_dict.insert("w".into(), 1.5f64.into());
/// let v = c.to_value();
/// assert_eq!(v.get("pytorch-lightning_version").and_then(|x| x.as_str()), Some(LIGHTNING_VERSION));
/// assert_eq!(Checkpoint::from_value(&v)?, c);
/// # Ok::<(), lightning_core::checkpoint::schema::SchemaError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Finished epochs (`epoch`).
    pub epoch: i64,
    /// Optimizer steps taken (`global_step`).
    pub global_step: i64,
    /// `pytorch-lightning_version` (defaults to [`LIGHTNING_VERSION`] when writing).
    pub version: Option<String>,
    /// Module weights and buffers, PyTorch names (`state_dict`, an OrderedDict).
    pub state_dict: Dict,
    /// Loop progress (`loops`).
    pub loops: Option<Loops>,
    /// Callback states keyed by state key (`callbacks`); `None` in weights-only files.
    pub callbacks: Option<Dict>,
    /// One `torch.optim` state dict per optimizer (`optimizer_states`).
    pub optimizer_states: Option<Vec<Value>>,
    /// One scheduler `__dict__` per LR scheduler (`lr_schedulers`).
    pub lr_schedulers: Option<Vec<Value>>,
    /// The grad scaler's state of `16-mixed` ([`PRECISION_KEY`]).
    pub precision: Option<Value>,
    /// `hparams_name` (`"kwargs"` for `save_hyperparameters()` in `__init__`).
    pub hparams_name: Option<String>,
    /// `hyper_parameters` (a plain dict).
    pub hyper_parameters: Option<Dict>,
    /// A datamodule's state, under the datamodule's name (Lightning uses the class name).
    /// [`Checkpoint::from_value`] cannot tell this key from others: see
    /// [`Checkpoint::take_datamodule`].
    pub datamodule: Option<(String, Value)>,
    /// What an exact resume needs ([`RESUME_KEY`]); absent in Python Lightning's files.
    pub resume: Option<ResumeState>,
    /// Other top-level keys (a module's `on_save_checkpoint` extras), in order.
    pub extra: Dict,
}

const KNOWN: [&str; 12] = [
    "epoch",
    "global_step",
    "pytorch-lightning_version",
    "state_dict",
    "loops",
    "callbacks",
    "optimizer_states",
    "lr_schedulers",
    PRECISION_KEY,
    "hparams_name",
    "hyper_parameters",
    RESUME_KEY,
];

/// Typed access to a dict's entries, with errors that name the key.
struct Fields<'a> {
    d: &'a Dict,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value, prefix: &'a str) -> Result<Self, SchemaError> {
        v.as_dict()
            .map(|d| Fields { d, prefix })
            .ok_or_else(|| SchemaError::mistyped(prefix, "a dict", v))
    }
    fn path(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        match self.d.get(&Key::Str(k.to_owned())) {
            None | Some(Value::None) => None,
            Some(v) => Some(v),
        }
    }
    fn int(&self, k: &str) -> Result<Option<i64>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "an int", x))
            })
            .transpose()
    }
    fn int_or_zero(&self, k: &str) -> Result<i64, SchemaError> {
        Ok(self.int(k)?.unwrap_or(0))
    }
    fn float(&self, k: &str) -> Result<Option<f64>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a float", x))
            })
            .transpose()
    }
    fn boolean(&self, k: &str) -> Result<Option<bool>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_bool()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a bool", x))
            })
            .transpose()
    }
    fn string(&self, k: &str) -> Result<Option<String>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a str", x))
            })
            .transpose()
    }
    fn dict(&self, k: &str) -> Result<Option<Dict>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_dict()
                    .cloned()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a dict", x))
            })
            .transpose()
    }
    fn list(&self, k: &str) -> Result<Option<Vec<Value>>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_seq()
                    .map(<[Value]>::to_vec)
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a list", x))
            })
            .transpose()
    }
}

impl Checkpoint {
    /// The checkpoint dict, keys in Lightning's order; absent parts are left out.
    pub fn to_value(&self) -> Value {
        let mut d = Dict::new();
        let mut put = |k: &str, v: Value| {
            d.insert(Key::Str(k.to_owned()), v);
        };
        put("epoch", self.epoch.into());
        put("global_step", self.global_step.into());
        put(
            "pytorch-lightning_version",
            self.version.as_deref().unwrap_or(LIGHTNING_VERSION).into(),
        );
        put("state_dict", Value::OrderedDict(self.state_dict.clone()));
        if let Some(l) = &self.loops {
            put("loops", l.to_value());
        }
        if let Some(c) = &self.callbacks {
            put("callbacks", Value::Dict(c.clone()));
        }
        if let Some(o) = &self.optimizer_states {
            put("optimizer_states", Value::List(o.clone()));
        }
        if let Some(s) = &self.lr_schedulers {
            put("lr_schedulers", Value::List(s.clone()));
        }
        if let Some(p) = &self.precision {
            put(PRECISION_KEY, p.clone());
        }
        if let Some(h) = &self.hparams_name {
            put("hparams_name", h.as_str().into());
        }
        if let Some(h) = &self.hyper_parameters {
            put("hyper_parameters", Value::Dict(h.clone()));
        }
        if let Some((name, state)) = &self.datamodule {
            put(name, state.clone());
        }
        if let Some(r) = &self.resume {
            put(RESUME_KEY, r.to_value());
        }
        for (k, v) in &self.extra {
            d.insert(k.clone(), v.clone());
        }
        Value::Dict(d)
    }

    /// Reads a checkpoint dict; only `state_dict` is required. Errors name the bad key.
    pub fn from_value(v: &Value) -> Result<Self, SchemaError> {
        let f = Fields::of(v, "")?;
        let hparams = f.dict("hyper_parameters")?;
        Ok(Checkpoint {
            epoch: f.int_or_zero("epoch")?,
            global_step: f.int_or_zero("global_step")?,
            version: f.string("pytorch-lightning_version")?,
            state_dict: f.dict("state_dict")?.ok_or_else(|| {
                SchemaError::new("state_dict", "missing: this is not a model checkpoint")
            })?,
            loops: f.get("loops").map(Loops::from_value).transpose()?,
            callbacks: f.dict("callbacks")?,
            optimizer_states: f.list("optimizer_states")?,
            lr_schedulers: f.list("lr_schedulers")?,
            precision: f.get(PRECISION_KEY).cloned(),
            hparams_name: f.string("hparams_name")?,
            hyper_parameters: hparams,
            datamodule: None,
            resume: f.get(RESUME_KEY).map(ResumeState::from_value).transpose()?,
            extra: f
                .d
                .iter()
                .filter(|(k, _)| !matches!(k, Key::Str(s) if KNOWN.contains(&s.as_str())))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// Moves the datamodule state saved under `name` out of [`Checkpoint::extra`].
    pub fn take_datamodule(&mut self, name: &str) -> Option<&Value> {
        let state = self.extra.shift_remove(&Key::Str(name.to_owned()))?;
        self.datamodule = Some((name.to_owned(), state));
        self.datamodule.as_ref().map(|(_, s)| s)
    }

    /// True when the file cannot resume training (no optimizer states or loops), as a
    /// `save_weights_only=True` checkpoint.
    pub fn is_weights_only(&self) -> bool {
        self.optimizer_states.is_none() || self.loops.is_none()
    }
}

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

    fn to_value(self) -> Value {
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

    fn from_value(v: &Value, key: &str) -> Result<Self, SchemaError> {
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

    fn to_value(self) -> Value {
        let mut d = Value::dict();
        d.insert("total", self.total.to_value());
        d.insert("current", self.current.to_value());
        if let Some(b) = self.is_last_batch {
            d.insert("is_last_batch", b);
        }
        d
    }

    fn from_value(v: &Value, key: &str) -> Result<Self, SchemaError> {
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
}

const EPOCH_LOOP: &str = "epoch_loop";
const AUTO: &str = "epoch_loop.automatic_optimization";
const MANUAL: &str = "epoch_loop.manual_optimization";

impl FitLoop {
    fn to_value(&self) -> Value {
        let mut fit = Value::dict();
        fit.insert("state_dict", Value::dict());
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
        Ok(FitLoop {
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

/// How far the end of an epoch got, in Lightning's order: after the last batch's training
/// step the epoch-interval LR schedulers step (before `on_train_batch_end`), then the epoch's
/// validation runs, then `on_train_epoch_end`. Saved so a resume neither repeats nor skips one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum EpochPhase {
    /// Training batches remain (or the last one ran before its schedulers stepped).
    #[default]
    Training,
    /// The epoch-interval schedulers stepped after the last batch.
    SchedulersStepped,
    /// The end-of-epoch validation ran (or was not due).
    Validated,
    /// `on_train_epoch_end` ran: the next thing is the next epoch.
    Done,
    /// Written before the phases followed Lightning's order: validation ran, the epoch's
    /// schedulers did not step yet.
    LegacyValidated,
}

impl EpochPhase {
    /// Whether the epoch-interval schedulers already stepped for this epoch.
    pub fn schedulers_stepped(self) -> bool {
        matches!(
            self,
            EpochPhase::SchedulersStepped | EpochPhase::Validated | EpochPhase::Done
        )
    }

    /// Whether the end-of-epoch validation already ran.
    pub fn validated(self) -> bool {
        matches!(
            self,
            EpochPhase::Validated | EpochPhase::Done | EpochPhase::LegacyValidated
        )
    }

    /// The name written to the file.
    pub fn as_str(self) -> &'static str {
        match self {
            EpochPhase::Training => "training",
            EpochPhase::SchedulersStepped => "schedulers_stepped",
            EpochPhase::Validated => "validated",
            EpochPhase::Done => "done",
            EpochPhase::LegacyValidated => "legacy_validated",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            EpochPhase::Training,
            EpochPhase::SchedulersStepped,
            EpochPhase::Validated,
            EpochPhase::Done,
            EpochPhase::LegacyValidated,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// The integer `epoch_end` of files written before `epoch_phase` (1: validated, 2:
    /// schedulers stepped, 3: epoch-end hooks ran).
    fn from_legacy(n: i64) -> Option<Self> {
        Some(match n {
            0 => EpochPhase::Training,
            1 => EpochPhase::LegacyValidated,
            2 => EpochPhase::Validated,
            3 => EpochPhase::Done,
            _ => return None,
        })
    }
}

/// Our [`RESUME_KEY`] entry: what Lightning's dict lacks for a bitwise-exact resume (the seed,
/// the data position inside the epoch and the end-of-epoch phase), and the counters that let
/// a resumed run write the same `loops` as one that never stopped.
///
/// RNG is reseeded from `(seed, epoch, batch)` before every training step, so the seed is all
/// the RNG state a resume needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResumeState {
    /// The run's seed.
    pub seed: u64,
    /// The epoch in progress.
    pub epoch: i64,
    /// Training batches of `epoch` already run.
    pub batches_consumed: usize,
    /// How far the end of `epoch` got.
    pub epoch_phase: EpochPhase,
    /// Training batches run in total.
    pub total_batches: i64,
    /// Wall time spent training (for `train_time_interval`).
    pub train_time_s: f64,
    /// `global_step` when `epoch` started.
    pub epoch_start_step: i64,
    /// LR scheduler steps in total, and in `epoch`.
    pub scheduler_steps: (i64, i64),
    /// Validation batches run during `epoch`, and in the latest validation run.
    pub val_batches: (i64, i64),
    /// Whether the latest validation run reached its last batch.
    pub val_last_batch: bool,
}

impl ResumeState {
    /// The entry as written under [`RESUME_KEY`].
    pub fn to_value(&self) -> Value {
        let mut v = Value::dict();
        // a u64 seed is stored as the i64 with the same bits
        v.insert("seed", i64::from_ne_bytes(self.seed.to_ne_bytes()));
        v.insert("epoch", self.epoch);
        v.insert("batches_consumed", self.batches_consumed as i64);
        v.insert("epoch_phase", self.epoch_phase.as_str());
        v.insert("total_batches", self.total_batches);
        v.insert("train_time_s", self.train_time_s);
        v.insert("epoch_start_step", self.epoch_start_step);
        v.insert(
            "scheduler_steps",
            Value::List(vec![
                self.scheduler_steps.0.into(),
                self.scheduler_steps.1.into(),
            ]),
        );
        v.insert(
            "val_batches",
            Value::List(vec![self.val_batches.0.into(), self.val_batches.1.into()]),
        );
        v.insert("val_last_batch", self.val_last_batch);
        v
    }

    /// Reads the entry; files of earlier versions (an integer `epoch_end`, no loop counters)
    /// read with the counters at zero.
    pub fn from_value(v: &Value) -> Result<Self, SchemaError> {
        let f = Fields::of(v, RESUME_KEY)?;
        let need = |k: &str| {
            f.int(k)?
                .ok_or_else(|| SchemaError::new(f.path(k), "missing (expected an int)"))
        };
        let epoch_phase = match (f.string("epoch_phase")?, f.int("epoch_end")?) {
            (Some(s), _) => EpochPhase::parse(&s).ok_or_else(|| {
                SchemaError::new(f.path("epoch_phase"), format!("unknown phase {s:?}"))
            })?,
            (None, Some(n)) => EpochPhase::from_legacy(n).ok_or_else(|| {
                SchemaError::new(f.path("epoch_end"), format!("expected 0 to 3, found {n}"))
            })?,
            (None, None) => EpochPhase::Training,
        };
        let pair = |k: &str| -> Result<(i64, i64), SchemaError> {
            match f.list(k)?.as_deref() {
                None => Ok((0, 0)),
                Some([a, b]) => match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(SchemaError::new(f.path(k), "expected two ints")),
                },
                Some(_) => Err(SchemaError::new(f.path(k), "expected two ints")),
            }
        };
        let batches = need("batches_consumed")?;
        Ok(ResumeState {
            seed: u64::from_ne_bytes(need("seed")?.to_ne_bytes()),
            epoch: need("epoch")?,
            batches_consumed: usize::try_from(batches).map_err(|_| {
                SchemaError::new(f.path("batches_consumed"), format!("negative: {batches}"))
            })?,
            epoch_phase,
            total_batches: need("total_batches")?,
            train_time_s: f.float("train_time_s")?.unwrap_or(0.0).max(0.0),
            epoch_start_step: f.int_or_zero("epoch_start_step")?,
            scheduler_steps: pair("scheduler_steps")?,
            val_batches: pair("val_batches")?,
            val_last_batch: f.boolean("val_last_batch")?.unwrap_or(false),
        })
    }
}

/// The `callbacks` entry of a `ModelCheckpoint`, keyed as Lightning's `state_key`:
/// `ModelCheckpoint{'monitor': ..., 'mode': ..., 'every_n_train_steps': ..., 'every_n_epochs':
/// ..., 'train_time_interval': ...}`, each value as Python's `repr` (the time interval as
/// `repr(timedelta)`, given here already rendered).
pub fn model_checkpoint_state_key(
    monitor: Option<&str>,
    mode: &str,
    every_n_train_steps: i64,
    every_n_epochs: i64,
    train_time_interval_repr: Option<&str>,
) -> String {
    let q = |s: Option<&str>| s.map_or("None".to_owned(), crate::pyfmt::repr_str);
    format!(
        "ModelCheckpoint{{'monitor': {}, 'mode': {}, 'every_n_train_steps': {every_n_train_steps}, \
         'every_n_epochs': {every_n_epochs}, 'train_time_interval': {}}}",
        q(monitor),
        q(Some(mode)),
        train_time_interval_repr.unwrap_or("None")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_value_and_back_keeps_every_part() {
        let mut c = Checkpoint {
            epoch: 3,
            global_step: 30,
            version: Some(LIGHTNING_VERSION.into()),
            hparams_name: Some("kwargs".into()),
            loops: Some(Loops::zero()),
            precision: Some(Value::dict()),
            resume: Some(ResumeState {
                seed: u64::MAX - 3,
                epoch: 3,
                batches_consumed: 7,
                epoch_phase: EpochPhase::SchedulersStepped,
                scheduler_steps: (4, 1),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.state_dict.insert("w".into(), Value::Float(1.0));
        c.optimizer_states = Some(vec![Value::dict()]);
        c.extra.insert("user_key".into(), Value::dict());
        let v = c.to_value();
        assert_eq!(
            v.get("pytorch-lightning_version"),
            Some(&Value::from(LIGHTNING_VERSION))
        );
        let back = Checkpoint::from_value(&v).unwrap();
        assert_eq!(back, c);
        assert!(!back.is_weights_only());
        let weights = Checkpoint {
            optimizer_states: None,
            ..back
        };
        assert!(weights.is_weights_only());
        let err = Checkpoint::from_value(&Value::dict()).unwrap_err();
        assert_eq!(err.key, "state_dict");
    }

    #[test]
    fn zero_loops_have_lightnings_layout() {
        let v = Loops::zero().to_value();
        let fit = v.get("fit_loop").unwrap();
        let keys: Vec<String> = fit
            .as_dict()
            .unwrap()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "state_dict",
                "epoch_loop.state_dict",
                "epoch_loop.batch_progress",
                "epoch_loop.scheduler_progress",
                "epoch_loop.automatic_optimization.state_dict",
                "epoch_loop.automatic_optimization.optim_progress",
                "epoch_loop.manual_optimization.state_dict",
                "epoch_loop.manual_optimization.optim_step_progress",
                "epoch_loop.val_loop.state_dict",
                "epoch_loop.val_loop.batch_progress",
                "epoch_progress",
            ]
        );
        assert!(v
            .get_path("predict_loop.batch_progress.is_last_batch")
            .is_none());
        assert_eq!(
            v.get_path("test_loop.batch_progress.is_last_batch"),
            Some(&Value::Bool(false))
        );
        assert_eq!(Loops::from_value(&v).unwrap(), Loops::zero());
    }

    #[test]
    fn legacy_epoch_end_ints_map_to_phases() {
        let mut v = ResumeState::default().to_value();
        let d = v.as_dict_mut().unwrap();
        d.shift_remove(&Key::from("epoch_phase"));
        d.insert("epoch_end".into(), Value::Int(1));
        let r = ResumeState::from_value(&v).unwrap();
        assert_eq!(r.epoch_phase, EpochPhase::LegacyValidated);
        assert!(r.epoch_phase.validated() && !r.epoch_phase.schedulers_stepped());
        v.insert("epoch_end", 9i64);
        assert!(ResumeState::from_value(&v)
            .unwrap_err()
            .to_string()
            .contains("lightning_rs.epoch_end"));
    }

    #[test]
    fn mistyped_keys_are_named() {
        let mut c = Checkpoint::default().to_value();
        c.insert("epoch", "three");
        let e = Checkpoint::from_value(&c).unwrap_err();
        assert_eq!(
            e.to_string(),
            "checkpoint key `epoch`: expected an int, found str"
        );
    }

    #[test]
    fn state_key_matches_lightning() {
        assert_eq!(
            model_checkpoint_state_key(Some("val_loss"), "min", 0, 1, None),
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, \
             'every_n_epochs': 1, 'train_time_interval': None}"
        );
    }
}
