//! The trainer's settings and their builder, with Lightning's names and defaults.

use super::strategy::{Accelerator, Strategy, StrategyError};
use super::Trainer;
use crate::callbacks::Callback;
use crate::error::{Error, Result};
use crate::loggers::Loggers;
use crate::optim::ClipAlgorithm;
use crate::precision::{Precision, PrecisionError};
use crate::storage::{CheckpointIO, DefaultCheckpointIO};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

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
    pub fast_dev_run: usize,
    pub overfit_batches: Option<Limit>,
    pub gradient_clip_val: Option<f64>,
    pub gradient_clip_algorithm: ClipAlgorithm,
    pub accumulate_grad_batches: usize,
    pub precision: Precision,
    pub seed: Option<u64>,
    pub device: Device,
    pub enable_progress_bar: bool,
    pub enable_model_summary: bool,
    pub log_every_n_steps: usize,
    pub async_checkpointing: bool,
    pub handle_signals: bool,
    pub on_save_error: SaveErrorPolicy,
    pub strategy: Strategy,
    pub accelerator: Accelerator,
    pub devices: usize,
    pub num_nodes: usize,
    /// Where checkpoint files are written, read, listed and removed (default: local paths on
    /// the file system, `s3://`/`gs://`/`az://` URLs on object storage).
    pub checkpoint_io: Arc<dyn CheckpointIO>,
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
            fast_dev_run: 0,
            overfit_batches: None,
            gradient_clip_val: None,
            gradient_clip_algorithm: ClipAlgorithm::Norm,
            accumulate_grad_batches: 1,
            precision: Precision::F32,
            seed: None,
            device: Device::Cpu,
            enable_progress_bar: true,
            enable_model_summary: true,
            log_every_n_steps: 50,
            async_checkpointing: false,
            handle_signals: true,
            on_save_error: SaveErrorPolicy::Stop,
            strategy: Strategy::Auto,
            accelerator: Accelerator::Cpu,
            devices: 1,
            num_nodes: 1,
            checkpoint_io: Arc::new(DefaultCheckpointIO),
        }
    }
}

/// Builds a [`Trainer`]; every setting has Lightning's default.
#[derive(Default)]
pub struct TrainerBuilder {
    cfg: TrainerConfig,
    callbacks: Vec<Box<dyn Callback>>,
    /// A precision spelling that did not parse (reported by `build`).
    precision_error: Option<PrecisionError>,
    /// A strategy or accelerator name that did not parse (reported by `build`).
    strategy_error: Option<StrategyError>,
    loggers: Loggers,
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
    setter!(/// Seed for weights-independent randomness: shuffling and per-step RNG (dropout).
        /// Without one a random seed is drawn and saved in checkpoints.
        seed: u64 => seed = Some);
    setter!(/// The device to train on (default CPU).
        device: Device => device = |v| v);
    setter!(/// Show a progress bar (default on) when stdout is a terminal; otherwise (a job's
        /// log) print one line per epoch instead (batches, time, it/s, metrics).
        enable_progress_bar: bool => enable_progress_bar = |v| v);
    setter!(/// Print the model summary (submodules, parameter counts, size) when `fit` starts, as
        /// Lightning does (default on; rank 0 only).
        enable_model_summary: bool => enable_model_summary = |v| v);
    setter!(/// Write training-step metrics every this many steps (default 50).
        log_every_n_steps: usize => log_every_n_steps = |v: usize| v.max(1));
    setter!(/// Write checkpoints in the background after a host-memory snapshot (default off).
        async_checkpointing: bool => async_checkpointing = |v| v);
    setter!(/// What to do when a checkpoint cannot be written (default: stop with the error).
        on_save_error: SaveErrorPolicy => on_save_error = |v| v);
    setter!(/// On SIGTERM/SIGUSR1: finish the step, save `last.ckpt`, stop (default on).
        handle_signals: bool => handle_signals = |v| v);

    /// Lightning's `logger`: `true` (the default: a [`CsvLogger`](crate::loggers::CsvLogger)
    /// writing `metrics.csv` and `hparams.yaml` to `<default_root_dir>/lightning_logs/version_N`),
    /// `false` (no logging), one logger (`CsvLogger`, [`TensorBoardLogger`]), or several: a
    /// tuple `(tb, csv)` or a `Vec<Box<dyn Logger>>`. Loggers with the same save directory and
    /// name share one `version_N`.
    ///
    /// [`TensorBoardLogger`]: crate::loggers::TensorBoardLogger
    pub fn logger(mut self, loggers: impl Into<Loggers>) -> Self {
        self.loggers = loggers.into();
        self
    }

