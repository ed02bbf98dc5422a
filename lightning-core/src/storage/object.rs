//! Checkpoints on object storage (`s3://`, `gs://`, `az://`, `memory://`) through the
//! `object_store` crate.
//!
//! - Saves stream the archive as it is written: parts of [`part_size`] bytes go up as a
//!   multipart upload (several in flight), so no whole-file buffer is held; a file smaller
//!   than one part is a single `PUT`. The object appears only when the upload completes: a
//!   failed or interrupted save leaves no object, and an older one under the same name is
//!   untouched (the multipart upload is aborted on error).
//! - Loads download the object with parallel ranged `GET`s into an anonymous in-memory file
//!   (`memfd`), which the reader then reads as it reads a local file.
//! - Stores are built from the URL and the environment as `object_store` reads it
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//!   `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...), one per
//!   bucket, kept for the life of the process. For S3, the profile of the shared AWS files
//!   (`~/.aws/credentials`, `~/.aws/config`, `AWS_PROFILE`) fills in the keys, region and
//!   endpoint the environment leaves unset, as boto does.
//! - Every call blocks the calling thread until the store answers (on a shared runtime of
//!   two threads). Called from inside a tokio runtime, a call runs on a helper thread (where
//!   blocking in place would panic); it still blocks that runtime's worker, so async code
//!   should call through `spawn_blocking`.

use super::local::StoredFile;
use super::urls::scheme;
use crate::checkpoint::error::CheckpointError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Upload part size (and download range size): 16 MiB.
const PART: usize = 16 << 20;
/// Parts (or ranges) in flight at once.
const CONCURRENCY: usize = 8;

/// The part size for a file of about `needed` bytes: 16 MiB, larger for files that would need
/// more than 9,000 parts (S3 allows 10,000).
pub(crate) fn part_size(needed: u64) -> usize {
    let min = needed.div_ceil(9_000);
    PART.max(usize::try_from(min).unwrap_or(usize::MAX))
}

/// The size of each ranged `GET` of a download of `len` bytes: the object split over the
/// requests in flight, between 16 and 64 MiB (fewer, larger requests cost servers that read
/// the whole object per range less; at most 512 MiB is buffered in flight).
fn range_size(len: u64) -> u64 {
    (len / CONCURRENCY as u64).clamp(PART as u64, 4 * PART as u64)
}

/// The runtime every object-store call runs on (two worker threads; the calls block on it).
fn runtime() -> Result<&'static tokio::runtime::Runtime, std::io::Error> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lightning-object-store")
        .enable_all()
        .build()?;
    Ok(RT.get_or_init(|| rt))
}

/// Runs `f` to completion from synchronous code (also from inside another tokio runtime, on a
/// scoped thread, where blocking in place would panic).
fn block_on<T: Send>(f: impl Future<Output = T> + Send) -> Result<T, std::io::Error> {
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .map_err(|_| std::io::Error::other("object-store call panicked"))
        });
    }
    Ok(rt.block_on(f))
}

/// [`block_on`] for a call about `path`: a runtime failure is an I/O error naming it.
fn call<T: Send>(path: &Path, f: impl Future<Output = T> + Send) -> Result<T, CheckpointError> {
    block_on(f).map_err(|e| CheckpointError::io(path, e))
}

/// An object's URL split: the store's key (`s3://bucket`) and the object's path in it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Location {
    /// `scheme://bucket`.
    pub store: String,
    /// The object's key, as written (no percent-decoding): `run/epoch=0.ckpt`.
    pub key: ObjectPath,
}

/// The schemes this module serves.
const SCHEMES: [&str; 9] = [
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "memory",
];

fn bad_url(path: &Path, msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_owned(),
        msg: msg.into(),
    }
}

