//! Which paths are URLs (`scheme://...`), known with or without object storage compiled in.

use std::path::Path;

/// Whether `path` is a URL (`scheme://...`) rather than a local path.
pub fn is_url(path: &Path) -> bool {
    scheme(path).is_some()
}

/// The scheme of a URL (`s3` of `s3://bucket/key`), `None` for a local path.
pub(crate) fn scheme(path: &Path) -> Option<&str> {
    let s = path.to_str()?;
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic()))
    .then_some(scheme)
}
