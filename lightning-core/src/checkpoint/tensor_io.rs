//! Tensors to and from storage records: grouping views of one storage into one record,
//! moving CUDA tensors to host memory, and building tensors over records (copied into fresh
//! memory, or zero-copy over a private memory map of the file).

use super::error::CheckpointError;
use super::pickle_read::storage_type_name;
use super::pickle_write::TensorRef;
use super::zip_io::ZipReader;
use crate::value::Value;
use crate::value::{dtype_name, DTYPES};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One storage record to write: the bytes `[start, end)` (in elements) of a storage.
pub struct PlannedStorage {
    /// Record key under `data/`.
    pub key: String,
    kind: Kind,
    /// A tensor over the storage (any of its views).
    base: Tensor,
    start: i64,
    end: i64,
}

impl PlannedStorage {
    /// Bytes in the record.
    pub fn nbytes(&self) -> u64 {
        ((self.end - self.start) as u64) * self.kind.elt_size_in_bytes() as u64
    }

    /// The record's bytes in host memory: a contiguous CPU tensor and a byte view of it.
    pub fn host_bytes(&self) -> Result<HostBytes, String> {
        let n = self.end - self.start;
        let chunk = tch::no_grad(|| {
            let c = self.base.f_as_strided([n], [1], self.start)?;
            if c.device() == Device::Cpu {
                Ok(c)
            } else {
                c.f_to_device(Device::Cpu)
            }
        })
        .map_err(|e| format!("storage {}: {e}", self.key))?;
        Ok(HostBytes {
            len: self.nbytes() as usize,
            t: chunk,
        })
    }
}

/// A contiguous host tensor whose memory is read as bytes.
pub struct HostBytes {
    t: Tensor,
    len: usize,
}

impl HostBytes {
    /// The bytes (empty for an empty storage).
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `t` is a contiguous CPU tensor of exactly `len` bytes, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.t.data_ptr() as *const u8, self.len) }
    }
}

type StorageId = (usize, Kind, Device);

/// Which records a value tree's tensors are written to.
#[derive(Default)]
pub struct StoragePlan {
    /// Storages in first-use order.
    pub storages: Vec<PlannedStorage>,
    index: HashMap<StorageId, usize>,
}

struct Geometry {
    id: StorageId,
    offset: i64,
    end: i64,
}

fn geometry(t: &Tensor) -> Result<Geometry, String> {
    let kind = t.f_kind().map_err(|e| e.to_string())?;
    let elt = kind.elt_size_in_bytes();
    if t.numel() == 0 {
        return Ok(Geometry {
            id: (0, kind, Device::Cpu),
            offset: 0,
            end: 0,
        });
    }
    let base = tch::no_grad(|| t.f_as_strided([1], [1], 0)).map_err(|e| e.to_string())?;
    let base_ptr = base.data_ptr() as usize;
    let offset = ((t.data_ptr() as usize).wrapping_sub(base_ptr) / elt) as i64;
    let end = t
        .size()
        .iter()
        .zip(t.stride())
        .fold(offset, |acc, (&n, s)| acc + (n - 1) * s)
        + 1;
    Ok(Geometry {
        id: (base_ptr, kind, t.device()),
        offset,
        end,
    })
}