    /// Where logs and default checkpoints go (default: the current directory).
    pub fn default_root_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cfg.default_root_dir = dir.as_ref().to_owned();
        self
    }

    /// Where checkpoints are written, read, listed and removed (Lightning's
    /// `Trainer(plugins=[CheckpointIO])`); replaces the default, which picks local files or
    /// object storage by the path. `async_checkpointing` wraps it.
    pub fn checkpoint_io(mut self, io: impl CheckpointIO + 'static) -> Self {
        self.cfg.checkpoint_io = Arc::new(io);
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

    /// `"32-true"` (default), `"16-mixed"` or `"bf16-mixed"` (Lightning's spellings, also
    /// `"32"`, `"16"`, `"bf16"`), or a [`Precision`]. A spelling Lightning does not know is an
    /// error from [`TrainerBuilder::build`].
    pub fn precision<P>(mut self, p: P) -> Self
    where
        P: TryInto<Precision>,
        PrecisionError: From<P::Error>,
    {
        match p.try_into() {
            Ok(p) => self.cfg.precision = p,
            Err(e) => self.precision_error = Some(PrecisionError::from(e)),
        }
        self
    }

    /// `"auto"` (one process, the default) or `"ddp"` (one process per device, see
    /// [`Strategy::Ddp`]), or a [`Strategy`] with options.
    pub fn strategy<S>(mut self, s: S) -> Self
    where
        S: TryInto<Strategy>,
        StrategyError: From<S::Error>,
    {
        match s.try_into() {
            Ok(s) => self.cfg.strategy = s,
            Err(e) => self.strategy_error = Some(StrategyError::from(e)),
        }
        self
    }

    /// `"cpu"` (default), `"cuda"`/`"gpu"` or `"auto"`, or an [`Accelerator`].
    pub fn accelerator<A>(mut self, a: A) -> Self
    where
        A: TryInto<Accelerator>,
        StrategyError: From<A::Error>,
    {
        match a.try_into() {
            Ok(a) => self.cfg.accelerator = a,
            Err(e) => self.strategy_error = Some(StrategyError::from(e)),
        }
        self
    }

    setter!(/// Processes (devices) per node for `strategy="ddp"` (default 1).
        devices: usize => devices = |v| v);
    setter!(/// Nodes of a `strategy="ddp"` job (default 1).
        num_nodes: usize => num_nodes = |v| v);

    /// Lightning's `fast_dev_run`: run `n` batches of training, validation (and test,
    /// predict) once, to check the code: `max_steps = n`, one epoch, no sanity check; logging
    /// and checkpointing are suppressed (`true` in Lightning is 1; 0: off).
    pub fn fast_dev_run(mut self, n: usize) -> Self {
        self.cfg.fast_dev_run = n;
        self
    }

    /// Lightning's `overfit_batches`: train and validate on this many (or this fraction of)
    /// batches, without shuffling, epoch after epoch.
    pub fn overfit_batches(mut self, limit: impl Into<Limit>) -> Self {
        let l = limit.into();
        self.cfg.overfit_batches = match l {
            Limit::Batches(0) => None,
            Limit::Fraction(f) if f <= 0.0 => None,
            l => Some(l),
        };
        self
    }

    /// Checks the settings and builds the trainer.
    pub fn build(self) -> Result<Trainer> {
        let mut cfg = self.cfg;
        let mut loggers = self.loggers;
        // Lightning's `_init_debugging_flags`.
        if cfg.fast_dev_run > 0 {
            let n = cfg.fast_dev_run;
            if cfg.overfit_batches.is_none() {
                cfg.limit_train_batches = Limit::Batches(n);
                cfg.limit_val_batches = Limit::Batches(n);
            }
            cfg.limit_test_batches = Limit::Batches(n);
            cfg.limit_predict_batches = Limit::Batches(n);
            cfg.max_steps = n as i64;
            cfg.num_sanity_val_steps = 0;
            cfg.max_epochs = Some(1);
            cfg.val_check_interval = None;
            cfg.check_val_every_n_epoch = 1;
            loggers = Loggers::from(false);
            println!(
                "Running in `fast_dev_run` mode: will run the requested loop using {n} batch(es). \
                 Logging and checkpointing is suppressed."
            );
        }
        if let Some(l) = cfg.overfit_batches {
            cfg.limit_train_batches = l;
            cfg.limit_val_batches = l;
        }
        if let Some(e) = self.precision_error {
            return Err(e.into());
        }
        if let Some(e) = self.strategy_error {
            return Err(Error::Config(e.to_string()));
        }
        if cfg.devices == 0 || cfg.num_nodes == 0 {
            return Err(Error::Config(format!(
                "devices and num_nodes must be >= 1, got devices={} num_nodes={}",
                cfg.devices, cfg.num_nodes
            )));
        }
        if cfg.strategy == Strategy::Auto && cfg.devices * cfg.num_nodes > 1 {
            return Err(Error::Config(format!(
                "devices={} x num_nodes={} needs strategy=\"ddp\"",
                cfg.devices, cfg.num_nodes
            )));
        }
        if cfg.gradient_clip_val.is_some_and(|v| v.is_nan() || v < 0.0) {
            return Err(Error::Config(format!(
                "gradient_clip_val must be >= 0, got {:?}",
                cfg.gradient_clip_val
            )));
        }
        if cfg.max_steps < -1 || cfg.max_epochs.is_some_and(|e| e < -1) {
            return Err(Error::Config(
                "max_epochs and max_steps must be >= -1".into(),
            ));
        }
        Ok(Trainer::new(cfg, self.callbacks, loggers))
    }
}
