//! The [`Trainer`]: Lightning's fit/validate/test/predict loops, checkpoints and exact resume.
//!
//! ```no_run
//! # use lightning_core::prelude::*;
//! # use lightning_core::data::DataModule;
//! # fn run<M: LightningModule>(model: &mut M, data: &DataModule) -> lightning_core::Result<()> {
//! use lightning_core::trainer::{CkptPath, Trainer};
//! let mut trainer = Trainer::builder().max_epochs(10).default_root_dir("runs").seed(42).build()?;
//! trainer.fit(model, data, None)?;                      // fresh run
//! trainer.fit(model, data, Some(CkptPath::Last))?;      // exact resume from the newest last*.ckpt
//! let metrics = trainer.validate(model, data, None)?;   // {"val_loss": ...}
//! # Ok(()) }
//! ```
//!
//! - `config`: the settings and their builder;
//! - `fit`: `Trainer::fit` (setup, the epochs, teardown); `resume`: the checkpoint connector
//!   (`ckpt_path`, restoring in Lightning's order); `epoch_loop`: one training epoch (batches,
//!   validation interval, stopping, the schedulers); `automatic` and `manual`: the two kinds
//!   of training step;
//! - `evaluation`: validation (also inside `fit`), test, and the sanity check; `predict`;
//! - `state`: the run's progress and its checkpoint views (Lightning's `loops`, our resume
//!   entry);
//! - `hooks`: calling callbacks, and the handle through which they save checkpoints;
//! - `saver`: synchronous and background (async) checkpoint writes, and what runs once a
//!   write is durable;
//! - `logger`: metrics, `metrics.csv` and `hparams.yaml`; `progress`: the progress bar;
//! - `preempt`: SIGTERM/SIGUSR1 handling (finish the step, save, stop).

mod automatic;
mod config;
mod ddp;
mod epoch_loop;
mod evaluation;
mod fit;
mod hooks;
mod logger;
mod manual;
mod predict;
mod preempt;
mod progress;
mod resume;
mod saver;
mod state;
mod strategy;
mod summary;

pub use crate::checkpoint::schema::{LIGHTNING_VERSION, RESUME_KEY};
pub(crate) use crate::optim::clip_gradients;
pub use crate::optim::ClipAlgorithm;
pub use config::{Limit, SaveErrorPolicy, TrainerBuilder, TrainerConfig};
pub(crate) use ddp::around_fsdp_unit;
pub use ddp::finish_distributed;
pub use strategy::{
    Accelerator, DdpOptions, FsdpOptions, ShardingStrategy, StateDictType, Strategy, StrategyError,
};
pub use summary::model_summary;

use crate::callbacks::Callback;
use crate::checkpoint::schema::Checkpoint;
use crate::error::{Error, Result};
use crate::hparams::Hyperparameters;
use crate::lightning_module::{LightningModule, Optimizers};
use crate::traverse::state_dict_to_value;
use crate::value::{Dict, Key};
use indexmap::IndexMap;
use state::RunState;
use std::path::{Path, PathBuf};

/// Which checkpoint `fit` resumes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CkptPath {
    /// This file.
    Path(PathBuf),
    /// The newest `last*.ckpt` in the checkpoint callbacks' directories (a warning and a
    /// fresh start when there is none, as Lightning).
    Last,
    /// The checkpoint callback's `best_model_path` (an error when there is none).
    Best,
    /// The HPC checkpoint: `hpc_ckpt_<N>.ckpt` with the highest `N` in `default_root_dir`
    /// (what a SLURM requeue resumes; an error when there is none, as Lightning).
    Hpc,
}

impl CkptPath {
    /// `"last"`, `"best"`, `"hpc"`, or a path (as Lightning's `ckpt_path` strings).
    pub fn parse(s: &str) -> Self {
        match s {
            "last" => CkptPath::Last,
            "best" => CkptPath::Best,
            "hpc" => CkptPath::Hpc,
            p => CkptPath::Path(PathBuf::from(p)),
        }
    }
}

impl<P: AsRef<Path>> From<P> for CkptPath {
    fn from(p: P) -> Self {
        CkptPath::Path(p.as_ref().to_owned())
    }
}

/// Lightning's `Trainer`. Build it with [`Trainer::builder`].
pub struct Trainer {
    cfg: TrainerConfig,
    callbacks: Vec<Box<dyn Callback>>,
    run: RunState,
    saver: saver::Saver,
    /// The optimizers, schedulers and grad scaler of the last `fit` (kept for
    /// `save_checkpoint`; lent to a manual-optimization step while it runs).
    optim: Option<Optimizers>,
    /// The loggers (`logger` setting) and the connector in front of them.
    logging: logger::Logging,
    /// The distributed job (`strategy="ddp"`), once a `fit` joined it.
    world: Option<std::sync::Arc<ddp::World>>,
    /// DDP around the module during a `fit`.
    ddp: Option<ddp::Ddp>,
    /// FSDP around the module during a `fit` (and after it, for `save_checkpoint`).
    fsdp: Option<ddp::Fsdp>,
}

