//! Whole files at a path or a URL: the one place that picks the local file system
//! ([`super::local`]) or object storage ([`super::object`]) by the path.

use super::local;
use super::object;
use super::urls::is_url;
use crate::checkpoint::error::CheckpointError;
use std::io::Write;
use std::path::Path;

/// Writes a file atomically: a local path through [`local::write_atomically`] (a temporary
/// file renamed over `path`; fsynced when `durable`), a URL as a streamed upload that appears
/// only when complete. `write` fills it and returns its length.
pub(crate) fn write_atomically(
    path: &Path,
    needed: u64,
    durable: bool,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<(), CheckpointError> {
    if is_url(path) {
        return object::upload(path, needed, write);
    }
    local::write_atomically(path, needed, durable, write)
}

/// Copies a checkpoint atomically: a server-side copy within one object store, otherwise
/// [`copy_atomically`] (read, downloaded when a URL; written as every checkpoint
/// is: a durable temporary file renamed over `to`, or an upload that appears only when whole).
pub fn copy(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    if is_url(from) && is_url(to) && object::server_side_copy(from, to)? {
        return Ok(());
    }
    copy_atomically(from, to)
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

/// Whether `dir` holds a file `name`: a local directory's file, or an object under the
/// prefix `dir/`.
pub(crate) fn dir_has(dir: &Path, name: &str) -> bool {
    if is_url(dir) {
        return object::exists(&dir.join(name)).unwrap_or(false);
    }
    dir.join(name).is_file()
}

/// The objects directly under the prefix `url` downloaded into a fresh local directory (a
/// sharded checkpoint on object storage, read like a local one); removed when dropped.
pub(crate) fn fetch_dir(url: &Path) -> Result<tempfile::TempDir, CheckpointError> {
    let tmp = tempfile::tempdir().map_err(|e| CheckpointError::io(url, e))?;
    let objects = object::list(url)?;
    if objects.is_empty() {
        return Err(CheckpointError::Format {
            path: url.to_owned(),
            msg: "no objects under this prefix".into(),
        });
    }
    for o in objects {
        let Some(name) = o.path.file_name() else {
            continue;
        };
        let mut src = object::download(&o.path)?;
        let dst = tmp.path().join(name);
        let mut f = std::fs::File::create(&dst).map_err(|e| CheckpointError::io(&dst, e))?;
        std::io::copy(&mut src, &mut f).map_err(|e| CheckpointError::io(&dst, e))?;
    }
    Ok(tmp)
}

/// Copies the file `from` to `to` atomically and durably (temporary file, fsync, rename,
/// directory fsync), as every checkpoint is written: `to` is either its old self or a
/// complete copy. Either may be a URL (a download, an upload that appears only when whole);
/// [`copy`] copies within one object store on the server instead.
pub fn copy_atomically(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let mut src = open_for_read(from)?;
    let len = src
        .metadata()
        .map_err(|e| CheckpointError::io(from, e))?
        .len();
    write_atomically(to, len, true, |w| std::io::copy(&mut src, w))
}
