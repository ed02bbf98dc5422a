//! Lightning-compatible `.ckpt` files: a `torch.save` zip holding a protocol-2 pickle.
//!
//! API contract (other modules code against it):
//! - [`save`] writes a [`Value`] tree (a dict) durably and atomically to a path.
//! - [`load`] reads a file into a [`Value`] tree with CPU tensors, never executing anything.
//! - [`load_with`] adds options (zero-copy memory map, device, CRC checks); [`verify`] checks
//!   that a file reads back completely (used to pick the newest valid `last` checkpoint).
//!
//! Files written here load in Python with `torch.load(path, weights_only=True)` and
//! `LightningModule.load_from_checkpoint`; files written by `torch.save` / Lightning load here.
//!
//! ```
//! use lightning_core::checkpoint::{self, schema::LIGHTNING_VERSION};
//! use lightning_core::{Dict, Value};
//! use tch::{Device, Kind, Tensor};
//!
//! let mut sd = Dict::new();
//! sd.insert("fc.weight".into(), Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).into());
//! let mut ckpt = Value::dict();
//! ckpt.insert("epoch", 0i64);
//! ckpt.insert("global_step", 10i64);
//! ckpt.insert("pytorch-lightning_version", LIGHTNING_VERSION);
//! ckpt.insert("state_dict", Value::OrderedDict(sd));
//! let path = &std::env::temp_dir().join(format!("doc-{}.ckpt", std::process::id()));
//! checkpoint::save(path, &ckpt)?;
//! assert_eq!(checkpoint::load(path)?, ckpt);
//! checkpoint::verify(path)?;
//! # std::fs::remove_file(path).unwrap();
//! # Ok::<(), checkpoint::CheckpointError>(())
//! ```

pub mod pickle_read;
pub mod pickle_write;
pub mod safetensors;
pub mod schema;
pub mod tensor_io;
pub mod zip_io;

use crate::value::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::Device;
use tensor_io::{StorageLoader, StoragePlan};
use zip_io::{ZipReader, ZipWriter};

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
        }
    }
}

/// How [`save_with`] writes.
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// fsync the file and its directory before returning (default true). Without it the
    /// rename is still atomic, but a power loss may leave an empty or old file.
    pub durable: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { durable: true }
    }
}

/// How [`load_with`] reads.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Map the file privately and build CPU tensors over its aligned records without copying
    /// (records that are not aligned are copied). The mapping stays for the life of the process
    /// (tch has no tensor deleter hook), costs address space, not memory, until pages are
    /// touched, and writes to the tensors never reach the file. Default false.
    pub mmap: bool,
    /// Device the tensors are placed on (one copy per storage; views stay shared). Default CPU.
    pub device: Device,
    /// Check every record's CRC-32 (default true; off makes mmap loads lazy).
    pub verify_crc: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            mmap: false,
            device: Device::Cpu,
            verify_crc: true,
        }
    }
}

/// Writes `ckpt` (a dict) to `path` as a Lightning/torch `.ckpt` file, durably and atomically.
///
/// `path` may be a URL (`s3://bucket/run/last.ckpt`, see [`crate::storage`]): the file is then
/// streamed as a multipart upload that appears only once complete. A local file is written
/// to a temporary file in the same directory, fsynced, renamed over `path`, and the directory
/// is fsynced: `path` always holds either its old content or the complete new file. On error
/// (disk full, size limit, permissions) the temporary file is removed and an existing file at
/// `path` is untouched.
pub fn save(path: &Path, ckpt: &Value) -> Result<(), CheckpointError> {
    save_with(path, ckpt, &SaveOptions::default())
}

/// The bytes that go into a checkpoint file, prepared before anything touches the disk.
struct Prepared {
    pickle: Vec<u8>,
    plan: StoragePlan,
    needed: u64,
}

fn prepare(path: &Path, ckpt: &Value) -> Result<Prepared, CheckpointError> {
    let unsupported = |what: String| CheckpointError::Unsupported {
        path: path.to_owned(),
        what,
    };
    let plan = StoragePlan::new(ckpt).map_err(unsupported)?;
    let pickle =
        pickle_write::write_pickle(ckpt, &mut |t| plan.tensor_ref(t)).map_err(unsupported)?;
    let needed = pickle.len() as u64
        + plan
            .storages
            .iter()
            .map(|s| s.nbytes() + zip_io::record_overhead(&s.key) + 16)
            .sum::<u64>()
        + 8 * zip_io::record_overhead(".data/serialization_id")
        + 256;
    Ok(Prepared {
        pickle,
        plan,
        needed,
    })
}

