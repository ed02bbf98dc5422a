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
//! - `loops`: the loop itself (one screen), with the hooks around it;
//! - [`restore`]: the checkpoint dict (Lightning 2.6 layout) and restoring from it;
//! - `logger`: metrics, `metrics.csv` and `hparams.yaml`; `progress`: the progress bar;
//! - `saver`: synchronous and background (async) checkpoint writes;
//! - `preempt`: SIGTERM/SIGUSR1 handling (finish the step, save, stop).

mod logger;
mod loops;
mod preempt;
mod progress;
pub mod restore;
mod saver;

use crate::callbacks::{Callback, TrainerContext};
use crate::error::{Error, Result};
use crate::lightning_module::{LightningModule, OptimizerConfig};
use crate::precision::{GradScaler, Precision};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

pub use restore::{RESUME_KEY, VERSION};

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
}

impl CkptPath {
    /// `"last"`, `"best"`, or a path (as Lightning's `ckpt_path` strings).
    pub fn parse(s: &str) -> Self {
        match s {
            "last" => CkptPath::Last,
            "best" => CkptPath::Best,
            p => CkptPath::Path(PathBuf::from(p)),
        }
    }
}

impl<P: AsRef<Path>> From<P> for CkptPath {
    fn from(p: P) -> Self {
        CkptPath::Path(p.as_ref().to_owned())
    }
}

/// How many batches of a loader to use: all, a count, or a fraction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// Every batch.
    All,
    /// At most this many batches.
    Batches(usize),
    /// This fraction of the batches (rounded down, at least 1 when > 0).
    Fraction(f64),
}

impl Limit {
    /// The number of batches to use out of `n`.
    pub fn apply(self, n: usize) -> usize {
        match self {
            Limit::All => n,
            Limit::Batches(b) => b.min(n),
            Limit::Fraction(f) if f <= 0.0 => 0,
            Limit::Fraction(f) => ((n as f64 * f.min(1.0)) as usize).max(1).min(n),
        }
    }
}

impl From<usize> for Limit {
    fn from(n: usize) -> Self {
        Limit::Batches(n)
    }
}
impl From<f64> for Limit {
    fn from(f: f64) -> Self {
        if f >= 1.0 {
            Limit::All
        } else {
            Limit::Fraction(f)
        }
    }
}

/// Gradient clipping by total norm or by value (`gradient_clip_algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClipAlgorithm {
    /// Scale all gradients so their total 2-norm is at most the clip value.
    #[default]
    Norm,
    /// Clamp every gradient element to `[-v, v]`.
    Value,
}

/// The trainer's settings (see [`TrainerBuilder`] for each one's meaning and default).
#[derive(Clone, Debug)]
pub struct TrainerConfig {
    pub max_epochs: Option<i64>,
    pub max_steps: i64,
    pub default_root_dir: PathBuf,
    pub enable_checkpointing: bool,
    pub val_check_interval: Option<Limit>,
    pub check_val_every_n_epoch: usize,
    pub limit_train_batches: Limit,
    pub limit_val_batches: Limit,
    pub limit_test_batches: Limit,
    pub limit_predict_batches: Limit,
    pub num_sanity_val_steps: usize,
    pub gradient_clip_val: Option<f64>,
    pub gradient_clip_algorithm: ClipAlgorithm,
    pub accumulate_grad_batches: usize,
    pub precision: String,
    pub seed: Option<u64>,
    pub device: Device,
    pub enable_progress_bar: bool,
    pub logger: bool,
    pub log_every_n_steps: usize,
    pub async_checkpointing: bool,
    pub handle_signals: bool,
    pub on_save_error: SaveErrorPolicy,
}

/// What the trainer does when writing a checkpoint fails (disk full, file too large,
/// unwritable directory). Either way the failed file never appears under its final name
/// and older checkpoints are kept (the checkpoint callback's bookkeeping is not updated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SaveErrorPolicy {
    /// Stop training and return the error from `fit` (the default).
    #[default]
    Stop,
    /// Log a warning and keep training (the next save tries again).
    WarnAndContinue,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            max_epochs: None,
            max_steps: -1,
            default_root_dir: PathBuf::from("."),
            enable_checkpointing: true,
            val_check_interval: None,
            check_val_every_n_epoch: 1,
            limit_train_batches: Limit::All,
            limit_val_batches: Limit::All,
            limit_test_batches: Limit::All,
            limit_predict_batches: Limit::All,
            num_sanity_val_steps: 2,
            gradient_clip_val: None,
            gradient_clip_algorithm: ClipAlgorithm::Norm,
            accumulate_grad_batches: 1,
            precision: "32-true".into(),
            seed: None,
            device: Device::Cpu,
            enable_progress_bar: true,
            logger: true,
            log_every_n_steps: 50,
            async_checkpointing: false,
            handle_signals: true,
            on_save_error: SaveErrorPolicy::Stop,
        }
    }
}

