//! Where checkpoints live: [`CheckpointIO`], Lightning's checkpoint-IO plugin.
//!
//! The trainer writes, reads, lists, links and deletes checkpoint files only through a
//! [`CheckpointIO`]. The default, [`DefaultCheckpointIO`], picks the storage by the path, as
//! Lightning's fsspec paths do:
//! - a local path: the durable atomic writer of [`crate::checkpoint::save`] (temporary file,
//!   fsync, rename), symlinks for `last`;
//! - `s3://bucket/key`, `gs://`, `az://` (and `abfs[s]://`, `adl://`, `azure://`), and the
//!   in-process `memory://`: object storage through the `object_store` crate, with
//!   credentials and endpoints from the environment as it reads them (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...; for S3 the
//!   `AWS_PROFILE` of `~/.aws/credentials` and `~/.aws/config` fills in the rest). Saves are
//!   streamed multipart uploads that appear only once complete; `last` is a server-side copy.
//!   A failed request is retried with backoff ([`RETRIES_ENV`] sets how many times).
//!
//! [`crate::checkpoint::load`], [`crate::checkpoint::save`] and [`crate::checkpoint::verify`]
//! accept URLs too, so `load_from_checkpoint("s3://...")`, hparams files and `lightning-ckpt`
//! work on object storage without a trainer. Object storage is lightning-core's
//! `object-storage` cargo feature (on by default); without it a URL is an error naming it.
//!
//! A custom [`CheckpointIO`] (set with `Trainer::builder().checkpoint_io(..)`) replaces the
//! default for every file the trainer touches; async checkpointing wraps whichever is set
//! (the snapshot is taken on the step thread, the IO's `save_checkpoint` runs on the writer
//! thread).
//!
//! ```
//! # #[cfg(feature = "object-storage")] {
//! use lightning_core::storage::{CheckpointIO, DefaultCheckpointIO};
//! use lightning_core::Value;
//! use std::path::Path;
//!
//! let io = DefaultCheckpointIO;
//! let mut ckpt = Value::dict();
//! ckpt.insert("epoch", 3i64);
//! let url = Path::new("memory://doc-bucket/run/last.ckpt");
//! io.save_checkpoint(&ckpt, url)?;
//! assert!(io.exists(url)?);
//! assert_eq!(io.load_checkpoint(url)?, ckpt);
//! assert_eq!(io.list(Path::new("memory://doc-bucket/run"))?.len(), 1);
//! io.remove_checkpoint(url)?;
//! assert!(!io.exists(url)?);
//! # }
//! # Ok::<(), lightning_core::checkpoint::CheckpointError>(())
//! ```

#[cfg(feature = "object-storage")]
mod aws_profile;
#[cfg(feature = "object-storage")]
pub(crate) mod object;
// Without the feature, every URL is an error naming it.
#[cfg(not(feature = "object-storage"))]
pub(crate) mod object_disabled;
#[cfg(not(feature = "object-storage"))]
pub(crate) use object_disabled as object;
mod urls;

#[cfg(feature = "object-storage")]
pub use object::RETRIES_ENV;
pub use urls::is_url;

use crate::checkpoint::{self, CheckpointError};
use crate::value::Value;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A file (or object) found by [`CheckpointIO::list`].
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFile {
    /// Its full path or URL.
    pub path: PathBuf,
    /// When it was last written.
    pub modified: SystemTime,
    /// Its size in bytes.
    pub size: u64,
}

/// Lightning's `CheckpointIO` plugin: how checkpoint files are written, read and removed,
/// plus what `ModelCheckpoint` (top-k, `last`) and `ckpt_path="last"` need.
///
/// Every method names the file in its errors. Implementations must write atomically: a
/// reader sees either the old file or the complete new one, never a part.
pub trait CheckpointIO: Send + Sync + Debug {
    /// Writes `checkpoint` (a dict) to `path`, creating what holds it.
    fn save_checkpoint(&self, checkpoint: &Value, path: &Path) -> Result<(), CheckpointError>;
    /// Reads the checkpoint at `path` with CPU tensors.
    fn load_checkpoint(&self, path: &Path) -> Result<Value, CheckpointError>;
    /// Deletes the checkpoint at `path`; a missing one is not an error.
    fn remove_checkpoint(&self, path: &Path) -> Result<(), CheckpointError>;
    /// Whether a file exists at `path`.
    fn exists(&self, path: &Path) -> Result<bool, CheckpointError>;
    /// The files directly in `dir` (none when it does not exist).
    fn list(&self, dir: &Path) -> Result<Vec<StoredFile>, CheckpointError>;
    /// Makes `link` name the same checkpoint as `target` (`last.ckpt`), replacing `link`
    /// atomically.
    fn link(&self, target: &Path, link: &Path) -> Result<(), CheckpointError>;
    /// Checks that `path` reads back completely (the newest `last` that verifies is the
    /// resume point). The default loads it.
    fn verify(&self, path: &Path) -> Result<(), CheckpointError> {
        self.load_checkpoint(path).map(drop)
    }
    /// Prepares `dir` before a run writes there (the local writer removes temporary files
    /// left by killed runs). The default does nothing.
    fn prepare_dir(&self, dir: &Path) {
        let _ = dir;
    }
    /// Whether `dir` holds at least one file.
    fn dir_has_files(&self, dir: &Path) -> bool {
        self.list(dir).is_ok_and(|l| !l.is_empty())
    }
}

