//! [`CheckpointIO`], Lightning's checkpoint-IO plugin, and [`DefaultCheckpointIO`]: the
//! checkpoint format of [`crate::checkpoint`] on the local file system or object storage.

use super::files::copy;
use super::local::{self, StoredFile};
use super::object;
use super::urls::is_url;
use crate::checkpoint::{self, dcp, CheckpointError};
use crate::value::Value;
use std::fmt::Debug;
use std::path::Path;

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
        if !is_url(path)
            && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| CheckpointError::io(parent, e))?;
        }
        checkpoint::save(path, checkpoint)
    }

    fn load_checkpoint(&self, path: &Path) -> Result<Value, CheckpointError> {
        if dcp::lightning::is_sharded_checkpoint(path) {
            return dcp::lightning::load(path);
        }
        checkpoint::load(path)
    }

    fn remove_checkpoint(&self, path: &Path) -> Result<(), CheckpointError> {
        if is_url(path) && dcp::lightning::is_sharded_checkpoint(path) {
            return remove_prefix(path);
        }
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
            return Ok(object::exists(path)? || dcp::lightning::is_sharded_checkpoint(path));
        }
        path.try_exists().map_err(|e| CheckpointError::io(path, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<StoredFile>, CheckpointError> {
        if is_url(dir) {
            let mut files = object::list(dir)?;
            files.extend(sharded_prefixes(dir)?);
            return Ok(files);
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
                Ok(m) if m.is_file() || dcp::lightning::is_sharded_checkpoint(&path) => {
                    out.push(StoredFile {
                        modified: m.modified().map_err(|e| CheckpointError::io(&path, e))?,
                        size: m.len(),
                        path,
                    })
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
            }
        }
        Ok(out)
    }

    fn link(&self, target: &Path, link: &Path) -> Result<(), CheckpointError> {
        if is_url(target) && is_url(link) && dcp::lightning::is_sharded_checkpoint(target) {
            return copy_prefix(target, link);
        }
        if is_url(target) || is_url(link) {
            return copy(target, link);
        }
        local::link_checkpoint(target, link)
    }

    /// Reads the file back completely. An object's bytes are kept for the load that follows
    /// (the resume after `ckpt_path="last"` picks it), so it is downloaded once.
    fn verify(&self, path: &Path) -> Result<(), CheckpointError> {
        if is_url(path) && dcp::lightning::is_sharded_checkpoint(path) {
            return dcp::lightning::load(path).map(drop);
        }
        if is_url(path) {
            let (file, version) = object::download_version(path)?;
            let kept = file.try_clone().map_err(|e| CheckpointError::io(path, e))?;
            checkpoint::verify_file(path, file)?;
            object::keep(path, version, kept);
            return Ok(());
        }
        if dcp::lightning::is_sharded_checkpoint(path) {
            return dcp::lightning::load(path).map(drop);
        }
        checkpoint::verify(path).map(drop)
    }

    fn prepare_dir(&self, dir: &Path) {
        if !is_url(dir) {
            local::remove_stale_link_temps(dir);
            local::remove_stale_temp_files(dir);
        }
    }
}

/// The sharded checkpoints (prefixes holding `.metadata`) directly under the object-storage
/// "folder" `dir`, each dated by its `.metadata` (written last).
fn sharded_prefixes(dir: &Path) -> Result<Vec<StoredFile>, CheckpointError> {
    let mut out = Vec::new();
    for name in object::list_dirs(dir)? {
        let prefix = dir.join(&name);
        let objects = object::list(&prefix)?;
        let Some(meta) = objects
            .iter()
            .find(|o| o.path.file_name() == Some(dcp::METADATA_FILE.as_ref()))
        else {
            continue;
        };
        out.push(StoredFile {
            path: prefix,
            modified: meta.modified,
            size: objects.iter().map(|o| o.size).sum(),
        });
    }
    Ok(out)
}

/// Deletes a sharded checkpoint on object storage: its `.metadata` first (from then on the
/// prefix is no checkpoint), then every other object under it.
fn remove_prefix(prefix: &Path) -> Result<(), CheckpointError> {
    object::remove(&prefix.join(dcp::METADATA_FILE))?;
    for o in object::list(prefix)? {
        object::remove(&o.path)?;
    }
    Ok(())
}

/// Copies the sharded checkpoint `from` to the prefix `to` on object storage: every object
/// but `.metadata`, then `.metadata` (so `to` is a checkpoint only once complete), then
/// removes what `to` held that `from` does not (an older save's shard files). `meta.pt`
/// and `.metadata` carry one save id, so a copy cut between them is an error on reading.
fn copy_prefix(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let objects = object::list(from)?;
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut names = Vec::new();
    for o in &objects {
        let Some(n) = name(&o.path) else { continue };
        if n != dcp::METADATA_FILE {
            copy(&o.path, &to.join(&n))?;
        }
        names.push(n);
    }
    copy(&from.join(dcp::METADATA_FILE), &to.join(dcp::METADATA_FILE))?;
    for o in object::list(to)? {
        if name(&o.path).is_some_and(|n| !names.contains(&n)) {
            object::remove(&o.path)?;
        }
    }
    Ok(())
}
