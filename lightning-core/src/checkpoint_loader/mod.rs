//! `load_from_checkpoint`: rebuild a module from a checkpoint's hyperparameters and load its
//! weights, with typed and string overrides, as Lightning's `LightningModule.load_from_checkpoint`.
//!
//! Where each hyperparameter comes from, highest first:
//! 1. explicit overrides, in call order: [`CheckpointLoader::hparams`] (typed closure) and
//!    [`CheckpointLoader::set`] (`"key"`, `"value"` string, checked at load time), as
//!    Lightning's `**kwargs`;
//! 2. the [`CheckpointLoader::hparams_file`] when one is given: it **replaces** the saved
//!    `hyper_parameters` (a key the file lacks is not taken from the checkpoint), as Lightning;
//! 3. otherwise the checkpoint's saved `hyper_parameters` (or, in 0.x/1.x files without them,
//!    the older `module_arguments` / `hparams` keys, as Lightning's migration reads them);
//! 4. the config's `#[hparam(default = ...)]`s (Python's `__init__` defaults).
//!
//! Then, as Lightning: the module is built, its `on_load_checkpoint` sees the checkpoint dict,
//! the weights are loaded (`strict`), and the module is moved to the device of the first
//! tensor of `state_dict` after [`CheckpointLoader::map_location`].

pub(crate) mod error;
mod hparams_file;
mod map_location;

pub use error::LoaderError;
pub use map_location::{location_of, Devices, MapLocation, MapLocationError};

use crate::checkpoint::schema::Checkpoint;
use crate::checkpoint::LoadOptions;
use crate::error::{Error, Result};
use crate::hparams::Hyperparameters;
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
/// use lightning_core::checkpoint_loader::MapLocation;
/// let model: M = M::loader("best.ckpt")
///     .hparams_file("hparams.yaml")     // replaces the saved hyper_parameters
///     .set("lr", "3e-4")                // then overrides win
///     .map_location(MapLocation::map([("cuda:1", "cuda:0")]))
///     .strict(false)
///     .load()?;
/// # Ok(()) }
/// ```
pub struct CheckpointLoader<'a, M: LightningModule> {
    source: Source,
    overrides: Vec<Override<'a, M::Hparams>>,
    hparams_file: Option<PathBuf>,
    map_location: MapLocation,
    strict: bool,
    weights_only: Option<bool>,
}