/// The default [`CheckpointIO`]: local paths on the file system, URLs on object storage.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultCheckpointIO;

impl CheckpointIO for DefaultCheckpointIO {
    fn save_checkpoint(&self, checkpoint: &Value, path: &Path) -> Result<(), CheckpointError> {
        if !is_url(path) {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| CheckpointError::io(parent, e))?;
            }
        }
        checkpoint::save(path, checkpoint)
    }

    fn load_checkpoint(&self, path: &Path) -> Result<Value, CheckpointError> {
        checkpoint::load(path)
    }

    fn remove_checkpoint(&self, path: &Path) -> Result<(), CheckpointError> {
        if is_url(path) {
            return object::remove(path);
        }
        let r = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        r.map_err(|e| CheckpointError::io(path, e))
    }

    fn exists(&self, path: &Path) -> Result<bool, CheckpointError> {
        if is_url(path) {
            return object::exists(path);
        }
        path.try_exists().map_err(|e| CheckpointError::io(path, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<StoredFile>, CheckpointError> {
        if is_url(dir) {
            return object::list(dir);
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(CheckpointError::io(dir, e)),
        };
        let mut out = vec![];
        for entry in entries.flatten() {
            let path = entry.path();
            // metadata() follows links: a `last.ckpt` link reports its target's time
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => out.push(StoredFile {
                    modified: m.modified().map_err(|e| CheckpointError::io(&path, e))?,
                    size: m.len(),
                    path,
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
            }
        }
        Ok(out)
    }

    fn link(&self, target: &Path, link: &Path) -> Result<(), CheckpointError> {
        if is_url(target) || is_url(link) {
            return copy(target, link);
        }
        crate::callbacks::link_checkpoint(target, link)
    }

    /// Reads the file back completely. An object's bytes are kept for the load that follows
    /// (the resume after `ckpt_path="last"` picks it), so it is downloaded once.
    fn verify(&self, path: &Path) -> Result<(), CheckpointError> {
        if is_url(path) {
            let (file, version) = object::download_version(path)?;
            let kept = file.try_clone().map_err(|e| CheckpointError::io(path, e))?;
            checkpoint::verify_file(path, file)?;
            object::keep(path, version, kept);
            return Ok(());
        }
        checkpoint::verify(path).map(drop)
    }

    fn prepare_dir(&self, dir: &Path) {
        if !is_url(dir) {
            crate::callbacks::remove_stale_link_temps(dir);
            checkpoint::remove_stale_temp_files(dir);
        }
    }
}

/// Copies a checkpoint atomically: a server-side copy within one object store, otherwise
/// [`checkpoint::copy_atomically`] (read, downloaded when a URL; written as every checkpoint
/// is: a durable temporary file renamed over `to`, or an upload that appears only when whole).
pub fn copy(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    if is_url(from) && is_url(to) && object::server_side_copy(from, to)? {
        return Ok(());
    }
    checkpoint::copy_atomically(from, to)
}

/// The names of the "folders" directly in `dir` (object-key prefixes for a URL, directories
/// for a local path); none when `dir` does not exist.
pub fn list_dirs(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    if is_url(dir) {
        return object::list_dirs(dir);
    }
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(CheckpointError::io(dir, e)),
    }
}

/// Reads a whole file or object (hparams files, configs).
pub fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    if is_url(path) {
        return object::read(path);
    }
    std::fs::read(path).map_err(|e| CheckpointError::io(path, e))
}

/// Opens a file for the checkpoint reader: a local file, or an object downloaded into memory.
pub(crate) fn open_for_read(path: &Path) -> Result<std::fs::File, CheckpointError> {
    if is_url(path) {
        return object::download(path);
    }
    std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))
}