/// Builds a [`Trainer`]; every setting has Lightning's default.
#[derive(Default)]
pub struct TrainerBuilder {
    cfg: TrainerConfig,
    callbacks: Vec<Box<dyn Callback>>,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $field:ident = $conv:expr) => {
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            #[allow(clippy::redundant_closure_call)]
            {
                self.cfg.$field = ($conv)(v);
            }
            self
        }
    };
}

impl TrainerBuilder {
    setter!(/// Stop after this many epochs (default 1000 when `max_steps` is also unset; -1: no limit).
        max_epochs: i64 => max_epochs = Some);
    setter!(/// Stop after this many optimizer steps (-1: no limit, the default).
        max_steps: i64 => max_steps = |v| v);
    setter!(/// Whether to checkpoint automatically (a default `ModelCheckpoint` when none is given);
        /// `false` writes no checkpoint files.
        enable_checkpointing: bool => enable_checkpointing = |v| v);
    setter!(/// Validate within the epoch: every `n` training batches (`10usize`) or every
        /// fraction of the epoch (`0.25`); default once at the end of each epoch (`1.0`).
        val_check_interval: impl Into<Limit> => val_check_interval = |v| Some(Into::<Limit>::into(v)));
    setter!(/// Validate every this many epochs (default 1).
        check_val_every_n_epoch: usize => check_val_every_n_epoch = |v: usize| v.max(1));
    setter!(/// Use only part of the training batches per epoch.
        limit_train_batches: impl Into<Limit> => limit_train_batches = Into::into);
    setter!(/// Use only part of the validation batches.
        limit_val_batches: impl Into<Limit> => limit_val_batches = Into::into);
    setter!(/// Use only part of the test batches.
        limit_test_batches: impl Into<Limit> => limit_test_batches = Into::into);
    setter!(/// Use only part of the predict batches.
        limit_predict_batches: impl Into<Limit> => limit_predict_batches = Into::into);
    setter!(/// Validation batches run before training as a sanity check (default 2).
        num_sanity_val_steps: usize => num_sanity_val_steps = |v| v);
    setter!(/// Clip gradients (by total norm unless `gradient_clip_algorithm(Value)`).
        gradient_clip_val: f64 => gradient_clip_val = Some);
    setter!(/// How `gradient_clip_val` clips.
        gradient_clip_algorithm: ClipAlgorithm => gradient_clip_algorithm = |v| v);
    setter!(/// Accumulate gradients over this many batches per optimizer step (default 1).
        accumulate_grad_batches: usize => accumulate_grad_batches = |v: usize| v.max(1));
    setter!(/// `"32-true"` (default), `"16-mixed"` or `"bf16-mixed"`.
        precision: &str => precision = |v: &str| v.to_owned());
    setter!(/// Seed for weights-independent randomness: shuffling and per-step RNG (dropout).
        /// Without one a random seed is drawn and saved in checkpoints.
        seed: u64 => seed = Some);
    setter!(/// The device to train on (default CPU).
        device: Device => device = |v| v);
    setter!(/// Show a progress bar (only when stdout is a terminal; default on).
        enable_progress_bar: bool => enable_progress_bar = |v| v);
    setter!(/// Write `metrics.csv` and `hparams.yaml` to `lightning_logs/version_N` (default on).
        logger: bool => logger = |v| v);
    setter!(/// Write training-step metrics every this many steps (default 50).
        log_every_n_steps: usize => log_every_n_steps = |v: usize| v.max(1));
    setter!(/// Write checkpoints in the background after a host-memory snapshot (default off).
        async_checkpointing: bool => async_checkpointing = |v| v);
    setter!(/// What to do when a checkpoint cannot be written (default: stop with the error).
        on_save_error: SaveErrorPolicy => on_save_error = |v| v);
    setter!(/// On SIGTERM/SIGUSR1: finish the step, save `last.ckpt`, stop (default on).
        handle_signals: bool => handle_signals = |v| v);