impl StoragePlan {
    /// Groups the tensors of `v` by storage.
    pub fn new(v: &Value) -> Result<Self, String> {
        let mut plan = StoragePlan::default();
        let mut err = None;
        v.visit_all_tensors("", &mut |path, t| {
            if err.is_some() {
                return;
            }
            if let Err(e) = plan.add(t) {
                err = Some(format!("{path}: {e}"));
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(plan),
        }
    }

    fn add(&mut self, t: &Tensor) -> Result<(), String> {
        let kind = t.f_kind().map_err(|e| e.to_string())?;
        if storage_type_name(kind).is_none() && !DTYPES.iter().any(|d| d.2 == Some(kind)) {
            return Err(format!(
                "dtype {kind:?} cannot be saved (torch has no such dtype)"
            ));
        }
        let g = geometry(t)?;
        match self.index.get(&g.id) {
            Some(&i) => {
                let s = &mut self.storages[i];
                if g.end > g.offset {
                    s.start = s.start.min(g.offset);
                    s.end = s.end.max(g.end);
                }
            }
            None => {
                self.index.insert(g.id, self.storages.len());
                self.storages.push(PlannedStorage {
                    key: self.storages.len().to_string(),
                    kind,
                    base: t.shallow_clone(),
                    start: g.offset,
                    end: g.end,
                });
            }
        }
        Ok(())
    }

    /// The persistent id and geometry of one of the planned tensors.
    pub fn tensor_ref(&self, t: &Tensor) -> Result<TensorRef, String> {
        let g = geometry(t)?;
        let s = self
            .index
            .get(&g.id)
            .map(|&i| &self.storages[i])
            .ok_or("tensor was not planned")?;
        let numel = s.end - s.start;
        // Dtypes without a legacy storage class (float8, complex32) go through
        // `_rebuild_tensor_v3` over an untyped storage, sized in bytes.
        let (storage_type, v3_dtype, storage_numel) = match storage_type_name(s.kind) {
            Some(name) => (name, None, numel),
            None => (
                "UntypedStorage",
                Some(dtype_name(s.kind)),
                numel * s.kind.elt_size_in_bytes() as i64,
            ),
        };
        Ok(TensorRef {
            storage_type,
            v3_dtype,
            key: s.key.clone(),
            storage_numel,
            offset: if t.numel() == 0 {
                0
            } else {
                g.offset - s.start
            },
            size: t.size(),
            stride: t.stride(),
        })
    }
}

/// How storages are materialized on load.
pub struct StorageLoader<'a> {
    /// The archive.
    pub zip: &'a ZipReader,
    /// The whole file mapped privately (copy-on-write), for zero-copy tensors.
    pub map: Option<&'static [u8]>,
    /// Check each record's CRC-32.
    pub verify_crc: bool,
    /// Where tensors go.
    pub device: Device,
    /// Allocate storages without reading them (structure checks only).
    pub skip_data: bool,
    /// Path for errors.
    pub path: &'a Path,
    /// Records read so far (full names).
    pub used: std::cell::RefCell<std::collections::HashSet<String>>,
    /// CPU storages allocated while the pickle is read, filled afterwards by
    /// [`StorageLoader::fill_pending`] in parallel (`None`: each is read when it is met).
    pub pending: Option<std::cell::RefCell<Vec<PendingFill>>>,
}

/// A CPU storage whose bytes are still to be read: its record and its (fresh, contiguous)
/// tensor, held so the memory stays alive until it is filled.
pub struct PendingFill {
    entry: super::zip_io::Entry,
    tensor: Tensor,
}

/// Bytes per unit of parallel work: large records are split so every thread has work, and
/// each chunk's CRC is computed while it is still in cache (then combined in order).
const FILL_CHUNK: u64 = 8 << 20;
/// Each chunk is read and CRC-checked in pieces of this size, so the CRC reads the piece from
/// the core's cache rather than from memory.
const CRC_PIECE: usize = 256 << 10;

/// Faults in `buf`'s pages for writing in one call (`MADV_POPULATE_WRITE`): fresh allocator
/// memory otherwise faults page by page inside the reads. Only a hint: older kernels refuse it
/// and the reads fault the pages in as before.
fn prefault(buf: &mut [u8]) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if buf.is_empty() || page == 0 {
        return;
    }
    let start = buf.as_mut_ptr() as usize / page * page;
    let end = (buf.as_mut_ptr() as usize + buf.len()).div_ceil(page) * page;
    // SAFETY: the range covers only pages holding part of `buf` (mapped, writable, ours);
    // populating does not change their contents.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
}

/// Host staging per batch when storages go to another device: 128 MiB (pinned once, reused).
const STAGE_BYTES: u64 = 128 << 20;

