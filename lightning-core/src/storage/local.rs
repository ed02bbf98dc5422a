//! The local file system: atomic durable writes (temporary file, `fallocate`, fsync, rename,
//! directory fsync), atomic symlinks for `last`, listings, and the sweep of temporary files
//! that killed runs left behind.

use crate::checkpoint::error::CheckpointError;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// A file (or object) found by [`CheckpointIO::list`](super::CheckpointIO::list).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFile {
    /// Its full path or URL.
    pub path: PathBuf,
    /// When it was last written.
    pub modified: SystemTime,
    /// Its size in bytes.
    pub size: u64,
}

/// Writes a local file atomically: `write` fills a temporary file in `path`'s directory
/// (through a 1 MiB buffer) and returns its length; then fsync
/// (when `durable`), rename over `path`, and fsync of the directory. On error the temporary
/// file is removed and `path` is untouched; ENOSPC/EDQUOT/EFBIG become
/// [`CheckpointError::NoSpace`] with `needed` bytes.
pub(crate) fn write_atomically(
    path: &Path,
    needed: u64,
    durable: bool,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<(), CheckpointError> {
    let dir = parent_dir(path);
    let tmp = temp_sibling(path, "not a file path")?;
    let map_err = |e: std::io::Error| {
        if is_no_space(&e) {
            CheckpointError::NoSpace {
                path: path.to_owned(),
                needed,
                source: e,
            }
        } else {
            CheckpointError::io(path, e)
        }
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(map_err)?;
    let written = (|| -> std::io::Result<()> {
        reserve(&file, needed)?;
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        let len = write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?;
        file.set_len(len)?; // frees blocks reserved beyond the end
        if durable {
            file.sync_all()?;
        }
        Ok(())
    })();
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(map_err(e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(map_err(e));
    }
    if durable {
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CheckpointError::io(&dir, e))?;
    }
    Ok(())
}

/// A fresh, empty staging directory beside `path` (`.NAME.tmp-PID-N`, the name
/// [`remove_stale_temp_files`] sweeps once its process is gone), for a directory checkpoint
/// that [`publish_dir`] moves to `path` once complete.
pub(crate) fn staging_dir(path: &Path) -> Result<PathBuf, CheckpointError> {
    let parent = parent_dir(path);
    let tmp = temp_sibling(path, "not a directory path")?;
    std::fs::create_dir_all(&parent).map_err(|e| CheckpointError::io(&parent, e))?;
    std::fs::create_dir(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
    Ok(tmp)
}

/// Moves the complete directory `staged` (its files already fsynced) to `path` atomically:
/// fsyncs `staged`, then renames it to `path`, or, when `path` exists, swaps the two in one
/// step (`renameat2(RENAME_EXCHANGE)`) and removes the old one; then fsyncs the parent. A
/// reader sees the old directory or the new one, never a mix or nothing.
pub(crate) fn publish_dir(staged: &Path, path: &Path) -> Result<(), CheckpointError> {
    File::open(staged)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::io(staged, e))?;
    if std::fs::symlink_metadata(path).is_ok() {
        exchange(staged, path).map_err(|e| CheckpointError::io(path, e))?;
        // `staged` now holds what `path` held.
        let old = std::fs::symlink_metadata(staged).map_err(|e| CheckpointError::io(staged, e))?;
        let removed = if old.is_dir() {
            std::fs::remove_dir_all(staged)
        } else {
            std::fs::remove_file(staged)
        };
        if let Err(e) = removed {
            tracing::warn!("could not remove the replaced {}: {e}", path.display());
        }
    } else {
        std::fs::rename(staged, path).map_err(|e| CheckpointError::io(path, e))?;
    }
    let parent = parent_dir(path);
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::io(&parent, e))
}

/// The directory `path` is in (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A fresh temporary name beside `path`, `.NAME.tmp-PID-N` (what [`remove_stale_temp_files`]
/// sweeps once PID is gone); `not_a` says what `path` should have been when it has no name.
fn temp_sibling(path: &Path, not_a: &str) -> Result<PathBuf, CheckpointError> {
    let name = path
        .file_name()
        .ok_or_else(|| CheckpointError::Format {
            path: path.to_owned(),
            msg: not_a.into(),
        })?
        .to_string_lossy()
        .into_owned();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    Ok(parent_dir(path).join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Swaps two paths atomically (Linux's `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths relative to the current directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reserves `len` bytes for `file` without changing its size, so a full disk is reported
/// before anything is written; file systems without `fallocate` are fine.
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if is_no_space(&e) {
        Err(e)
    } else {
        Ok(()) // EOPNOTSUPP and friends: no reservation, the writes will tell
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
    )
}

/// The pid in a temp-file name that [`write_atomically`] makes (`.NAME.tmp-PID-N`), if `name` is one.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Deletes the temp files that saves of processes no longer alive left in `dir` (a run killed
/// mid-save leaves `.NAME.tmp-PID-N`; it never sits under a final name, but it takes space).
/// Temp files of live processes, this one included, are kept. Returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_file_pid(&name) else {
            continue;
        };
        let Ok(pid_t) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if alive {
            continue;
        }
        let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(e.path()) // a sharded checkpoint's staging directory
        } else {
            std::fs::remove_file(e.path())
        };
        match gone {
            Ok(()) => removed += 1,
            Err(err) => tracing::warn!("could not remove stale {}: {err}", e.path().display()),
        }
    }
    removed
}

