//! Resuming a run from a checkpoint (Lightning's checkpoint connector): which file
//! `ckpt_path` names (`last`, `best`, a path), reading it, and restoring in Lightning's order:
//! datamodule, model, callbacks, precision (the grad scaler), loops, optimizers, schedulers.
//! The evaluation loops restore the first three of these through the same functions.

use super::{warn, CkptPath, Trainer};
use crate::callbacks::find_last_checkpoint_in;
use crate::checkpoint::dcp::{self, lightning::RowsFn};
use crate::checkpoint::schema::Checkpoint;
use crate::error::{Error, RestoreError, Result};
use crate::lightning_module::{LightningModule, OptimizerConfig, Optimizers};
use crate::storage::CheckpointIO;
use crate::traverse::state_dict_from_value;
use crate::value::{Key, Value};
use std::path::{Path, PathBuf};

/// A checkpoint read for a resume or an evaluation, with its path.
pub(crate) struct Loaded {
    pub path: PathBuf,
    pub value: Value,
    pub ckpt: Checkpoint,
}

impl Loaded {
    /// Reads `path` (CPU tensors) through `io` and checks it has Lightning's shape.
    pub fn read(io: &dyn CheckpointIO, path: PathBuf) -> Result<Self> {
        let value = io.load_checkpoint(&path).map_err(Error::Load)?;
        Self::new(path, value)
    }

    /// `value`, read from `path`, checked to have Lightning's shape.
    pub fn new(path: PathBuf, value: Value) -> Result<Self> {
        let ckpt = Checkpoint::from_value(&value).map_err(|e| restore_err(&path, e.into()))?;
        Ok(Loaded { path, value, ckpt })
    }

    /// Copies the checkpoint's `state_dict` into the module (strict, as Lightning's resume),
    /// after the module's `on_load_checkpoint`.
    pub fn load_model<M: LightningModule>(&self, model: &mut M) -> Result<()> {
        model.on_load_checkpoint(&self.value)?;
        let sd = state_dict_from_value(&Value::OrderedDict(self.ckpt.state_dict.clone()))
            .map_err(|e| Error::Msg(format!("{}: {e}", self.path.display())))?;
        model
            .load_state_dict(&sd, true)
            .map_err(|e| restore_err(&self.path, e.into()))?;
        Ok(())
    }
}