fn write_archive<W: Write>(w: W, p: &Prepared) -> std::io::Result<(W, u64)> {
    let mut z = ZipWriter::new(w);
    let a = "archive";
    z.add(&format!("{a}/data.pkl"), &[&p.pickle])?;
    z.add(&format!("{a}/.format_version"), &[b"1"])?;
    z.add(&format!("{a}/.storage_alignment"), &[b"64"])?;
    z.add(&format!("{a}/byteorder"), &[b"little"])?;
    for s in &p.plan.storages {
        let host = s.host_bytes().map_err(std::io::Error::other)?;
        z.add(&format!("{a}/data/{}", s.key), &[host.bytes()])?;
    }
    z.add(&format!("{a}/version"), &[b"3\n"])?;
    z.add(
        &format!("{a}/.data/serialization_id"),
        &[serialization_id().as_bytes()],
    )?;
    z.finish()
}

/// 40 decimal digits, unique per save (torch writes one per file).
fn serialization_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:020}{:010}{:010}",
        nanos % 10u128.pow(20),
        std::process::id(),
        c % 10u64.pow(10)
    )
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
    )
}

/// [`save`] with options.
/// The pid in a temp-file name that [`save_with`] makes (`.NAME.tmp-PID-N`), if `name` is one.
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
        match std::fs::remove_file(e.path()) {
            Ok(()) => removed += 1,
            Err(err) => tracing::warn!("could not remove stale {}: {err}", e.path().display()),
        }
    }
    removed
}

pub fn save_with(path: &Path, ckpt: &Value, opts: &SaveOptions) -> Result<(), CheckpointError> {
    let prepared = prepare(path, ckpt)?;
    write_atomically(path, prepared.needed, opts.durable, |w| {
        write_archive(w, &prepared).map(|(_, len)| len)
    })
}

/// Copies the file `from` to `to` atomically and durably (temporary file, fsync, rename,
/// directory fsync), as every checkpoint is written: `to` is either its old self or a
/// complete copy. Either may be a URL (a download, an upload that appears only when whole);
/// [`crate::storage::copy`] copies within one object store on the server instead.
pub fn copy_atomically(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let mut src = crate::storage::open_for_read(from)?;
    let len = src
        .metadata()
        .map_err(|e| CheckpointError::io(from, e))?
        .len();
    write_atomically(to, len, true, |w| std::io::copy(&mut src, w))
}

