//! Object storage when lightning-core is built without its `object-storage` feature: every
//! URL (`s3://`, `gs://`, `az://`, `memory://`, ...) is an error naming the feature, as the
//! trainer, `load_from_checkpoint` and the loggers' mirror meet it.

use super::local::StoredFile;
use crate::checkpoint::CheckpointError;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The error for any URL: object storage is not compiled in.
fn disabled(path: &Path) -> CheckpointError {
    CheckpointError::Unsupported {
        path: path.to_owned(),
        what: "object storage (s3://, gs://, az://, memory://) needs lightning-core's \
               `object-storage` cargo feature, which this build leaves out"
            .into(),
    }
}

/// Which version of an object a download holds: none exists without object storage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ObjectVersion {}

pub(crate) fn upload(
    path: &Path,
    _needed: u64,
    _write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<(), CheckpointError> {
    Err(disabled(path))
}

pub(crate) fn keep(_path: &Path, version: ObjectVersion, _file: File) {
    match version {}
}

pub(crate) fn download(path: &Path) -> Result<File, CheckpointError> {
    Err(disabled(path))
}

pub(crate) fn download_version(path: &Path) -> Result<(File, ObjectVersion), CheckpointError> {
    Err(disabled(path))
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    Err(disabled(path))
}

pub(crate) fn remove(path: &Path) -> Result<(), CheckpointError> {
    Err(disabled(path))
}

pub(crate) fn exists(path: &Path) -> Result<bool, CheckpointError> {
    Err(disabled(path))
}

pub(crate) fn server_side_copy(from: &Path, _to: &Path) -> Result<bool, CheckpointError> {
    Err(disabled(from))
}

pub(crate) fn list(dir: &Path) -> Result<Vec<StoredFile>, CheckpointError> {
    Err(disabled(dir))
}

pub(crate) fn list_dirs(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    Err(disabled(dir))
}

#[cfg(test)]
mod tests {
    use crate::storage::{CheckpointIO, DefaultCheckpointIO};
    use std::path::Path;

    #[test]
    fn a_url_is_an_error_naming_the_feature_not_a_local_path() {
        let url = Path::new("s3://bucket/run/last.ckpt");
        let mut v = crate::Value::dict();
        v.insert("epoch", 1i64);
        let e = DefaultCheckpointIO.save_checkpoint(&v, url).unwrap_err();
        assert!(
            e.to_string().contains("`object-storage` cargo feature"),
            "{e}"
        );
        let e = crate::checkpoint::load(url).unwrap_err().to_string();
        assert!(
            e.contains("`object-storage`") && e.contains("s3://bucket"),
            "{e}"
        );
        assert!(DefaultCheckpointIO.exists(url).is_err());
        assert!(!Path::new("s3:").exists(), "nothing was written locally");
    }
}