    /// Where logs and default checkpoints go (default: the current directory).
    pub fn default_root_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cfg.default_root_dir = dir.as_ref().to_owned();
        self
    }

    /// Adds a callback (hooks run in the order added).
    pub fn callback(mut self, cb: impl Callback) -> Self {
        self.callbacks.push(Box::new(cb));
        self
    }

    /// Adds a boxed callback.
    pub fn boxed_callback(mut self, cb: Box<dyn Callback>) -> Self {
        self.callbacks.push(cb);
        self
    }

    /// Checks the settings and builds the trainer.
    pub fn build(self) -> Result<Trainer> {
        let cfg = self.cfg;
        let precision: Precision = cfg
            .precision
            .parse()
            .map_err(|e: crate::precision::PrecisionError| Error::Msg(e.to_string()))?;
        if cfg.gradient_clip_val.is_some_and(|v| v.is_nan() || v < 0.0) {
            return Err(Error::Msg(format!(
                "gradient_clip_val must be >= 0, got {:?}",
                cfg.gradient_clip_val
            )));
        }
        if cfg.max_steps < -1 || cfg.max_epochs.is_some_and(|e| e < -1) {
            return Err(Error::Msg("max_epochs and max_steps must be >= -1".into()));
        }
        Ok(Trainer {
            precision,
            cfg,
            callbacks: self.callbacks,
            run: RunState::default(),
            saver: saver::Saver::default(),
            optim: None,
            logger: None,
            cb_states: Vec::new(),
        })
    }
}

/// Progress of the run: what the loop state dict saves and a resume restores.
#[derive(Default)]
pub(crate) struct RunState {
    pub epoch: i64,
    pub global_step: i64,
    /// Training batches of `epoch` already run.
    pub batches_consumed: usize,
    /// How far the end-of-epoch sequence of `epoch` got (see [`loops::EpochEnd`]).
    pub epoch_end: u8,
    /// Training batches run in total.
    pub total_batches: i64,
    pub val_batches: i64,
    pub seed: u64,
    pub metrics: logger::MetricStore,
    pub train_time_before: Duration,
    pub train_started: Option<Instant>,
    pub sanity_checking: bool,
    pub is_last_batch: bool,
    pub resumed_from: Option<PathBuf>,
    /// Whether `fit` (not validate/test/predict) is running.
    pub fitting: bool,
    /// Validation batches per validation run in this `fit`.
    pub num_val_batches: usize,
    /// Whether a validation run completed in this `fit`.
    pub val_ran: bool,
    /// Validate after every this many training batches inside an epoch (`val_check_interval`).
    pub val_every: Option<usize>,
    pub should_stop: bool,
    /// The gradient scaler of `16-mixed`.
    pub scaler: Option<GradScaler>,
    pub preempted: bool,
}

impl RunState {
    fn train_time(&self) -> Duration {
        self.train_time_before + self.train_started.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// Lightning's `Trainer`. Build it with [`Trainer::builder`].
pub struct Trainer {
    cfg: TrainerConfig,
    precision: Precision,
    callbacks: Vec<Box<dyn Callback>>,
    run: RunState,
    saver: saver::Saver,
    /// The optimizer and schedulers of the last `fit` (kept for `save_checkpoint`).
    optim: Option<OptimizerConfig>,
    logger: Option<logger::CsvLogger>,
    /// The callbacks' states as of their last hook (what a checkpoint saved from another
    /// callback's hook records for them).
    cb_states: Vec<(String, crate::value::Value)>,
}

impl Trainer {
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
        self.run.epoch
    }

    /// Optimizer steps taken.
    pub fn global_step(&self) -> i64 {
        self.run.global_step
    }

    /// The metrics callbacks saw last (`trainer.callback_metrics`).
    pub fn callback_metrics(&self) -> &IndexMap<String, f64> {
        &self.run.metrics.callback_metrics
    }

    /// The log directory of the last run (`<root>/lightning_logs/version_N`).
    pub fn log_dir(&self) -> Option<&Path> {
        self.logger.as_ref().map(|l| l.dir())
    }

    /// Whether the last `fit` stopped because of SIGTERM/SIGUSR1.
    pub fn was_preempted(&self) -> bool {
        self.run.preempted
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
        let states: Vec<(String, crate::value::Value)> = self
            .callbacks
            .iter()
            .map(|c| (c.state_key(), c.state_dict()))
            .collect();
        let ckpt = restore::dump(model, self.optim.as_ref(), &states, &self.run, weights_only);
        self.saver.save(path.as_ref(), ckpt)?;
        self.saver.wait()
    }
}

/// What callbacks see during `fit`: the trainer's parts except the callback being called.
pub(crate) struct Ctx<'a, M: LightningModule> {
    pub model: &'a M,
    pub optim: Option<&'a OptimizerConfig>,
    pub run: &'a RunState,
    pub cfg: &'a TrainerConfig,
    pub saver: &'a mut saver::Saver,
    pub log_dir: Option<PathBuf>,
    /// States of every callback in order; the caller's slot holds its pre-hook state.
    pub states: &'a mut Vec<(String, crate::value::Value)>,
    pub caller: usize,
    /// Set by [`TrainerContext::request_stop`]; the trainer stops after the hook.
    pub stop_requested: bool,
}

