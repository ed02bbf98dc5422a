//! Errors of the distributed engine.

/// What went wrong in a store operation, a collective, or the DDP reducer.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// c10d raised an error: the operation (`"all_reduce"`, `"TCPStore::get"`, ...) and c10d's
    /// message (without its C++ backtrace). Timeouts and a peer that went away land here,
    /// with c10d's wording ("timed out", "Connection closed by peer", ...).
    #[error("{op} failed: {message}")]
    C10d {
        /// The operation that failed.
        op: &'static str,
        /// c10d's message.
        message: String,
    },
    /// An argument was rejected before calling c10d (a rank outside the group, ...).
    #[error("{op}: {message}")]
    InvalidArgument {
        /// The operation that was called.
        op: &'static str,
        /// What is wrong with the argument.
        message: String,
    },
    /// A launcher variable (`RANK`, `WORLD_SIZE`, `MASTER_PORT`, `SLURM_NTASKS`, ...) is
    /// missing or malformed.
    #[error(transparent)]
    Env(#[from] crate::env::EnvError),
}

impl DistError {
    /// The operation the error came from.
    pub fn op(&self) -> &'static str {
        match self {
            DistError::C10d { op, .. } | DistError::InvalidArgument { op, .. } => op,
            DistError::Env(_) => "environment",
        }
    }
}

/// `Result` with [`DistError`].
pub type Result<T, E = DistError> = std::result::Result<T, E>;
