//! Lightning 2.6's top-level checkpoint dict (DESIGN §3): building it and reading it back.

use crate::value::{Dict, Key, Value};

/// The Lightning version our files claim (`pytorch-lightning_version`); `load_from_checkpoint`
/// in Python skips its migrations for versions >= 2.0.
pub const LIGHTNING_VERSION: &str = "2.6.6";

/// The parts of a Lightning checkpoint, typed; [`Checkpoint::to_value`] gives the dict
/// `trainer.save_checkpoint` writes, [`Checkpoint::from_value`] reads one.
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
    /// Loop progress (`loops`), `None` in weights-only files.
    pub loops: Option<Value>,
    /// Callback states keyed by state key (`callbacks`).
    pub callbacks: Option<Dict>,
    /// One `torch.optim` state dict per optimizer (`optimizer_states`).
    pub optimizer_states: Option<Vec<Value>>,
    /// One scheduler `__dict__` per LR scheduler (`lr_schedulers`).
    pub lr_schedulers: Option<Vec<Value>>,
    /// `hparams_name` (`"kwargs"` for `save_hyperparameters()` in `__init__`).
    pub hparams_name: Option<String>,
    /// `hyper_parameters` (a plain dict).
    pub hyper_parameters: Option<Dict>,
    /// Other top-level keys (precision scaler state, `MixedPrecision`, user keys), in order.
    pub extra: Dict,
}

const KNOWN: [&str; 10] = [
    "epoch",
    "global_step",
    "pytorch-lightning_version",
    "state_dict",
    "loops",
    "callbacks",
    "optimizer_states",
    "lr_schedulers",
    "hparams_name",
    "hyper_parameters",
];

impl Checkpoint {
    /// The checkpoint dict, keys in Lightning's order; absent parts are left out.
    pub fn to_value(&self) -> Value {
        let mut d = Value::dict();
        d.insert("epoch", self.epoch);
        d.insert("global_step", self.global_step);
        d.insert(
            "pytorch-lightning_version",
            self.version.as_deref().unwrap_or(LIGHTNING_VERSION),
        );
        d.insert("state_dict", Value::OrderedDict(self.state_dict.clone()));
        if let Some(l) = &self.loops {
            d.insert("loops", l.clone());
        }
        if let Some(c) = &self.callbacks {
            d.insert("callbacks", Value::Dict(c.clone()));
        }
        if let Some(o) = &self.optimizer_states {
            d.insert("optimizer_states", Value::List(o.clone()));
        }
        if let Some(s) = &self.lr_schedulers {
            d.insert("lr_schedulers", Value::List(s.clone()));
        }
        if let Some(h) = &self.hparams_name {
            d.insert("hparams_name", h.as_str());
        }
        if let Some(h) = &self.hyper_parameters {
            d.insert("hyper_parameters", Value::Dict(h.clone()));
        }
        if let Some(dd) = d.as_dict_mut() {
            for (k, v) in &self.extra {
                dd.insert(k.clone(), v.clone());
            }
        }
        d
    }

    /// Reads a checkpoint dict; only `state_dict` is required. Errors name the bad key.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let d = v
            .as_dict()
            .ok_or_else(|| format!("a checkpoint is a dict, found {}", v.type_name()))?;
        let get = |k: &str| d.get(&Key::Str(k.to_owned()));
        let int = |k: &str| match get(k) {
            None => Ok(0),
            Some(x) => x
                .as_i64()
                .ok_or_else(|| format!("`{k}` is a {}, expected int", x.type_name())),
        };
        let dict = |k: &str| match get(k) {
            None | Some(Value::None) => Ok(None),
            Some(x) => x
                .as_dict()
                .cloned()
                .map(Some)
                .ok_or_else(|| format!("`{k}` is a {}, expected dict", x.type_name())),
        };
        let list = |k: &str| match get(k) {
            None | Some(Value::None) => Ok(None),
            Some(x) => x
                .as_seq()
                .map(|s| Some(s.to_vec()))
                .ok_or_else(|| format!("`{k}` is a {}, expected list", x.type_name())),
        };
        let string = |k: &str| get(k).and_then(|x| x.as_str()).map(str::to_owned);
        Ok(Checkpoint {
            epoch: int("epoch")?,
            global_step: int("global_step")?,
            version: string("pytorch-lightning_version"),
            state_dict: dict("state_dict")?.ok_or("the checkpoint has no `state_dict`")?,
            loops: get("loops").cloned(),
            callbacks: dict("callbacks")?,
            optimizer_states: list("optimizer_states")?,
            lr_schedulers: list("lr_schedulers")?,
            hparams_name: string("hparams_name"),
            hyper_parameters: dict("hyper_parameters")?,
            extra: d
                .iter()
                .filter(|(k, _)| !matches!(k, Key::Str(s) if KNOWN.contains(&s.as_str())))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// True when the file cannot resume training (no optimizer states or loops), as a
    /// `save_weights_only=True` checkpoint.
    pub fn is_weights_only(&self) -> bool {
        self.optimizer_states.is_none() || self.loops.is_none()
    }
}

/// The `callbacks` entry of a `ModelCheckpoint`, keyed as Lightning's `state_key`:
/// `ModelCheckpoint{'monitor': ..., 'mode': ..., 'every_n_train_steps': ..., 'every_n_epochs':
/// ..., 'train_time_interval': ...}` (`None` prints as `None`, strings quoted).
pub fn model_checkpoint_state_key(
    monitor: Option<&str>,
    mode: &str,
    every_n_train_steps: i64,
    every_n_epochs: i64,
    train_time_interval: Option<&str>,
) -> String {
    let q = |s: Option<&str>| s.map_or("None".to_owned(), |s| format!("'{s}'"));
    format!(
        "ModelCheckpoint{{'monitor': {}, 'mode': '{mode}', 'every_n_train_steps': {every_n_train_steps}, \
         'every_n_epochs': {every_n_epochs}, 'train_time_interval': {}}}",
        q(monitor),
        train_time_interval.unwrap_or("None")
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
            hparams_name: Some("kwargs".into()),
            ..Default::default()
        };
        c.state_dict.insert("w".into(), Value::Float(1.0));
        c.optimizer_states = Some(vec![Value::dict()]);
        c.extra
            .insert("native_amp_scaling_state".into(), Value::dict());
        let v = c.to_value();
        assert_eq!(
            v.get("pytorch-lightning_version"),
            Some(&Value::from(LIGHTNING_VERSION))
        );
        let back = Checkpoint::from_value(&v).unwrap();
        assert_eq!(back.epoch, 3);
        assert_eq!(back.state_dict, c.state_dict);
        assert_eq!(back.extra.len(), 1);
        assert!(back.is_weights_only());
        assert!(Checkpoint::from_value(&Value::dict())
            .unwrap_err()
            .contains("state_dict"));
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