impl<M: LightningModule> Ctx<'_, M> {
    fn save(&mut self, path: &Path, weights_only: bool) -> Result<()> {
        let ckpt = restore::dump(self.model, self.optim, self.states, self.run, weights_only);
        self.saver.save(path, ckpt)
    }
}

impl<M: LightningModule> TrainerContext for Ctx<'_, M> {
    fn current_epoch(&self) -> i64 {
        self.run.epoch
    }
    fn global_step(&self) -> i64 {
        self.run.global_step
    }
    fn callback_metrics(&self) -> &IndexMap<String, f64> {
        &self.run.metrics.callback_metrics
    }
    fn save_checkpoint(&mut self, path: &Path, weights_only: bool) -> Result<()> {
        self.save(path, weights_only)
    }
    fn save_checkpoint_from(
        &mut self,
        path: &Path,
        weights_only: bool,
        caller: &dyn Callback,
    ) -> Result<()> {
        if let Some(slot) = self.states.get_mut(self.caller) {
            *slot = (caller.state_key(), caller.state_dict());
        }
        self.save(path, weights_only)
    }
    fn wait_for_pending_saves(&mut self) -> Result<()> {
        self.saver.wait()
    }
    fn save_in_flight(&self) -> bool {
        self.saver.in_flight()
    }
    fn log_dir(&self) -> Option<PathBuf> {
        self.log_dir.clone()
    }
    fn default_root_dir(&self) -> PathBuf {
        self.cfg.default_root_dir.clone()
    }
    fn resumed_from(&self) -> Option<PathBuf> {
        self.run.resumed_from.clone()
    }
    fn train_time(&self) -> Duration {
        self.run.train_time()
    }
    fn sanity_checking(&self) -> bool {
        self.run.sanity_checking
    }
    fn is_last_batch(&self) -> bool {
        self.run.is_last_batch
    }
    fn is_fitting(&self) -> bool {
        self.run.fitting
    }
    fn num_val_batches(&self) -> usize {
        self.run.num_val_batches
    }
    fn check_val_every_n_epoch(&self) -> Option<i64> {
        Some(self.cfg.check_val_every_n_epoch as i64)
    }
    fn val_check_within_epoch(&self) -> bool {
        self.run.val_every.is_some()
    }
    fn validation_ran(&self) -> bool {
        self.run.val_ran
    }
    fn request_stop(&mut self) {
        self.stop_requested = true;
    }
}

/// A callback hook, as a function of the callback and the context.
pub(crate) type Hook = fn(&mut dyn Callback, &mut dyn TrainerContext) -> Result<()>;

/// Clips the gradients of `params` as `torch.nn.utils.clip_grad_{norm,value}_`.
pub(crate) fn clip_gradients(params: &[Tensor], value: f64, algo: ClipAlgorithm) -> Result<()> {
    let r = match algo {
        ClipAlgorithm::Norm => crate::optim::clip_grad_norm(params, value, 2.0).map(drop),
        ClipAlgorithm::Value => crate::optim::clip_grad_value(params, value),
    };
    r.map_err(|e| Error::Msg(format!("gradient clipping: {e}")))
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

/// The datamodule's loaders must be present for the loop that needs them.
pub(crate) fn need<'a, T>(loader: Option<&'a T>, what: &str) -> Result<&'a T> {
    loader.ok_or_else(|| {
        Error::Msg(format!(
            "`{what}` needs a {what} loader in the DataModule; none was given"
        ))
    })
}