/// Splits `scheme://bucket/key` (the key may be empty: a bucket's root).
pub(crate) fn locate(path: &Path) -> Result<Location, CheckpointError> {
    let s = path
        .to_str()
        .ok_or_else(|| bad_url(path, "the URL is not valid UTF-8"))?;
    let scheme = scheme(path).ok_or_else(|| bad_url(path, "not a URL (scheme://bucket/key)"))?;
    if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(CheckpointError::Unsupported {
            path: path.to_owned(),
            what: format!(
                "the URL scheme `{scheme}://` (supported: {}, or a local path)",
                SCHEMES.map(|s| format!("{s}://")).join(", ")
            ),
        });
    }
    let rest = &s[scheme.len() + 3..];
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad_url(
            path,
            "the URL names no bucket (scheme://bucket/key)",
        ));
    }
    let key = key.trim_end_matches('/');
    let key =
        ObjectPath::parse(key).map_err(|e| bad_url(path, format!("invalid object key: {e}")))?;
    Ok(Location {
        store: format!("{}://{bucket}", scheme.to_ascii_lowercase()),
        key,
    })
}

/// The store serving `loc` (built once per bucket from the URL and the environment).
fn store_for(path: &Path, loc: &Location) -> Result<Arc<dyn ObjectStore>, CheckpointError> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = stores.get(&loc.store) {
        return Ok(s.clone());
    }
    let err = |e: object_store::Error| remote(path, "opening the object store", e);
    let retry = retry_config();
    let scheme = loc.store.split_once("://").map_or("", |(s, _)| s);
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env();
            // What the environment leaves unset, from the shared AWS files' profile.
            let profile =
                super::aws_profile::settings(&|k| std::env::var(k).ok()).map_err(|e| {
                    CheckpointError::Remote {
                        path: path.to_owned(),
                        what: "reading the AWS profile".into(),
                        source: Box::new(e),
                    }
                })?;
            for (key, value) in profile {
                b = b.with_config(key.parse().map_err(err)?, value);
            }
            Arc::new(
                b.with_url(&loc.store)
                    .with_retry(retry)
                    .build()
                    .map_err(err)?,
            )
        }
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(&loc.store)
                .with_retry(retry)
                .build()
                .map_err(err)?,
        ),
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        _ => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(&loc.store)
                .with_retry(retry)
                .build()
                .map_err(err)?,
        ),
    };
    stores.insert(loc.store.clone(), store.clone());
    Ok(store)
}

/// Environment variable: how many times a failed request is retried (with exponential
/// backoff) before the error is reported; `object_store`'s default is 10 (within 3 minutes).
pub const RETRIES_ENV: &str = "LIGHTNING_RS_STORE_RETRIES";

fn retry_config() -> object_store::RetryConfig {
    let mut r = object_store::RetryConfig::default();
    match std::env::var(RETRIES_ENV).map(|v| v.parse::<usize>()) {
        Ok(Ok(n)) => r.max_retries = n,
        Ok(Err(e)) => tracing::warn!("ignoring {RETRIES_ENV}: {e}"),
        Err(_) => {}
    }
    r
}

/// An object-store error on `path` while doing `what`.
fn remote(path: &Path, what: &str, e: object_store::Error) -> CheckpointError {
    CheckpointError::Remote {
        path: path.to_owned(),
        what: what.to_owned(),
        source: Box::new(e),
    }
}

/// Resolves `path` to its store and key.
fn open(path: &Path) -> Result<(Arc<dyn ObjectStore>, ObjectPath), CheckpointError> {
    let loc = locate(path)?;
    let store = store_for(path, &loc)?;
    Ok((store, loc.key))
}

/// A [`Write`] that streams into an object: buffered parts go up as a multipart upload once
/// the data passes one part, else the whole file is one `PUT` at [`Uploader::finish`].
struct Uploader {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    part: usize,
    buf: Vec<u8>,
    upload: Option<WriteMultipart>,
}