impl Trainer {
    fn new(
        cfg: TrainerConfig,
        callbacks: Vec<Box<dyn Callback>>,
        loggers: crate::loggers::Loggers,
    ) -> Self {
        Trainer {
            saver: saver::Saver::new(cfg.async_checkpointing, cfg.checkpoint_io.clone()),
            cfg,
            callbacks,
            run: RunState::default(),
            optim: None,
            logging: logger::Logging::new(loggers),
            world: None,
            ddp: None,
            fsdp: None,
        }
    }

    /// A builder with Lightning's defaults.
    pub fn builder() -> TrainerBuilder {
        TrainerBuilder::default()
    }

    /// The settings.
    pub fn config(&self) -> &TrainerConfig {
        &self.cfg
    }

    /// The current epoch.
    pub fn current_epoch(&self) -> i64 {
        self.run.progress.epoch
    }

    /// Optimizer steps taken.
    pub fn global_step(&self) -> i64 {
        self.run.progress.global_step
    }

    /// How long the training loop of the latest `fit` waited for batches: loading them on
    /// its own thread (`num_workers(0)`), or for workers that had not loaded them yet. Small
    /// against the training time when the workers keep up.
    pub fn data_wait(&self) -> std::time::Duration {
        self.run.clock.data_wait
    }

    /// The metrics callbacks saw last (`trainer.callback_metrics`).
    pub fn callback_metrics(&self) -> &IndexMap<String, f64> {
        &self.run.metrics.callback_metrics
    }

    /// The log directory of the last run (`<root>/lightning_logs/version_N`): the first
    /// logger's, as Lightning's `trainer.log_dir` (a URL when `default_root_dir` is object
    /// storage: the logs are uploaded there).
    pub fn log_dir(&self) -> Option<PathBuf> {
        self.logging.log_dir()
    }

    /// The checkpoint the last `fit` resumed from (a path or URL), if it resumed.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.run.setup.resumed_from.as_deref()
    }

    /// Under `strategy="fsdp"`, the most bytes of whole (gathered) parameters this rank held
    /// at once beyond its shards during the last `fit`: the whole model's without
    /// [`crate::layers::FsdpUnit`]s, about the root's plus one unit's with them.
    pub fn fsdp_peak_gathered_bytes(&self) -> Option<i64> {
        self.fsdp.as_ref().map(|f| f.peak_gathered_bytes())
    }

    /// Whether the last `fit` stopped because of SIGTERM/SIGUSR1.
    pub fn was_preempted(&self) -> bool {
        self.run.flags.preempted
    }

    /// The callbacks (including a default `ModelCheckpoint` added by `fit`).
    pub fn callbacks(&self) -> &[Box<dyn Callback>] {
        &self.callbacks
    }

    /// The first callback of type `C`.
    pub fn callback<C: Callback>(&self) -> Option<&C> {
        self.callbacks
            .iter()
            .find_map(|c| c.as_any().downcast_ref::<C>())
    }

    /// The first callback of type `C`, mutably.
    pub fn callback_mut<C: Callback>(&mut self) -> Option<&mut C> {
        self.callbacks
            .iter_mut()
            .find_map(|c| c.as_any_mut().downcast_mut::<C>())
    }

    /// Saves a checkpoint of `model` and the trainer's state (optimizer and schedulers of the
    /// last `fit`, callbacks, loops) to `path`; with `weights_only`, only the weights, loops and
    /// hyperparameters. Waits until the file is durable.
    pub fn save_checkpoint<M: LightningModule>(
        &mut self,
        model: &M,
        path: impl AsRef<Path>,
        weights_only: bool,
    ) -> Result<()> {
        let callbacks = self.callbacks.iter().map(|c| c.as_ref());
        let (optim, run) = (self.optim.as_ref(), &self.run);
        ddp::save_on_rank_zero(
            self.world.as_deref(),
            self.fsdp.as_ref(),
            &mut self.saver,
            path.as_ref(),
            true,
            || checkpoint_of(model, optim, callbacks, run, weights_only),
        )
    }

    /// Whether this process is global rank 0 (always, without `strategy="ddp"`): the one
    /// that writes checkpoints and logs.
    pub fn is_global_zero(&self) -> bool {
        ddp::writes_files(self.world.as_deref())
    }
}

