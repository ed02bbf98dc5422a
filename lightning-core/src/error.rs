//! The crate's top-level error: one variant per concern, each wrapping that concern's own
//! `thiserror` enum so callers can match on what they need.

use crate::hparams::HparamError;
use crate::traverse::StateError;

/// Any error from lightning-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyperparameter could not be read, built or overridden.
    #[error(transparent)]
    Hparams(#[from] HparamError),
    /// A state_dict could not be loaded into a module.
    #[error(transparent)]
    State(#[from] StateError),
    /// A callback was misconfigured or failed (`ModelCheckpoint`, `EarlyStopping`).
    #[error(transparent)]
    Callback(#[from] crate::callbacks::CallbackError),
    /// An optimizer or LR scheduler could not be built or stepped (`?` in
    /// `configure_optimizers`).
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    /// A libtorch call failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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