impl Uploader {
    fn flush_part(&mut self) -> std::io::Result<()> {
        let data = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.part),
        ));
        let rt = runtime()?;
        if self.upload.is_none() {
            let (store, key) = (self.store.clone(), self.key.clone());
            let up = block_on(async move { store.put_multipart(&key).await })?
                .map_err(std::io::Error::other)?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(up, self.part));
        }
        let Some(up) = self.upload.as_mut() else {
            return Err(std::io::Error::other("no multipart upload"));
        };
        {
            let _enter = rt.enter();
            up.put(data);
        }
        block_on(up.wait_for_capacity(CONCURRENCY))?.map_err(std::io::Error::other)
    }

    /// Completes the upload: the object appears now, whole.
    fn finish(mut self) -> Result<(), object_store::Error> {
        let generic = |e: std::io::Error| object_store::Error::Generic {
            store: "runtime",
            source: Box::new(e),
        };
        let rt = runtime().map_err(generic)?;
        let buf = std::mem::take(&mut self.buf);
        match self.upload.take() {
            None => {
                let (store, key) = (self.store.clone(), self.key.clone());
                block_on(async move { store.put(&key, PutPayload::from(buf)).await })
                    .map_err(generic)??;
            }
            Some(mut up) => {
                {
                    let _enter = rt.enter();
                    up.put(Bytes::from(buf));
                }
                block_on(up.finish()).map_err(generic)??;
            }
        }
        Ok(())
    }

    /// Aborts the multipart upload (its parts are deleted; no object appears).
    fn abort(mut self) {
        if let Some(up) = self.upload.take() {
            let aborted = block_on(up.abort()).map(|r| r.map_err(std::io::Error::other));
            if let Err(e) = aborted.and_then(|r| r) {
                tracing::warn!("could not abort the upload of {}: {e}", self.key);
            }
        }
    }
}