/// Copies the local file `from` to `to` with [`write_atomically`] (durable).
fn copy_atomically(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let mut src = File::open(from).map_err(|e| CheckpointError::io(from, e))?;
    let len = src
        .metadata()
        .map_err(|e| CheckpointError::io(from, e))?
        .len();
    write_atomically(to, len, true, |w| std::io::copy(&mut src, w))
}

/// Points `link` at `target` with a relative symlink (a copy where links are not possible),
/// replacing what was there atomically: a temporary link is renamed over `link`, so a `last`
/// file always exists once one was written.
pub(crate) fn link_checkpoint(target: &Path, link: &Path) -> Result<(), CheckpointError> {
    link_or_copy(target, link, symlink)
}

/// Creates a symlink `link` -> `target` (`target` relative to `link`'s folder).
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    let r = std::os::unix::fs::symlink(target, link);
    #[cfg(not(unix))]
    let r = {
        let _ = (target, link);
        Err(std::io::ErrorKind::Unsupported.into())
    };
    r
}

/// [`link_checkpoint`] with the link-making function given (tests make it fail).
pub(crate) fn link_or_copy(
    target: &Path,
    link: &Path,
    make_link: fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let (abs_target, abs_link) = (absolute(target), absolute(link));
    if abs_target == abs_link {
        return Ok(());
    }
    let dir = abs_link.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
    let name = abs_link
        .file_name()
        .map_or("last".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(link_temp_name(&name));
    let _ = std::fs::remove_file(&tmp);
    if let Ok(m) = std::fs::symlink_metadata(&abs_link)
        && m.is_dir()
    {
        std::fs::remove_dir_all(&abs_link).map_err(|e| CheckpointError::io(&abs_link, e))?;
    }
    let rel = relative_path(&abs_target, &dir);
    if let Err(e) = make_link(&rel, &tmp) {
        tracing::debug!("symlink {} failed ({e}); copying instead", tmp.display());
        // fall back to a durable, atomic copy straight over the link's name
        let _ = std::fs::remove_file(&tmp);
        return copy_atomically(&abs_target, &abs_link);
    }
    if let Err(e) = std::fs::rename(&tmp, &abs_link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(CheckpointError::io(&abs_link, e));
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The temporary name [`link_checkpoint`] creates next to `name` before renaming it over.
fn link_temp_name(name: &str) -> String {
    format!(".{name}{LINK_TEMP_MARK}{}", std::process::id())
}

const LINK_TEMP_MARK: &str = ".tmp-link-";

/// Deletes `.<name>.tmp-link-<pid>` entries in `dir` (left when a run died mid-link).
pub(crate) fn remove_stale_link_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && name.contains(LINK_TEMP_MARK)
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!("could not remove stale {}: {err}", e.path().display());
        }
    }
}

/// `os.path.abspath` of a local path: absolute, with `.` and `..` resolved lexically.
pub(crate) fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// `os.path.relpath(target, base)` for absolute, normalized paths.
fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A child that has exited: its pid is free (not reused this quickly in practice).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mine = std::process::id();
        let stale = dir.path().join(format!(".last.ckpt.tmp-{dead}-0"));
        let live = dir.path().join(format!(".last.ckpt.tmp-{mine}-3"));
        let final_name = dir.path().join("last.ckpt");
        let lookalike = dir.path().join(".notes.tmp-abc-1");
        for p in [&stale, &live, &final_name, &lookalike] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(dir.path()), 1);
        assert!(!stale.exists());
        assert!(live.exists() && final_name.exists() && lookalike.exists());
        assert_eq!(temp_file_pid(".epoch=1.ckpt.tmp-42-7"), Some(42));
        assert_eq!(temp_file_pid("epoch=1.ckpt"), None);
    }
}
