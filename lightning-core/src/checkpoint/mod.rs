//! Lightning-compatible `.ckpt` files: a `torch.save` zip holding a protocol-2 pickle.
//!
//! API contract (other modules code against it):
//! - [`save`] writes a [`Value`] tree (a dict) durably and atomically to a path.
//! - [`load`] reads a file into a [`Value`] tree with CPU tensors, never executing anything.
//! (Bodies are filled in by the checkpoint-format work.)

use crate::value::Value;
use std::path::{Path, PathBuf};

/// Errors reading or writing checkpoint files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// An OS error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid checkpoint.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where in the file.
        msg: String,
    },
}

/// Writes `ckpt` (a dict) to `path` as a Lightning/torch `.ckpt` file.
pub fn save(path: &Path, ckpt: &Value) -> Result<(), CheckpointError> {
    let _ = ckpt;
    Err(CheckpointError::Format {
        path: path.to_owned(),
        msg: "checkpoint writer not built yet".into(),
    })
}

/// Reads a `.ckpt` file into a value tree with CPU tensors.
pub fn load(path: &Path) -> Result<Value, CheckpointError> {
    Err(CheckpointError::Format {
        path: path.to_owned(),
        msg: "checkpoint reader not built yet".into(),
    })
}
