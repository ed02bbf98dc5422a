//! `load_from_checkpoint`: rebuild a module from a checkpoint's hyperparameters and load its
//! weights, with typed and string overrides.
//!
//! Where each hyperparameter comes from, highest first:
//! 1. explicit overrides, in call order: [`CheckpointLoader::hparams`] (typed closure) and
//!    [`CheckpointLoader::set`] (`"key"`, `"value"` string, checked at load time);
//! 2. the [`CheckpointLoader::hparams_file`] (YAML, or JSON by extension), merged key by key over
//!    3. the checkpoint's saved `hyper_parameters`;
//! 4. the config's `#[hparam(default = ...)]`s.
//!
//! (Python's `hparams_file` replaces the saved dict instead of merging into it; the results
//! agree whenever the file lists every saved key.)

use crate::checkpoint::schema::Checkpoint;
use crate::error::{Error, Result};
use crate::hparams::{self, Hyperparameters};
use crate::lightning_module::LightningModule;
use crate::traverse::{state_dict_from_value, LoadReport};
use crate::value::Value;
use std::path::{Path, PathBuf};

enum Source {
    Path(PathBuf),
    Value(Box<Value>),
}

enum Override<'a, H> {
    Typed(Box<dyn FnOnce(&mut H) + 'a>),
    Str(String, String),
}

/// A `load_from_checkpoint` call being configured; finish with [`CheckpointLoader::load`].
///
/// ```no_run
/// # use lightning_core::prelude::*;
/// # fn f<M: LightningModule>() -> lightning_core::Result<()> {
/// let model: M = M::loader("best.ckpt")
///     .set("lr", "3e-4")
///     .device(tch::Device::Cpu)
///     .strict(false)
///     .load()?;
/// # Ok(()) }
/// ```
pub struct CheckpointLoader<'a, M: LightningModule> {
    source: Source,
    overrides: Vec<Override<'a, M::Hparams>>,
    hparams_file: Option<PathBuf>,
    device: tch::Device,
    strict: bool,
}

impl<'a, M: LightningModule> CheckpointLoader<'a, M> {
    fn new(source: Source) -> Self {
        CheckpointLoader {
            source,
            overrides: Vec::new(),
            hparams_file: None,
            device: tch::Device::Cpu,
            strict: true,
        }
    }

    /// Loads from a checkpoint file (read with [`crate::checkpoint::load`]).
    pub fn from_path(path: impl AsRef<Path>) -> Self {
        Self::new(Source::Path(path.as_ref().to_owned()))
    }

    /// Loads from an in-memory checkpoint dict with `state_dict` and (optionally)
    /// `hyper_parameters`.
    pub fn from_value(ckpt: Value) -> Self {
        Self::new(Source::Value(Box::new(ckpt)))
    }

    /// A typed override: `.hparams(|hp| hp.hidden = 128)` (a misspelt field does not compile).
    pub fn hparams(mut self, f: impl FnOnce(&mut M::Hparams) + 'a) -> Self {
        self.overrides.push(Override::Typed(Box::new(f)));
        self
    }

    /// A string override (`"model.hidden"`, `"128"`), parsed to the field's type at load time;
    /// an unknown key or a bad value makes [`CheckpointLoader::load`] fail naming the field.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push(Override::Str(key.into(), value.into()));
        self
    }

    /// A YAML (or `.json`) file whose values override the saved hyperparameters.
    pub fn hparams_file(mut self, path: impl AsRef<Path>) -> Self {
        self.hparams_file = Some(path.as_ref().to_owned());
        self
    }

    /// The device the module is built on (PyTorch's `map_location`); default CPU.
    pub fn device(mut self, device: tch::Device) -> Self {
        self.device = device;
        self
    }

    /// Whether missing, unexpected or mismatched keys are an error (default `true`).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Builds the module and loads its weights.
    pub fn load(self) -> Result<M> {
        self.load_with_report().map(|(m, _)| m)
    }

    /// Builds the module, loads its weights and returns what did not match (empty when
    /// `strict`).
    pub fn load_with_report(self) -> Result<(M, LoadReport)> {
        let (path, value) = match self.source {
            Source::Value(v) => (PathBuf::from("<checkpoint dict>"), *v),
            Source::Path(p) => {
                let v = crate::checkpoint::load(&p).map_err(Error::Load)?;
                (p, v)
            }
        };
        let ckpt = Checkpoint::from_value(&value).map_err(|e| Error::Restore {
            path: path.clone(),
            source: e.into(),
        })?;
        let mut hp_value = ckpt.hyper_parameters.map_or_else(Value::dict, Value::Dict);
        if let Some(file) = &self.hparams_file {
            merge(&mut hp_value, hparams::read_file(file)?);
        }
        let mut hp = <M::Hparams as Hyperparameters>::from_value(&hp_value)?;
        for o in self.overrides {
            match o {
                Override::Typed(f) => f(&mut hp),
                Override::Str(k, v) => hp.set_str(&k, &v)?,
            }
        }
        // A typed override can set any value: check the rules before building on it.
        hp.validate()?;
        let sd = state_dict_from_value(&Value::OrderedDict(ckpt.state_dict))?;
        let vs = tch::nn::VarStore::new(self.device);
        let mut model = M::build(&hp, &vs.root())?;
        let report = model.load_state_dict(&sd, self.strict)?;
        Ok((model, report))
    }
}

/// Merges `over` into `base`: dicts key by key (recursively), anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base.as_dict_mut(), over) {
        (Some(b), Value::Dict(o) | Value::OrderedDict(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, over) => *base = over,
    }
}

/// `load_from_checkpoint` for every [`LightningModule`] (in the prelude).
pub trait LoadFromCheckpoint: LightningModule {
    /// Rebuilds the module from a checkpoint file with its saved hyperparameters, on the CPU,
    /// strictly.
    fn load_from_checkpoint(path: impl AsRef<Path>) -> Result<Self> {
        CheckpointLoader::<Self>::from_path(path).load()
    }

    /// A [`CheckpointLoader`] for a checkpoint file, to add overrides, a device or `strict(false)`.
    fn loader<'a>(path: impl AsRef<Path>) -> CheckpointLoader<'a, Self> {
        CheckpointLoader::from_path(path)
    }

    /// A [`CheckpointLoader`] for an in-memory checkpoint dict.
    fn loader_from_value<'a>(ckpt: Value) -> CheckpointLoader<'a, Self> {
        CheckpointLoader::from_value(ckpt)
    }
}

impl<M: LightningModule> LoadFromCheckpoint for M {}

/// The minimal checkpoint dict a [`CheckpointLoader`] reads: `state_dict` and `hyper_parameters`.
pub fn checkpoint_value<M: LightningModule>(model: &M) -> Value {
    let mut v = Value::dict();
    v.insert(
        "state_dict",
        crate::traverse::state_dict_to_value(&model.state_dict()),
    );
    v.insert(
        "hyper_parameters",
        Hyperparameters::to_value(model.hparams()),
    );
    v
}