/// The checkpoint of `model` and the run, in Lightning's layout (`dump_checkpoint`): the
/// callbacks' states, the datamodule's state under its name, then the callbacks'
/// `on_save_checkpoint` (not for weights-only files) and the module's `on_save_checkpoint`.
pub(crate) fn checkpoint_of<'c, M: LightningModule>(
    model: &M,
    optim: Option<&Optimizers>,
    callbacks: impl Iterator<Item = &'c dyn Callback>,
    run: &RunState,
    weights_only: bool,
) -> crate::value::Value {
    let callbacks: Vec<&dyn Callback> = callbacks.collect();
    let hp = model.hparams().to_value();
    let hyper_parameters = hp.as_dict().filter(|d| !d.is_empty()).cloned();
    let mut ckpt = Checkpoint {
        epoch: run.progress.epoch,
        global_step: run.progress.global_step,
        state_dict: match state_dict_to_value(&model.state_dict()) {
            crate::value::Value::OrderedDict(d) | crate::value::Value::Dict(d) => d,
            _ => Dict::new(),
        },
        loops: Some(run.loops()),
        hparams_name: hyper_parameters.as_ref().map(|_| "kwargs".to_owned()),
        hyper_parameters,
        resume: Some(run.resume_state()),
        datamodule: run
            .setup
            .datamodule
            .as_ref()
            .and_then(|d| Some((d.name.clone(), d.state_dict()?))),
        ..Checkpoint::default()
    };
    if !weights_only {
        ckpt.callbacks = Some(
            callbacks
                .iter()
                .map(|c| (Key::Str(c.state_key()), c.state_dict()))
                .collect(),
        );
        ckpt.optimizer_states = Some(optim.map_or(vec![], |o| {
            o.config
                .entries()
                .iter()
                .map(|e| e.optimizer.state_dict())
                .collect()
        }));
        ckpt.lr_schedulers = Some(optim.map_or(vec![], |o| {
            o.config
                .schedulers()
                .map(|(_, s)| s.scheduler.state_dict())
                .collect()
        }));
        ckpt.precision = optim
            .and_then(|o| o.scaler.as_ref())
            .map(|s| s.state_dict());
    }
    if let Some(hp) = &run.setup.datamodule_hparams {
        // Lightning's `dump_checkpoint`: after the module's hyperparameters.
        ckpt.extra.insert(
            Key::from("datamodule_hparams_name"),
            crate::value::Value::from("kwargs"),
        );
        ckpt.extra.insert(
            Key::from("datamodule_hyper_parameters"),
            crate::value::Value::Dict(hp.clone()),
        );
    }
    let mut value = ckpt.to_value();
    if !weights_only {
        for c in &callbacks {
            c.on_save_checkpoint(&mut value);
        }
    }
    model.on_save_checkpoint(&mut value);
    value
}

pub(crate) fn warn(msg: &str) {
    tracing::warn!("{msg}");
    eprintln!("warning: {msg}");
}

/// Validation every this many of an epoch's `n` training batches, when that is inside the epoch.
pub(crate) fn val_every(cfg: &TrainerConfig, n: usize) -> Option<usize> {
    cfg.val_check_interval
        .map(|l| l.apply(n).max(1))
        .filter(|&k| k < n)
}

/// Lightning's default `max_epochs`: 1000 when neither limit is set, else unbounded (-1).
pub(crate) fn effective_max_epochs(cfg: &TrainerConfig) -> i64 {
    match cfg.max_epochs {
        Some(e) => e,
        None if cfg.max_steps == -1 => 1000,
        None => -1,
    }
}

/// This `fit`'s epoch limit: the configured one plus the epochs callbacks added (-1:
/// unlimited).
pub(crate) fn max_epochs_of(cfg: &TrainerConfig, run: &state::RunState) -> i64 {
    match effective_max_epochs(cfg) {
        e if e < 0 => e,
        e => e + run.setup.extra_epochs,
    }
}

/// The datamodule's loaders must be present for the loop that needs them.
pub(crate) fn need<'a, T>(loader: Option<&'a T>, what: &str) -> Result<&'a T> {
    loader.ok_or_else(|| {
        Error::Config(format!(
            "`{what}` needs a {what} loader in the DataModule; none was given"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckpt_path_parse_reads_lightnings_strings() {
        assert_eq!(CkptPath::parse("last"), CkptPath::Last);
        assert_eq!(CkptPath::parse("best"), CkptPath::Best);
        // only the exact words are special: anything else is a file name
        assert_eq!(
            CkptPath::parse("Best"),
            CkptPath::Path(PathBuf::from("Best"))
        );
        assert_eq!(
            CkptPath::parse("runs/last.ckpt"),
            CkptPath::Path(PathBuf::from("runs/last.ckpt"))
        );
        assert_eq!(CkptPath::parse(""), CkptPath::Path(PathBuf::new()));
        assert_eq!(
            CkptPath::from("a/b.ckpt"),
            CkptPath::Path(PathBuf::from("a/b.ckpt"))
        );
    }
}