impl<'a, M: LightningModule> CheckpointLoader<'a, M> {
    fn new(source: Source) -> Self {
        CheckpointLoader {
            source,
            overrides: Vec::new(),
            hparams_file: None,
            map_location: MapLocation::Default,
            strict: true,
            weights_only: None,
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

    /// A file of hyperparameters that replaces the checkpoint's saved ones (Lightning's
    /// `hparams_file`): `.yaml`/`.yml` (e.g. a run's `hparams.yaml`), `.csv` (test_tube's
    /// `meta_tags.csv`: `key,value` rows after a header, values read as Python literals), or,
    /// beyond Lightning, `.json`. Overrides still win over the file.
    pub fn hparams_file(mut self, path: impl AsRef<Path>) -> Self {
        self.hparams_file = Some(path.as_ref().to_owned());
        self
    }

    /// Where the tensors go (`torch.load`'s `map_location`; see [`MapLocation`]): one device
    /// (`"cpu"`, `"cuda:0"`, a [`tch::Device`]) or a mapping of saved locations
    /// (`MapLocation::map([("cuda:1", "cuda:0")])`). The default is Lightning's: each tensor's
    /// saved device, or the CPU when that accelerator is absent. The module ends on the
    /// device of the first tensor of `state_dict`.
    pub fn map_location(mut self, map_location: impl Into<MapLocation>) -> Self {
        self.map_location = map_location.into();
        self
    }

    /// Every tensor to `device`: `map_location(device)`.
    pub fn device(self, device: tch::Device) -> Self {
        self.map_location(device)
    }

    /// Whether missing, unexpected or mismatched keys are an error (default `true`); with
    /// `false`, [`CheckpointLoader::load_with_report`] returns them.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Lightning's `weights_only` (passed to `torch.load`; `None`, the default, is torch's
    /// `True`). The reader here is always the `weights_only=True` one: it never runs code from
    /// a file, so `Some(false)` reads exactly what `Some(true)` reads, and a file that needs
    /// more (a pickled class) fails naming the global it refused, whatever this says.
    pub fn weights_only(mut self, weights_only: impl Into<Option<bool>>) -> Self {
        self.weights_only = weights_only.into();
        self
    }

    /// Builds the module and loads its weights.
    pub fn load(self) -> Result<M> {
        self.load_with_report().map(|(m, _)| m)
    }

    /// Builds the module, loads its weights and returns what did not match (empty when
    /// `strict`).
    pub fn load_with_report(self) -> Result<(M, LoadReport)> {
        let devices = Devices::current();
        let (path, mut value, locations) = match self.source {
            // an in-memory dict has no saved locations: one target device, else the CPU
            Source::Value(v) => {
                let tag = match &self.map_location {
                    MapLocation::To(t) => t.clone(),
                    _ => "cpu".to_owned(),
                };
                (PathBuf::from("<checkpoint dict>"), *v, vec![tag])
            }
            Source::Path(p) => {
                let (v, locations) =
                    crate::checkpoint::load_with_locations(&p, &LoadOptions::default()).map_err(
                        |e| match self.weights_only {
                            Some(false) => LoaderError::NotWeightsOnly { source: e }.into(),
                            _ => Error::Load(e),
                        },
                    )?;
                (p, v, locations)
            }
        };
        // every storage's target is checked, as torch.load restores each; the module goes to
        // the first one's (Lightning: `model.to(device of the first state_dict tensor)`)
        let mut device = tch::Device::Cpu;
        for (i, tag) in locations.iter().enumerate() {
            let d = self
                .map_location
                .device_for(tag, devices)
                .map_err(|source| LoaderError::MapLocation {
                    path: path.clone(),
                    source,
                })?;
            if i == 0 {
                device = d;
            }
        }
        let ckpt = Checkpoint::from_value(&value).map_err(|e| Error::Restore {
            path: path.clone(),
            source: e.into(),
        })?;
        let hyper_parameters = match &self.hparams_file {
            Some(file) => hparams_file::read(file)?.as_dict().cloned(),
            None => ckpt.hyper_parameters.clone(),
        };
        let hp_value = saved_hparams(&value, hyper_parameters);
        let mut hp = <M::Hparams as Hyperparameters>::from_value(&hp_value)?;
        if let Some(d) = value.as_dict_mut() {
            d.insert("hyper_parameters".into(), hp_value);
        }
        for o in self.overrides {
            match o {
                Override::Typed(f) => f(&mut hp),
                Override::Str(k, v) => hp.set_str(&k, &v)?,
            }
        }
        // A typed override can set any value: check the rules before building on it.
        hp.validate()?;
        let sd = state_dict_from_value(&Value::OrderedDict(ckpt.state_dict))?;
        let vs = tch::nn::VarStore::new(device);
        let mut model = M::build(&hp, &vs.root())?;
        model.on_load_checkpoint(&value)?;
        let report = model.load_state_dict(&sd, self.strict)?;
        model.move_to(device);
        Ok((model, report))
    }
}

/// The hyperparameters as Lightning's `_load_state` gathers them: the 0.x/1.x keys `hparams`
/// and `module_arguments` first, then `hyper_parameters` (the saved ones, or the
/// `hparams_file`'s), each updating the last (an empty dict when there are none).
fn saved_hparams(value: &Value, hyper_parameters: Option<crate::value::Dict>) -> Value {
    let mut out = crate::value::Dict::new();
    let old = ["hparams", "module_arguments"]
        .into_iter()
        .filter_map(|k| value.get(k).and_then(Value::as_dict).cloned());
    for d in old.chain(hyper_parameters) {
        out.extend(d);
    }
    Value::Dict(out)
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
