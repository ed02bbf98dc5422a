//! Files: `last` links (or durable copies), removals of replaced checkpoints, Python's path
//! rules (`abspath`, `relpath`, `expanduser`, `realpath`), and finding the newest `last*.ckpt`.

use super::ModelCheckpoint;
use crate::storage::{is_url, CheckpointIO, DefaultCheckpointIO};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `os.path.abspath`: absolute, with `.` and `..` resolved lexically (a URL is kept as is).
pub(super) fn lexical_absolute(p: &Path) -> PathBuf {
    if is_url(p) {
        return p.to_owned();
    }
    crate::storage::local::absolute(p)
}

/// `os.path.expanduser` for a leading `~`.
pub(super) fn expanduser(p: &Path) -> PathBuf {
    if is_url(p) {
        return p.to_owned();
    }
    match p.strip_prefix("~") {
        Ok(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => p.to_owned(),
        },
        Err(_) => p.to_owned(),
    }
}

/// `os.path.realpath` (non-strict): absolute, symlinks of the existing part resolved (a URL
/// is kept as is).
pub(super) fn realpath(p: &Path) -> std::io::Result<PathBuf> {
    if is_url(p) {
        return Ok(p.to_owned());
    }
    let abs = lexical_absolute(p);
    let mut existing = abs.clone();
    let mut rest = vec![];
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return Ok(out);
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => return Ok(abs),
        }
    }
}

/// Python's `str(timedelta)`: `[D day[s], ]H:MM:SS[.ffffff]`.
pub(super) fn str_timedelta(d: Duration) -> String {
    let micros = d.as_micros();
    let days = micros / 86_400_000_000;
    let secs = (micros / 1_000_000) % 86_400;
    let frac = micros % 1_000_000;
    let mut s = String::new();
    if days > 0 {
        s = format!("{days} day{}, ", if days == 1 { "" } else { "s" });
    }
    s += &format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60);
    if frac > 0 {
        s += &format!(".{frac:06}");
    }
    s
}

/// A `last` file's stem: `last...` (`last`, `last-v1`, a `last_name` template), or a 1.x
/// `prefix`'s `{prefix}-last` / `{prefix}-last-v1`.
fn is_last_stem(stem: &str) -> bool {
    let last = ModelCheckpoint::CHECKPOINT_NAME_LAST;
    let join = ModelCheckpoint::CHECKPOINT_JOIN_CHAR;
    stem.starts_with(last)
        || stem.ends_with(&format!("{join}{last}"))
        || stem.contains(&format!("{join}{last}{join}v"))
}

/// The newest `last*.ckpt` (or `{prefix}-last*.ckpt`) in `dirs` (by modification time, as Lightning's
/// `ckpt_path="last"`) that `verify` accepts; damaged files are reported and skipped.
///
/// The trainer passes a check that reads the file back completely (for example
/// `|p| lightning_core::checkpoint::load(p).is_ok()`), so a torn or corrupt `last.ckpt` never
/// becomes the resume point while an older good one exists. `dirs` may be URLs.
pub fn find_last_checkpoint(dirs: &[PathBuf], verify: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    find_last_checkpoint_in(&DefaultCheckpointIO, dirs, verify)
}

/// [`find_last_checkpoint`], listing through `io`.
pub(crate) fn find_last_checkpoint_in(
    io: &dyn CheckpointIO,
    dirs: &[PathBuf],
    verify: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut seen = HashSet::new();
    let mut cands = vec![];
    for dir in dirs {
        let files = match io.list(dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", dir.display());
                continue;
            }
        };
        for f in files {
            let path = lexical_absolute(&f.path);
            let is_last = path.extension().is_some_and(|e| e == "ckpt")
                && path
                    .file_stem()
                    .is_some_and(|s| is_last_stem(&s.to_string_lossy()));
            if is_last && seen.insert(path.clone()) {
                cands.push((f.modified, path));
            }
        }
    }
    cands.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (_, path) in cands {
        if verify(&path) {
            return Some(path);
        }
        tracing::warn!(
            "skipping damaged checkpoint {} (it does not read back completely)",
            path.display()
        );
    }
    None
}