/// Writes a file atomically: `write` fills a temporary file in `path`'s directory (through a
/// 1 MiB buffer) and returns its length (for a URL it streams an upload instead); then fsync
/// (when `durable`), rename over `path`, and fsync of the directory. On error the temporary
/// file is removed and `path` is untouched; ENOSPC/EDQUOT/EFBIG become
/// [`CheckpointError::NoSpace`] with `needed` bytes.
pub(crate) fn write_atomically(
    path: &Path,
    needed: u64,
    durable: bool,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> Result<(), CheckpointError> {
    if crate::storage::is_url(path) {
        return crate::storage::object::upload(path, needed, write);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| CheckpointError::Format {
            path: path.to_owned(),
            msg: "not a file path".into(),
        })?
        .to_string_lossy()
        .into_owned();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
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

/// Reads a `.ckpt` file into a value tree with CPU tensors. `path` may be a URL
/// (`s3://bucket/run/last.ckpt`, see [`crate::storage`]): the object is downloaded into memory
/// first.
pub fn load(path: &Path) -> Result<Value, CheckpointError> {
    load_with(path, &LoadOptions::default())
}

fn check_header_records(zip: &ZipReader, path: &Path) -> Result<(), CheckpointError> {
    if zip.entry("byteorder").is_some() {
        let b = zip.read_record("byteorder", true)?;
        if b != b"little" {
            return Err(CheckpointError::Unsupported {
                path: path.to_owned(),
                what: format!("byte order {:?}", String::from_utf8_lossy(&b)),
            });
        }
    }
    Ok(())
}

/// [`read_tree`], and the storages' saved locations in the order the pickle first names them.
fn read_tree_located(
    zip: &ZipReader,
    path: &Path,
    opts: &LoadOptions,
    skip_data: bool,
) -> Result<(Value, Vec<String>), CheckpointError> {
    check_header_records(zip, path)?;
    let pickle = zip.read_record("data.pkl", true)?;
    let map: Option<&'static [u8]> = if opts.mmap && !skip_data {
        // SAFETY: a private (copy-on-write) mapping; it is leaked so tensors built over it stay
        // valid for the life of the process. Truncating the file while mapped is undefined.
        let m = unsafe { memmap2::MmapOptions::new().map_copy(zip.file()) }
            .map_err(|e| CheckpointError::io(path, e))?;
        Some(Box::leak(Box::new(m)))
    } else {
        None
    };
    let loader = StorageLoader {
        zip,
        map,
        verify_crc: opts.verify_crc,
        device: opts.device,
        skip_data,
        path,
        used: Default::default(),
        // Copy-loads read their storages after the pickle, in parallel (to another device
        // through host staging).
        pending: (map.is_none() && !skip_data).then(Default::default),
    };
    let mut locations = Vec::new();
    let tree = pickle_read::read_pickle(&pickle, path, &mut |k, kind, n, location| {
        locations.push(location.to_owned());
        loader.load(k, kind, n)
    })?;
    loader.fill_pending()?;
    if opts.verify_crc {
        // The records the tree did not read (metadata, unused storages) are checked too, so a
        // file that loads is a file that `verify` accepts.
        let used = loader.used.borrow();
        let pkl = format!("{}/data.pkl", zip.prefix());
        for e in zip
            .entries()
            .iter()
            .filter(|e| e.name != pkl && !used.contains(&e.name))
        {
            zip.check_entry(e)?;
        }
    }
    Ok((tree, locations))
}

/// Reads a `.ckpt` file with options (zero-copy mmap, target device, CRC checks).
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Value, CheckpointError> {
    read_tree_located(&ZipReader::open(path)?, path, opts, false).map(|(v, _)| v)
}

/// [`load_with`], and the location tag each storage was saved with (`"cpu"`, `"cuda:1"`, as
/// `torch.save` records it), in the order the file first uses them: in a Lightning
/// checkpoint the first is that of the first tensor of `state_dict`, which decides the device
/// `load_from_checkpoint` puts the module on. The tensors themselves are placed on
/// `opts.device`.
pub fn load_with_locations(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Value, Vec<String>), CheckpointError> {
    read_tree_located(&ZipReader::open(path)?, path, opts, false)
}

/// What [`verify`] found in a complete, valid file.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// Tensors in the tree.
    pub tensors: usize,
    /// Zip records, all CRC-checked.
    pub records: usize,
    /// The file's size.
    pub bytes: u64,
}

/// Checks that `path` reads back completely: the zip directory, every record's CRC-32, the
/// pickle, and every tensor's storage and geometry, in constant memory (tensor data is
/// checksummed in 1 MiB chunks, not loaded).
pub fn verify(path: &Path) -> Result<VerifyReport, CheckpointError> {
    verify_zip(path, ZipReader::open(path)?)
}

/// [`verify`] on an opened file (a download of the object at `path`).
pub(crate) fn verify_file(path: &Path, file: File) -> Result<VerifyReport, CheckpointError> {
    verify_zip(path, ZipReader::from_file(path, file)?)
}

fn verify_zip(path: &Path, zip: ZipReader) -> Result<VerifyReport, CheckpointError> {
    for e in zip.entries() {
        zip.check_entry(e)?;
    }
    let opts = LoadOptions {
        verify_crc: false,
        ..LoadOptions::default()
    };
    let (tree, _) = read_tree_located(&zip, path, &opts, true)?;
    let mut tensors = 0;
    tree.visit_tensors("", &mut |_, _| tensors += 1);
    Ok(VerifyReport {
        tensors,
        records: zip.entries().len(),
        bytes: zip.file_len(),
    })
}

#[cfg(test)]
mod tests;
