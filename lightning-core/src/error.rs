//! The crate's top-level error: one variant per concern, each wrapping that concern's own
//! `thiserror` enum so callers can match on what they need.

use crate::checkpoint::schema::SchemaError;
use crate::checkpoint::CheckpointError;
use crate::hparams::HparamError;
use crate::traverse::StateError;
use std::path::PathBuf;

/// Any error from lightning-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyperparameter could not be read, built or overridden.
    #[error(transparent)]
    Hparams(#[from] HparamError),
    /// A state_dict could not be loaded into a module.
    #[error(transparent)]
    State(#[from] StateError),
    /// A module lacks a hook the run needs, or misuses manual optimization.
    #[error(transparent)]
    Module(#[from] crate::lightning_module::error::ModuleError),
    /// `load_from_checkpoint`'s options did not fit (`hparams_file`, `weights_only`,
    /// `map_location`); names the file.
    #[error(transparent)]
    Loader(#[from] crate::checkpoint_loader::error::LoaderError),
    /// A dataset, batch, loader state or sampler was misused (names the index, rows or rank).
    #[error(transparent)]
    Data(#[from] crate::data::error::DataError),
    /// A checkpoint's `state_dict` holds something a module cannot load (names the entry).
    #[error(transparent)]
    StateDict(#[from] crate::traverse::StateDictError),
    /// A callback was misconfigured or failed (`ModelCheckpoint`, `EarlyStopping`).
    #[error(transparent)]
    Callback(#[from] crate::callbacks::error::CallbackError),
    /// An optimizer or LR scheduler could not be built or stepped (`?` in
    /// `configure_optimizers`).
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    /// A trainer setting is invalid, or a loop lacks what it needs (a loader, an optimizer, a
    /// best checkpoint); the message names the setting and the fix.
    #[error("{0}")]
    Config(String),
    /// `ckpt_path` names no file.
    #[error("Checkpoint file not found: {}", .0.display())]
    CheckpointNotFound(PathBuf),
    /// The precision setting is not one Lightning knows (`"fp8"`, ...).
    #[error(transparent)]
    Precision(#[from] crate::precision::PrecisionError),
    /// The precision's autocast is not available on the trainer's device.
    #[error(transparent)]
    Autocast(#[from] crate::precision::AutocastError),
    /// A checkpoint could not be written; nothing on disk was replaced or deleted.
    #[error("saving checkpoint {}", save_message(path, source))]
    Save {
        /// The checkpoint's path.
        path: PathBuf,
        /// What went wrong (a full disk names the bytes needed).
        #[source]
        source: CheckpointError,
    },
    /// A checkpoint file could not be read (missing, corrupt, not a checkpoint).
    #[error("loading checkpoint: {0}")]
    Load(#[source] CheckpointError),
    /// A checkpoint was read but the run (or module) could not be restored from it.
    #[error("{}: {source}", path.display())]
    Restore {
        /// The checkpoint's path.
        path: PathBuf,
        /// What did not fit.
        #[source]
        source: RestoreError,
    },
    /// A training or optimizer step failed (non-finite loss backward, optimizer state).
    #[error("{what} (epoch {epoch}, batch {batch}): {source}")]
    Step {
        /// What was being done (`backward of training_step's loss`, `optimizer step`, ...).
        what: &'static str,
        /// The epoch.
        epoch: i64,
        /// The batch index within the epoch.
        batch: usize,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// A libtorch call failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A logger could not write its files (`metrics.csv`, an event file, `hparams.yaml`).
    #[error(transparent)]
    Logger(#[from] crate::loggers::LoggerError),
    /// An I/O error outside the checkpoint format (logs, directories).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, with a message that says what and where.
    #[error("{0}")]
    Msg(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a checkpoint could not be restored into a run or a module.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The checkpoint dict does not have Lightning's shape.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The file holds only the model: `fit` cannot resume from it.
    #[error(
        "cannot resume training from this checkpoint: it holds only the model (no \
         `optimizer_states`), probably because it was saved with \
         `ModelCheckpoint(save_weights_only=true)` or `save_checkpoint(.., weights_only=true)`"
    )]
    WeightsOnly,
    /// The file has a different number of optimizers or LR schedulers than the module
    /// configures.
    #[error("checkpoint has {found} {what} states, the model configures {configured}")]
    Count {
        /// `optimizer` or `LR scheduler`.
        what: &'static str,
        /// How many the file has.
        found: usize,
        /// How many `configure_optimizers` returned.
        configured: usize,
    },
    /// An optimizer, scheduler or grad scaler state did not load.
    #[error("restoring {what}: {source}")]
    Optim {
        /// `the optimizer`, `LR scheduler 0`, `the grad scaler`.
        what: String,
        /// The cause.
        #[source]
        source: crate::optim::OptimError,
    },
    /// The module's `state_dict` did not load.
    #[error(transparent)]
    State(#[from] StateError),
    /// The datamodule's saved state did not load.
    #[error("restoring the datamodule state {name:?}: {source}")]
    DataModule {
        /// The key the state is saved under (the datamodule's name).
        name: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
    /// A callback's saved state did not load.
    #[error("restoring callback {key}: {source}")]
    Callback {
        /// The callback's state key.
        key: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
}

/// `PATH: error`, naming the path once (the checkpoint error usually names it already).
fn save_message(path: &std::path::Path, source: &CheckpointError) -> String {
    if source.path() == path {
        source.to_string()
    } else {
        format!("{}: {source}", path.display())
    }
}