impl Write for Uploader {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(self.part - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part {
            self.flush_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes an object at `path`: `write` streams its bytes and returns the length. The object
/// appears only when everything is uploaded; on any error the upload is aborted and an older
/// object at `path` is untouched.
pub(crate) fn upload(
    path: &Path,
    needed: u64,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<(), CheckpointError> {
    let (store, key) = open(path)?;
    let part = part_size(needed);
    let mut up = Uploader {
        store,
        key,
        part,
        buf: Vec::with_capacity(
            part.min(usize::try_from(needed).unwrap_or(part))
                .max(1 << 16),
        ),
        upload: None,
    };
    match write(&mut up) {
        Ok(_) => up
            .finish()
            .map_err(|e| remote(path, "uploading the checkpoint", e)),
        Err(e) => {
            up.abort();
            // An upload error travels as io::Error::other(object_store::Error).
            match e.downcast::<object_store::Error>() {
                Ok(e) => Err(remote(path, "uploading the checkpoint", e)),
                Err(e) => Err(CheckpointError::io(path, e)),
            }
        }
    }
}

/// An anonymous in-memory file (`memfd`) named after `path`.
fn memfd(path: &Path) -> Result<File, CheckpointError> {
    let name = std::ffi::CString::new("lightning-ckpt")
        .map_err(|e| CheckpointError::io(path, std::io::Error::other(e)))?;
    // SAFETY: memfd_create with a valid C string; the descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(CheckpointError::io(path, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Which version of an object a download holds (its ETag and size).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ObjectVersion {
    e_tag: Option<String>,
    size: u64,
}

/// A download kept for the load that follows its check (see [`keep`]).
static KEPT: Mutex<Option<(PathBuf, ObjectVersion, File)>> = Mutex::new(None);

/// Full downloads made so far (the tests count them).
pub(crate) static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Keeps a verified download of `path` for the next download of the same version (the
/// resume that follows the `last` search reads it without fetching it again). One object is
/// kept at a time; the next download of any object takes or drops it.
pub(crate) fn keep(path: &Path, version: ObjectVersion, file: File) {
    let mut k = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    *k = Some((path.to_owned(), version, file));
}

/// Downloads the object at `path` into an in-memory file (parallel ranged `GET`s).
pub(crate) fn download(path: &Path) -> Result<File, CheckpointError> {
    download_version(path).map(|(f, _)| f)
}

/// [`download`], and which version of the object it holds. Every range asks for the same
/// version (`If-Match` its ETag), so an object replaced during the download is an error,
/// never a mix of two files.
pub(crate) fn download_version(path: &Path) -> Result<(File, ObjectVersion), CheckpointError> {
    let (store, key) = open(path)?;
    let not_found = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => CheckpointError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"),
        ),
        e => remote(path, "downloading the checkpoint", e),
    };
    let meta = call(path, async { store.head(&key).await })?.map_err(not_found)?;
    let version = ObjectVersion {
        e_tag: meta.e_tag.clone(),
        size: meta.size,
    };
    let kept = KEPT.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((p, v, file)) = kept
        && p == path
        && v == version
        && version.e_tag.is_some()
    {
        return Ok((file, version));
    }
    DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = memfd(path)?;
    let len = meta.size;
    file.set_len(len)
        .map_err(|e| CheckpointError::io(path, e))?;
    let step = range_size(len);
    let ranges: Vec<_> = (0..len)
        .step_by(step as usize)
        .map(|start| start..(start + step).min(len))
        .collect();
    call(path, async {
        futures::stream::iter(ranges)
            .map(|r| {
                let (store, key) = (store.clone(), key.clone());
                let opts = object_store::GetOptions {
                    range: Some(r.clone().into()),
                    if_match: meta.e_tag.clone(),
                    ..Default::default()
                };
                async move {
                    let data = store.get_opts(&key, opts).await?.bytes().await?;
                    Ok::<_, object_store::Error>((r.start, data))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|(start, data)| {
                let r = file
                    .write_all_at(&data, start)
                    .map_err(|e| object_store::Error::Generic {
                        store: "memfd",
                        source: Box::new(e),
                    });
                futures::future::ready(r)
            })
            .await
    })?
    .map_err(not_found)?;
    Ok((file, version))
}

/// Reads a whole (small) object, e.g. an hparams file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let (store, key) = open(path)?;
    call(path, async { store.get(&key).await?.bytes().await })?
        .map(|b| b.to_vec())
        .map_err(|e| remote(path, "reading", e))
}

/// Deletes the object at `path` (a missing one is fine).
pub(crate) fn remove(path: &Path) -> Result<(), CheckpointError> {
    let (store, key) = open(path)?;
    match call(path, async { store.delete(&key).await })? {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(remote(path, "deleting", e)),
    }
}

/// Whether an object exists at `path`.
pub(crate) fn exists(path: &Path) -> Result<bool, CheckpointError> {
    let (store, key) = open(path)?;
    match call(path, async { store.head(&key).await })? {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(remote(path, "checking", e)),
    }
}

/// Copies the object `from` to `to` on the server when both are in one store (`to` is
/// replaced whole, never half-written); `Ok(false)` when they are not.
pub(crate) fn server_side_copy(from: &Path, to: &Path) -> Result<bool, CheckpointError> {
    let (a, b) = (locate(from)?, locate(to)?);
    if a.store != b.store {
        return Ok(false);
    }
    let store = store_for(from, &a)?;
    call(to, async { store.copy(&a.key, &b.key).await })?.map_err(|e| remote(to, "copying", e))?;
    Ok(true)
}

/// One level of the listing of the "folder" `dir`: its store and what it holds.
fn listing(dir: &Path) -> Result<(Location, object_store::ListResult), CheckpointError> {
    let loc = locate(dir)?;
    let store = store_for(dir, &loc)?;
    let prefix = (loc.key.as_ref() != "").then_some(&loc.key);
    let listing = call(dir, async { store.list_with_delimiter(prefix).await })?
        .map_err(|e| remote(dir, "listing", e))?;
    Ok((loc, listing))
}

/// The objects directly under the "folder" `dir` (not recursively).
pub(crate) fn list(dir: &Path) -> Result<Vec<StoredFile>, CheckpointError> {
    let (loc, listing) = listing(dir)?;
    Ok(listing
        .objects
        .into_iter()
        .map(|m| StoredFile {
            path: PathBuf::from(format!("{}/{}", loc.store, m.location)),
            modified: m.last_modified.into(),
            size: m.size,
        })
        .collect())
}

/// The names of the prefixes ("folders") directly under `dir`.
pub(crate) fn list_dirs(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let (_, listing) = listing(dir)?;
    Ok(listing
        .common_prefixes
        .into_iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::is_url;

    #[test]
    fn urls_split_into_store_and_key() {
        let l = locate(Path::new("s3://bucket/run/epoch=0-step=10.ckpt")).unwrap();
        assert_eq!(l.store, "s3://bucket");
        assert_eq!(l.key.as_ref(), "run/epoch=0-step=10.ckpt");
        let l = locate(Path::new("memory://b")).unwrap();
        assert_eq!((l.store.as_str(), l.key.as_ref()), ("memory://b", ""));
        assert!(is_url(Path::new("gs://b/x")));
        assert!(!is_url(Path::new("runs/x.ckpt")));
        assert!(!is_url(Path::new("/tmp/a://b")));
        let e = locate(Path::new("ftp://host/x")).unwrap_err().to_string();
        assert!(e.contains("`ftp://`") && e.contains("s3://"), "{e}");
        let e = locate(Path::new("s3:///x")).unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = locate(Path::new("s3://b/a//b")).unwrap_err().to_string();
        assert!(e.contains("invalid object key"), "{e}");
    }

    #[test]
    fn a_verified_download_is_reused_by_the_load_of_the_same_version_only() {
        use crate::storage::{CheckpointIO, DefaultCheckpointIO};
        use std::sync::atomic::Ordering::SeqCst;
        let url = Path::new("memory://kept/run/last.ckpt");
        let mut v = crate::Value::dict();
        v.insert("epoch", 1i64);
        crate::checkpoint::save(url, &v).unwrap();
        let before = DOWNLOADS.load(SeqCst);
        DefaultCheckpointIO.verify(url).unwrap();
        assert_eq!(crate::checkpoint::load(url).unwrap(), v);
        assert_eq!(
            DOWNLOADS.load(SeqCst) - before,
            1,
            "the load reused the check's bytes"
        );
        // a new version of the object is fetched again, never served from the old bytes
        DefaultCheckpointIO.verify(url).unwrap();
        v.insert("epoch", 2i64);
        crate::checkpoint::save(url, &v).unwrap();
        assert_eq!(crate::checkpoint::load(url).unwrap(), v);
        assert_eq!(DOWNLOADS.load(SeqCst) - before, 3);
    }

    #[test]
    fn saves_and_loads_work_from_inside_a_tokio_runtime() {
        // Blocking on our runtime from inside another one panics; every call (single PUT,
        // multipart parts and completion, download, listing, removal) must step aside.
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        outer.block_on(async {
            let mut v = crate::Value::dict();
            v.insert("epoch", 3i64);
            // over one part: a multipart upload of two parts
            let big =
                tch::Tensor::arange(PART as i64 / 4 + 7, (tch::Kind::Float, tch::Device::Cpu));
            v.insert("w", big);
            for url in [
                "memory://in-async/a/big.ckpt",
                "memory://in-async/a/small.ckpt",
            ] {
                if url.ends_with("small.ckpt") {
                    v.insert("w", tch::Tensor::from_slice(&[1.0f32, 2.0]));
                }
                let p = Path::new(url);
                crate::checkpoint::save(p, &v).unwrap();
                assert_eq!(crate::checkpoint::load(p).unwrap(), v);
            }
            use crate::storage::CheckpointIO;
            let names = crate::storage::DefaultCheckpointIO
                .list(Path::new("memory://in-async/a"))
                .unwrap();
            assert_eq!(names.len(), 2, "{names:?}");
            remove(Path::new("memory://in-async/a/big.ckpt")).unwrap();
        });
    }

    #[test]
    fn part_size_keeps_under_the_part_limit() {
        assert_eq!(part_size(0), PART);
        assert_eq!(part_size(1 << 30), PART);
        let huge = 400u64 << 30;
        assert!(huge.div_ceil(part_size(huge) as u64) <= 9_000);
    }
}
