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

mod loops;
mod resume;

pub use loops::{FitLoop, Loops, Progress, Tracker};
pub use resume::{EpochPhase, ResumeState};

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
    pub(super) fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
        SchemaError {
            key: key.into(),
            msg: msg.into(),
        }
    }

    pub(super) fn mistyped(key: &str, want: &str, found: &Value) -> Self {
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
/// let back = Checkpoint::from_value(&v)?;
/// assert_eq!((back.epoch, back.global_step, &back.state_dict), (2, 20, &c.state_dict));
/// assert!(back.is_weights_only()); // no optimizer states, no loops
/// // a mistyped key is an error naming it
/// let mut bad = v.clone();
/// bad.insert("global_step", "twenty");
/// assert_eq!(Checkpoint::from_value(&bad).unwrap_err().key, "global_step");
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
pub(super) struct Fields<'a> {
    pub(super) d: &'a Dict,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(super) fn of(v: &'a Value, prefix: &'a str) -> Result<Self, SchemaError> {
        v.as_dict()
            .map(|d| Fields { d, prefix })
            .ok_or_else(|| SchemaError::mistyped(prefix, "a dict", v))
    }
    pub(super) fn path(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }
    pub(super) fn get(&self, k: &str) -> Option<&'a Value> {
        match self.d.get(&Key::Str(k.to_owned())) {
            None | Some(Value::None) => None,
            Some(v) => Some(v),
        }
    }
    pub(super) fn int(&self, k: &str) -> Result<Option<i64>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "an int", x))
            })
            .transpose()
    }
    pub(super) fn int_or_zero(&self, k: &str) -> Result<i64, SchemaError> {
        Ok(self.int(k)?.unwrap_or(0))
    }
    pub(super) fn float(&self, k: &str) -> Result<Option<f64>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a float", x))
            })
            .transpose()
    }
    pub(super) fn boolean(&self, k: &str) -> Result<Option<bool>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_bool()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a bool", x))
            })
            .transpose()
    }
    pub(super) fn string(&self, k: &str) -> Result<Option<String>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a str", x))
            })
            .transpose()
    }
    pub(super) fn dict(&self, k: &str) -> Result<Option<Dict>, SchemaError> {
        self.get(k)
            .map(|x| {
                x.as_dict()
                    .cloned()
                    .ok_or_else(|| SchemaError::mistyped(&self.path(k), "a dict", x))
            })
            .transpose()
    }
    pub(super) fn list(&self, k: &str) -> Result<Option<Vec<Value>>, SchemaError> {
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