/// Lightning's `_hpc_resume_path`: `dir/hpc_ckpt_<N>.ckpt` with the highest `N`, if any.
fn hpc_checkpoint(io: &dyn CheckpointIO, dir: &Path) -> Result<Option<PathBuf>> {
    let files = io.list(dir).map_err(Error::Load)?;
    Ok(files
        .into_iter()
        .filter_map(|f| {
            let name = f.path.file_name()?.to_str()?.to_owned();
            let n: u64 = name
                .strip_prefix("hpc_ckpt_")?
                .strip_suffix(".ckpt")?
                .parse()
                .ok()?;
            Some((n, f.path))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p))
}

fn restore_err(path: &Path, source: RestoreError) -> Error {
    Error::Restore {
        path: path.to_owned(),
        source,
    }
}

/// Restores the optimizers and schedulers (after model and loops, as Lightning): the file's
/// `optimizer_states` and `lr_schedulers` in `configure_optimizers`'s order.
///
/// With `replaced`, a callback installs its own schedulers (stochastic weight averaging):
/// the configured ones are dropped and the saved scheduler states left to it.
fn restore_optim(
    ckpt: &Checkpoint,
    optim: &mut OptimizerConfig,
    replaced: bool,
) -> Result<(), RestoreError> {
    if replaced {
        for e in optim.entries_mut() {
            e.schedulers.clear();
        }
    }
    let states = ckpt.optimizer_states.as_deref().unwrap_or(&[]);
    if states.len() != optim.len() {
        return Err(RestoreError::Count {
            what: "optimizer",
            found: states.len(),
            configured: optim.len(),
        });
    }
    let scheds = match replaced {
        true => &[],
        false => ckpt.lr_schedulers.as_deref().unwrap_or(&[]),
    };
    let configured = optim.schedulers().count();
    if scheds.len() != configured {
        return Err(RestoreError::Count {
            what: "LR scheduler",
            found: scheds.len(),
            configured,
        });
    }
    let several = optim.len() > 1;
    let mut scheds = scheds.iter().enumerate();
    for (i, (state, e)) in states.iter().zip(optim.entries_mut()).enumerate() {
        e.optimizer
            .load_state_dict(state)
            .map_err(|source| RestoreError::Optim {
                what: match several {
                    true => format!("optimizer {i}"),
                    false => "the optimizer".into(),
                },
                source,
            })?;
        for (cfg, (j, s)) in e.schedulers.iter_mut().zip(scheds.by_ref()) {
            cfg.scheduler
                .load_state_dict(s)
                .map_err(|source| RestoreError::Optim {
                    what: format!("LR scheduler {j}"),
                    source,
                })?;
        }
    }
    Ok(())
}

impl Trainer {
    /// Resolves `ckpt_path` to a file; `None` for `Last` with nothing saved yet (warned).
    pub(crate) fn resolve_ckpt(&self, ckpt_path: &CkptPath) -> Result<Option<PathBuf>> {
        let path = match ckpt_path {
            CkptPath::Path(p) => p.clone(),
            CkptPath::Last => {
                let dirs: Vec<PathBuf> = self
                    .callbacks
                    .iter()
                    .filter_map(|c| c.checkpoint_dirpath())
                    .collect();
                let io = &*self.cfg.checkpoint_io;
                match find_last_checkpoint_in(io, &dirs, |p| io.verify(p).is_ok()) {
                    Some(p) => p,
                    None => {
                        warn(&format!(
                            "ckpt_path=\"last\" is set, but there is no last checkpoint available in {dirs:?}. \
                             No checkpoint will be loaded. HINT: set `ModelCheckpoint(save_last=true)` with a fixed dirpath."
                        ));
                        return Ok(None);
                    }
                }
            }
            CkptPath::Hpc => hpc_checkpoint(&*self.cfg.checkpoint_io, &self.cfg.default_root_dir)?
                .ok_or_else(|| {
                    Error::Config(
                        "`.fit(ckpt_path=\"hpc\")` is set but no HPC checkpoint was found. Please \
                         pass an exact checkpoint path to `.fit(ckpt_path=...)`"
                            .into(),
                    )
                })?,
            CkptPath::Best => self
                .callbacks
                .iter()
                .find_map(|c| c.best_model_path().filter(|p| !p.as_os_str().is_empty()))
                .ok_or_else(|| {
                    Error::Config(
                        "ckpt_path=\"best\" is set but no checkpoint callback has a best model \
                         path (no ModelCheckpoint, or it saved nothing yet)"
                            .into(),
                    )
                })?,
        };
        if !self.cfg.checkpoint_io.exists(&path).map_err(Error::Load)? {
            return Err(Error::CheckpointNotFound(path));
        }
        Ok(Some(path))
    }

    /// The checkpoint `fit` resumes from, read: `None` without `ckpt_path` (or `last` with
    /// nothing saved). A weights-only file is refused: it cannot resume a run.
    ///
    /// `rows` (a sharded run's own rows of each tensor item) lets a local sharded directory
    /// be read in part: the tensors it selects hold only those rows.
    pub(super) fn read_resume(
        &self,
        ckpt_path: Option<&CkptPath>,
        rows: Option<&RowsFn<'_>>,
    ) -> Result<Option<Loaded>> {
        let Some(path) = ckpt_path
            .map(|p| self.resolve_ckpt(p))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        let r = match rows {
            Some(rows) if dcp::lightning::is_sharded_checkpoint(&path) => {
                let value = dcp::lightning::load_rows(&path, rows).map_err(Error::Load)?;
                Loaded::new(path, value)?
            }
            _ => Loaded::read(&*self.cfg.checkpoint_io, path)?,
        };
        if r.ckpt.optimizer_states.is_none() {
            return Err(restore_err(&r.path, RestoreError::WeightsOnly));
        }
        Ok(Some(r))
    }

    /// Restores a run, in Lightning's order: datamodule, model, callbacks, precision, loops,
    /// optimizers, schedulers.
    pub(super) fn restore<M: LightningModule>(
        &mut self,
        model: &mut M,
        optim: &mut Optimizers,
        r: Loaded,
    ) -> Result<()> {
        self.restore_datamodule(&r)?;
        r.load_model(model)?;
        self.restore_callbacks(&r)?;
        if let (Some(scaler), Some(state)) = (&mut optim.scaler, &r.ckpt.precision) {
            scaler.load_state_dict(state).map_err(|source| {
                restore_err(
                    &r.path,
                    RestoreError::Optim {
                        what: "the grad scaler".into(),
                        source,
                    },
                )
            })?;
        }
        let seed = self
            .run
            .restore_position(&r.ckpt)
            .map_err(|e| Error::Config(format!("{}: {e}", r.path.display())))?;
        if let Some(saved) = seed {
            if let Some(given) = self.cfg.seed.filter(|&g| g != saved) {
                warn(&format!(
                    "resuming with the checkpoint's seed {saved}, not the trainer's {given}"
                ));
            }
            self.run.setup.seed = saved;
        }
        let replaced = self.callbacks.iter().any(|c| c.replaces_lr_schedulers());
        restore_optim(&r.ckpt, &mut optim.config, replaced).map_err(|e| restore_err(&r.path, e))?;
        self.run.setup.resumed_from = Some(r.path);
        Ok(())
    }

    /// Gives the datamodule the state saved under its name, if the file has one
    /// (Lightning's `restore_datamodule`).
    pub(crate) fn restore_datamodule(&self, r: &Loaded) -> Result<()> {
        let Some(dm) = &self.run.setup.datamodule else {
            return Ok(());
        };
        match r.value.get(&dm.name) {
            Some(state) => dm.load_state_dict(state).map_err(|e| {
                restore_err(
                    &r.path,
                    RestoreError::DataModule {
                        name: dm.name.clone(),
                        source: Box::new(e),
                    },
                )
            }),
            None => Ok(()),
        }
    }

    /// Lightning's `restore_callbacks`: every callback's `on_load_checkpoint` with the whole
    /// file, then each one's `load_state_dict` with its saved state.
    pub(crate) fn restore_callbacks(&mut self, r: &Loaded) -> Result<()> {
        for cb in &mut self.callbacks {
            cb.on_load_checkpoint(&r.value).map_err(|e| {
                restore_err(
                    &r.path,
                    RestoreError::Callback {
                        key: cb.state_key(),
                        source: Box::new(e),
                    },
                )
            })?;
        }
        // a weights-only file has no `callbacks` (fit refuses it; evaluation loads it)
        let Some(states) = r.ckpt.callbacks.as_ref() else {
            return Ok(());
        };
        for cb in &mut self.callbacks {
            let key = cb.state_key();
            match states.get(&Key::Str(key.clone())) {
                Some(s) => cb.load_state_dict(s).map_err(|e| {
                    restore_err(
                        &r.path,
                        RestoreError::Callback {
                            key: key.clone(),
                            source: Box::new(e),
                        },
                    )
                })?,
                None => warn(&format!(
                    "{}: no state for callback {key} in the checkpoint; it starts fresh",
                    r.path.display()
                )),
            }
        }
        Ok(())
    }
}
