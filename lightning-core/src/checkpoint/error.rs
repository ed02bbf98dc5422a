//! [`CheckpointError`]: what can go wrong reading, writing or storing a checkpoint file. Its
//! own file so that the storage layer below the format can name it.

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
    /// The disk is full or the file-size limit was reached while saving (ENOSPC, EDQUOT,
    /// EFBIG); the temporary file was removed and any older file at `path` is untouched.
    #[error("{path}: not enough space to save the checkpoint ({needed} bytes needed): {source}")]
    NoSpace {
        /// The final path of the checkpoint.
        path: PathBuf,
        /// Bytes the file needs.
        needed: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends before a structure it declares.
    #[error("{path}: truncated file: {what} needs {needed} bytes, the file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// The offset it needs to reach.
        needed: u64,
        /// The file's (or the pickle's) length.
        len: u64,
    },
    /// A record's data does not match its CRC-32 (the file is corrupt).
    #[error("{path}: record {record} is corrupt: CRC-32 {found:08x}, expected {expected:08x}")]
    Crc {
        /// The file.
        path: PathBuf,
        /// The zip record.
        record: String,
        /// CRC from the directory.
        expected: u32,
        /// CRC of the data.
        found: u32,
    },
    /// The pickle references a global outside the allowlist (as `weights_only=True` would).
    #[error(
        "{path}: the checkpoint references `{global}`, which is not allowed: only plain \
         containers, numbers, strings and tensors are loaded (nothing is ever executed)"
    )]
    DisallowedGlobal {
        /// The file.
        path: PathBuf,
        /// `module.name`.
        global: String,
    },
    /// Something valid in torch but not supported here (a dtype, compression, bytes values).
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What.
        what: String,
    },
    /// An object store (`s3://`, `gs://`, ...) refused or failed a request.
    #[error("{path}: {what}: {source}")]
    Remote {
        /// The object's URL.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An item of a sharded (DCP) checkpoint could not be read: the error names its key.
    #[error("item {key:?} of the sharded checkpoint: {source}")]
    Item {
        /// The item's flattened key (`model.0.weight`).
        key: String,
        /// What went wrong reading it (its file, and where).
        #[source]
        source: Box<CheckpointError>,
    },
    /// A safety limit was reached (nesting depth, shared-reference explosion).
    #[error("{path}: limit exceeded: {what}")]
    Limit {
        /// The file.
        path: PathBuf,
        /// Which limit.
        what: String,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CheckpointError::Io { path, .. }
            | CheckpointError::Format { path, .. }
            | CheckpointError::NoSpace { path, .. }
            | CheckpointError::Truncated { path, .. }
            | CheckpointError::Crc { path, .. }
            | CheckpointError::DisallowedGlobal { path, .. }
            | CheckpointError::Unsupported { path, .. }
            | CheckpointError::Limit { path, .. }
            | CheckpointError::Remote { path, .. } => path,
            CheckpointError::Item { source, .. } => source.path(),
        }
    }
}