#[cfg(test)]
thread_local! {
    /// Tests: stage CPU loads too, in batches of this many bytes (the device path's logic,
    /// checked without a GPU).
    pub(crate) static FORCE_STAGING: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
    /// Tests: staged batches read on this thread so far.
    pub(crate) static STAGED_BATCHES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The batch size tests force CPU loads to stage with (never in a build that is not a test).
fn forced_staging() -> Option<u64> {
    #[cfg(test)]
    return FORCE_STAGING.with(|f| f.get());
    #[cfg(not(test))]
    None
}

/// A raw destination pointer that may cross to the reading threads.
#[derive(Clone, Copy)]
struct Dest(*mut u8);
// SAFETY: each chunk's range is written by exactly one thread, and the tensors behind the
// pointers outlive the scoped threads (the `PendingFill`s, or the staging buffer).
unsafe impl Send for Dest {}
unsafe impl Sync for Dest {}

impl StorageLoader<'_> {
    /// Reads every pending storage: chunks of at most 8 MiB spread over the machine's cores,
    /// each chunk CRC-checked while in cache and the chunk CRCs combined per record. The first
    /// error wins and stops the rest.
    ///
    /// CPU storages are read straight into their tensors' memory (`pread`, one copy). Storages
    /// on another device (`LoadOptions::device`) are read the same way into one reused host
    /// staging buffer (pinned when the device allows), 128 MiB at a time, and each
    /// batch is copied to its tensors on the device: the reads stay parallel, and host memory
    /// stays bounded whatever the checkpoint's size.
    pub fn fill_pending(&self) -> Result<(), CheckpointError> {
        let Some(pending) = &self.pending else {
            return Ok(());
        };
        let fills = pending.borrow();
        // (fill, offset, len) for every chunk, in file order within a record.
        let mut chunks = Vec::new();
        for (i, f) in fills.iter().enumerate() {
            let mut off = 0;
            while off < f.entry.size {
                let len = (f.entry.size - off).min(FILL_CHUNK);
                chunks.push((i, off, len));
                off += len;
            }
        }
        let crcs: Vec<std::sync::Mutex<Option<crc32fast::Hasher>>> =
            chunks.iter().map(|_| Default::default()).collect();
        let forced = forced_staging();
        let entries: Vec<&super::zip_io::Entry> = fills.iter().map(|f| &f.entry).collect();
        let device = fills
            .iter()
            .map(|f| f.tensor.device())
            .find(|d| *d != Device::Cpu);
        if device.is_none() && forced.is_none() {
            let dests: Vec<Dest> = chunks
                .iter()
                // SAFETY: in bounds: each tensor holds its record's `size` bytes (checked in
                // `load`) and `off < size`.
                .map(|&(i, off, _)| {
                    Dest(unsafe { (fills[i].tensor.data_ptr() as *mut u8).add(off as usize) })
                })
                .collect();
            self.read_chunks(&entries, &chunks, &dests, &crcs)?;
        } else {
            self.read_staged(
                &fills,
                &entries,
                &chunks,
                &crcs,
                forced.unwrap_or(STAGE_BYTES),
                device,
            )?;
        }
        if self.verify_crc {
            let mut per_record: Vec<crc32fast::Hasher> =
                fills.iter().map(|_| crc32fast::Hasher::new()).collect();
            for (slot, &(i, _, _)) in crcs.into_iter().zip(&chunks) {
                // Every chunk was read (no error), so every slot holds its CRC.
                if let Some(h) = slot.into_inner().ok().flatten() {
                    per_record[i].combine(&h);
                }
            }
            for (f, h) in fills.iter().zip(per_record) {
                self.zip.check_crc_value(&f.entry, h.finalize())?;
            }
        }
        Ok(())
    }

    /// Reads `chunks` into host staging, at most `stage` bytes per batch (a chunk is never
    /// split), and copies each batch to its tensors on `device`.
    fn read_staged(
        &self,
        fills: &[PendingFill],
        entries: &[&super::zip_io::Entry],
        chunks: &[(usize, u64, u64)],
        crcs: &[std::sync::Mutex<Option<crc32fast::Hasher>>],
        stage: u64,
        device: Option<Device>,
    ) -> Result<(), CheckpointError> {
        let fmt = |msg: String| CheckpointError::Format {
            path: self.path.to_owned(),
            msg,
        };
        // Each chunk starts 64-byte aligned in the buffer, so it can be viewed as its dtype;
        // the buffer holds them all when they fit in `stage`, else the largest.
        let align = |at: u64| at.div_ceil(64) * 64;
        let padded: u64 = chunks.iter().map(|c| align(c.2)).sum();
        let largest = chunks.iter().map(|c| c.2).max().unwrap_or(0);
        let size = i64::try_from(padded.min(stage.max(largest)))
            .map_err(|_| fmt("staging buffer size overflows".into()))?;
        // Pinned memory copies to a GPU at full speed; where it cannot be had, pageable works.
        let pinned = match device {
            Some(Device::Cuda(_)) => crate::cuda::pinned_host(&[size], Kind::Uint8),
            _ => None,
        };
        let host = match pinned {
            Some(host) => host,
            None => Tensor::f_empty([size], (Kind::Uint8, Device::Cpu))
                .map_err(|e| fmt(format!("allocating {size} bytes of host staging: {e}")))?,
        };
        let base = host.data_ptr() as *mut u8;
        let mut start = 0;
        while start < chunks.len() {
            // The batch: chunks from `start` while they fit (the first always does).
            let (mut end, mut bytes, mut starts) = (start, 0u64, Vec::new());
            while end < chunks.len()
                && (end == start || align(bytes) + chunks[end].2 <= size as u64)
            {
                starts.push(align(bytes));
                bytes = align(bytes) + chunks[end].2;
                end += 1;
            }
            let batch = &chunks[start..end];
            #[cfg(test)]
            STAGED_BATCHES.with(|b| b.set(b.get() + 1));
            let dests: Vec<Dest> = starts
                .iter()
                // SAFETY: each chunk's range `[at, at + len)` lies inside the `size`-byte buffer.
                .map(|&at| Dest(unsafe { base.add(at as usize) }))
                .collect();
            self.read_chunks(entries, batch, &dests, &crcs[start..end])?;
            for (&(i, off, len), &at) in batch.iter().zip(&starts) {
                let at = at as i64;
                let f = &fills[i];
                let kind = f.tensor.kind();
                let elt = kind.elt_size_in_bytes() as u64;
                let copy = || -> Result<(), tch::TchError> {
                    let src = host.f_narrow(0, at, len as i64)?.f_view_dtype(kind)?;
                    let mut dst = f
                        .tensor
                        .f_narrow(0, (off / elt) as i64, (len / elt) as i64)?;
                    dst.f_copy_(&src)
                };
                copy().map_err(|e| {
                    fmt(format!(
                        "record {}: copying bytes {off}..{} to {:?}: {e}",
                        f.entry.name,
                        off + len,
                        f.tensor.device()
                    ))
                })?;
            }
            start = end;
        }
        Ok(())
    }

    /// Reads each of `chunks` (fill, offset, len) to its `dests` pointer on up to 8 threads,
    /// pieces of 256 KiB CRC-checked while in cache, each chunk's CRC into its `crcs` slot.
    fn read_chunks(
        &self,
        entries: &[&super::zip_io::Entry],
        chunks: &[(usize, u64, u64)],
        dests: &[Dest],
        crcs: &[std::sync::Mutex<Option<crc32fast::Hasher>>],
    ) -> Result<(), CheckpointError> {
        let (zip, verify) = (self.zip, self.verify_crc);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed: std::sync::Mutex<Option<CheckpointError>> = Default::default();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(chunks.len().max(1));
        let work = || loop {
            let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(i, off, len)) = chunks.get(c) else {
                return;
            };
            if failed.lock().map_or(true, |f| f.is_some()) {
                return;
            }
            let e = entries[i];
            // SAFETY: `dests[c]` starts `len` writable bytes that only this chunk writes, and
            // the memory behind it outlives the scoped threads.
            let buf = unsafe { std::slice::from_raw_parts_mut(dests[c].0, len as usize) };
            prefault(buf);
            // Read in pieces that stay in cache for their CRC.
            let mut h = crc32fast::Hasher::new();
            let mut read = Ok(());
            let mut at = e.data_offset + off;
            for piece in buf.chunks_mut(CRC_PIECE) {
                read = zip.fill_at(&e.name, at, piece);
                if read.is_err() {
                    break;
                }
                if verify {
                    h.update(piece);
                }
                at += piece.len() as u64;
            }
            match read {
                Ok(()) if verify => {
                    if let Ok(mut slot) = crcs[c].lock() {
                        *slot = Some(h);
                    }
                }
                Ok(()) => {}
                Err(err) => {
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(err);
                    }
                    return;
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
        match failed.into_inner().ok().flatten() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Loads the storage `key` holding `numel` elements of `kind`.
    pub fn load(&self, key: &str, kind: Kind, numel: i64) -> Result<Tensor, CheckpointError> {
        let fmt = |msg: String| CheckpointError::Format {
            path: self.path.to_owned(),
            msg,
        };
        let name = format!("data/{key}");
        let e = self
            .zip
            .entry(&name)
            .ok_or_else(|| fmt(format!("missing record {}/{name}", self.zip.prefix())))?
            .clone();
        self.used.borrow_mut().insert(e.name.clone());
        let elt = kind.elt_size_in_bytes() as u64;
        let nbytes = (numel as u64)
            .checked_mul(elt)
            .ok_or_else(|| fmt(format!("storage {key}: size overflows")))?;
        if nbytes != e.size {
            return Err(fmt(format!(
                "record {}: {} bytes, but the pickle says {numel} elements of {kind:?} ({nbytes} bytes)",
                e.name, e.size
            )));
        }
        let t = match self.map {
            Some(map) if e.data_offset % elt == 0 && !self.skip_data => {
                let start = e.data_offset as usize;
                let bytes = &map[start..start + nbytes as usize];
                if self.verify_crc {
                    self.zip.check_crc(&e, bytes)?;
                }
                // SAFETY: the mapping is leaked (lives for the process) and private (writes to
                // the tensor never reach the file); the range was checked against the file.
                unsafe { Tensor::f_from_blob(bytes.as_ptr(), &[numel], &[1], kind, Device::Cpu) }
                    .map_err(|err| fmt(format!("storage {key}: {err}")))?
            }
            _ => {
                // Set only for copy-loads that read data (`read_tree` decides): the storage is
                // allocated where it goes and filled after the pickle.
                if let Some(pending) = &self.pending {
                    let t = Tensor::f_empty([numel], (kind, self.device))
                        .map_err(|err| fmt(format!("storage {key} on {:?}: {err}", self.device)))?;
                    pending.borrow_mut().push(PendingFill {
                        entry: e,
                        tensor: t.shallow_clone(),
                    });
                    return Ok(t);
                }
                let t = Tensor::f_empty([numel], (kind, Device::Cpu))
                    .map_err(|err| fmt(format!("storage {key}: {err}")))?;
                if !self.skip_data {
                    let buf: &mut [u8] = if nbytes == 0 {
                        &mut [] // still CRC-checked below: an empty record's CRC is 0
                    } else {
                        // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `nbytes` bytes.
                        unsafe {
                            std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, nbytes as usize)
                        }
                    };
                    // Read in 1 MiB chunks, checksumming each while it is still in cache.
                    let mut crc = crc32fast::Hasher::new();
                    let mut off = 0usize;
                    for chunk in buf.chunks_mut(1 << 20) {
                        self.zip
                            .fill_at(&e.name, e.data_offset + off as u64, chunk)?;
                        if self.verify_crc {
                            crc.update(chunk);
                        }
                        off += chunk.len();
                    }
                    if self.verify_crc {
                        self.zip.check_crc_value(&e, crc.finalize())?;
                    }
                }
                t
            }
        };
        if self.device == Device::Cpu {
            Ok(t)
        } else {
            t.f_to_device(self.device)
                .map_err(|err| fmt(format!("storage {key} to {:?}: {err}", self.device)))
        }
    }
}
