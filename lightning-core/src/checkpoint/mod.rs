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

pub mod dcp;
pub(crate) mod error;
#[doc(hidden)]
pub mod pickle_read; // internal; public for the allowlist tests
pub(crate) mod pickle_write;
pub mod safetensors;
pub mod schema;
pub(crate) mod tensor_io;
#[doc(hidden)]
pub mod zip_io; // internal; public for the robustness tests

pub use error::CheckpointError;

use crate::storage::files;
use crate::value::Value;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::Device;
use tensor_io::{StorageLoader, StoragePlan};
use zip_io::{ZipReader, ZipWriter};

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

/// [`save`] with options.
pub fn save_with(path: &Path, ckpt: &Value, opts: &SaveOptions) -> Result<(), CheckpointError> {
    let prepared = prepare(path, ckpt)?;
    files::write_atomically(path, prepared.needed, opts.durable, |w| {
        write_archive(w, &prepared).map(|(_, len)| len)
    })
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
    // A mapping is indexed by the archive's own offsets: only for an archive that is a file.
    let map: Option<&'static [u8]> = if opts.mmap && !skip_data && zip.base() == 0 {
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

/// Reads one archive (a DCP item) with CRC checks, tensors on the CPU.
fn read_archive(zip: &ZipReader, path: &Path) -> Result<Value, CheckpointError> {
    read_tree_located(zip, path, &LoadOptions::default(), false).map(|(v, _)| v)
}

/// Opens the file or object at `path` for the zip reader.
fn open_zip(path: &Path) -> Result<ZipReader, CheckpointError> {
    ZipReader::from_file(path, files::open_for_read(path)?)
}

/// Reads a `.ckpt` file with options (zero-copy mmap, target device, CRC checks).
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Value, CheckpointError> {
    read_tree_located(&open_zip(path)?, path, opts, false).map(|(v, _)| v)
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
    read_tree_located(&open_zip(path)?, path, opts, false)
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
    verify_zip(path, open_zip(path)?)
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
