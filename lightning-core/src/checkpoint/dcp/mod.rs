//! Sharded checkpoints in `torch.distributed.checkpoint`'s (DCP's) format: a directory with a
//! `.metadata` pickle ([`Metadata`]) and one `__{rank}_0.distcp` file per rank, each a run of
//! complete `torch.save` archives (a tensor block, or a non-tensor value) that `.metadata`
//! locates by byte range.
//!
//! Nested states are flattened as DCP flattens them ([`flatten`]: dict keys joined with dots,
//! lists of dicts or tensors by position) and rebuilt from `planner_data` ([`unflatten`]).
//! Writing is two steps, as in DCP: every rank writes its file ([`write_rank_file`]), then one
//! rank writes `.metadata` from what all of them wrote ([`write_metadata`]). Reading
//! ([`DcpReader`]) assembles any block of a tensor from the saved blocks that overlap it, so a
//! checkpoint written by W ranks loads on any other number; each archive's CRC-32s are checked
//! (DCP checks none) and an error names the item.
//!
//! ```
//! use lightning_core::checkpoint::dcp;
//! use lightning_core::{Dict, Value};
//! use tch::Tensor;
//!
//! let mut model = Dict::new();
//! model.insert("fc.weight".into(), Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]).into());
//! let mut state = Value::dict();
//! state.insert("model", Value::Dict(model));
//! state.insert("epoch", 3i64);
//! let dir = std::env::temp_dir().join(format!("dcp-doc-{}", std::process::id()));
//! dcp::save(&dir, &state)?;
//! let r = dcp::DcpReader::open(&dir)?;
//! let bottom_row = r.read_block("model.fc.weight", &[1, 0], &[1, 2])?;
//! assert_eq!(Vec::<f32>::try_from(bottom_row.reshape([-1]))?, [3.0, 4.0]);
//! assert_eq!(r.read_all()?, state);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod lightning;
mod metadata;

pub use metadata::{Chunk, ItemMeta, Metadata, PathPart, StorageIndex, StorageInfo, TensorMeta};

use super::zip_io::ZipReader;
use super::CheckpointError;
use crate::storage::local;
use crate::value::{dtype_name, Dict, Key, Value};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The metadata file's name.
pub const METADATA_FILE: &str = ".metadata";

/// Rank `rank`'s data file (`__0_0.distcp`).
pub fn rank_file_name(rank: usize) -> String {
    format!("__{rank}_0.distcp")
}

// ---- flattening ---------------------------------------------------------------------------

/// A flattened item: its dotted key, its path in the nested state, and the value.
pub type FlatItem<'a> = (String, Vec<PathPart>, &'a Value);

/// DCP's `flatten_state_dict`: every leaf of the nested state with its dotted key. Dicts are
/// walked; a list is walked (by position) when it holds a tensor or a dict or list that is
/// walked, else it is one leaf, as are tuples and every other value.
pub fn flatten(state: &Value) -> Vec<FlatItem<'_>> {
    fn walked(v: &Value) -> bool {
        match v {
            Value::Dict(_) | Value::OrderedDict(_) => true,
            Value::List(items) => items
                .iter()
                .any(|x| matches!(x, Value::Tensor(_)) || walked(x)),
            _ => false,
        }
    }
    fn go<'a>(path: &mut Vec<PathPart>, v: &'a Value, out: &mut Vec<FlatItem<'a>>) {
        match v {
            Value::Dict(d) | Value::OrderedDict(d) if walked(v) => {
                for (k, x) in d {
                    path.push(PathPart::Key(k.to_string()));
                    go(path, x, out);
                    path.pop();
                }
            }
            Value::List(items) if walked(v) => {
                for (i, x) in items.iter().enumerate() {
                    path.push(PathPart::Index(i as i64));
                    go(path, x, out);
                    path.pop();
                }
            }
            _ => out.push((dotted(path), path.clone(), v)),
        }
    }
    let mut out = Vec::new();
    go(&mut Vec::new(), state, &mut out);
    out
}

/// A path's dotted key (`optimizer_0.param_groups.0.lr`).
pub fn dotted(path: &[PathPart]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|p| match p {
            PathPart::Key(k) => k.clone(),
            PathPart::Index(i) => i.to_string(),
        })
        .collect();
    parts.join(".")
}

/// Rebuilds the nested state from its leaves and their paths (dicts for keys, lists for
/// positions, filled in order). An empty path is the whole state.
pub fn unflatten(items: Vec<(Vec<PathPart>, Value)>) -> Result<Value, String> {
    let mut root = Value::Dict(Dict::new());
    for (path, v) in items {
        let Some((last, parents)) = path.split_last() else {
            return Ok(v);
        };
        let mut at = &mut root;
        for (i, p) in parents.iter().enumerate() {
            let next_is_index = matches!(path[i + 1], PathPart::Index(_));
            let fresh = || {
                if next_is_index {
                    Value::List(Vec::new())
                } else {
                    Value::Dict(Dict::new())
                }
            };
            at = child(at, p, fresh).map_err(|e| format!("{}: {e}", dotted(&path)))?;
        }
        let slot =
            child(at, last, || Value::None).map_err(|e| format!("{}: {e}", dotted(&path)))?;
        *slot = v;
    }
    Ok(root)
}

fn child<'a>(
    at: &'a mut Value,
    p: &PathPart,
    fresh: impl FnOnce() -> Value,
) -> Result<&'a mut Value, String> {
    match (at, p) {
        (Value::Dict(d) | Value::OrderedDict(d), PathPart::Key(k)) => {
            Ok(d.entry(Key::Str(k.clone())).or_insert_with(fresh))
        }
        (Value::List(l), PathPart::Index(i)) => {
            let i = usize::try_from(*i).map_err(|_| format!("negative index {i}"))?;
            if i > l.len() {
                return Err(format!("list position {i} before position {}", l.len()));
            }
            if i == l.len() {
                l.push(fresh());
            }
            Ok(&mut l[i])
        }
        (other, p) => Err(format!("{p:?} inside a {}", other.type_name())),
    }
}

// ---- writing ------------------------------------------------------------------------------

/// One item of a rank's part of the state.
pub enum LocalItem {
    /// The block of a tensor of `global_size` that starts at `offsets` (the whole tensor:
    /// zero offsets and its own size).
    Block {
        /// The whole tensor's size.
        global_size: Vec<i64>,
        /// Where the block starts.
        offsets: Vec<i64>,
        /// The block (any layout; written contiguous, on the CPU).
        tensor: Tensor,
    },
    /// A non-tensor value, saved whole.
    Bytes(Value),
}

/// What a rank wrote to its file: one entry per item, for [`write_metadata`].
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenItem {
    /// The dotted key.
    pub key: String,
    /// Its path in the nested state.
    pub path: Vec<PathPart>,
    /// For a tensor block: dtype, whole size, the block, `requires_grad`.
    pub tensor: Option<(TensorMeta, Chunk)>,
    /// Where the archive is.
    pub storage: StorageInfo,
}

impl WrittenItem {
    /// As JSON, for ranks to send what they wrote to the rank that writes `.metadata`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let path: Vec<serde_json::Value> = self
            .path
            .iter()
            .map(|p| match p {
                PathPart::Key(k) => json!(k),
                PathPart::Index(i) => json!(i),
            })
            .collect();
        json!({
            "key": self.key,
            "path": path,
            "tensor": self.tensor.as_ref().map(|(t, c)| json!({
                "dtype": t.dtype, "size": t.size, "requires_grad": t.requires_grad,
                "offsets": c.offsets, "sizes": c.sizes,
            })),
            "file": self.storage.relative_path,
            "offset": self.storage.offset,
            "length": self.storage.length,
        })
    }

    /// Reads [`Self::to_json`]'s form.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let s = |k: &str| v[k].as_str().map(str::to_owned).ok_or(format!("no {k}"));
        let u = |k: &str| v[k].as_u64().ok_or(format!("no {k}"));
        let ints = |x: &serde_json::Value, k: &str| -> Result<Vec<i64>, String> {
            x[k].as_array()
                .ok_or(format!("no {k}"))?
                .iter()
                .map(|i| i.as_i64().ok_or(format!("{k}: not an int")))
                .collect()
        };
        let path = v["path"]
            .as_array()
            .ok_or("no path")?
            .iter()
            .map(|p| match (p.as_str(), p.as_i64()) {
                (Some(k), _) => Ok(PathPart::Key(k.to_owned())),
                (None, Some(i)) => Ok(PathPart::Index(i)),
                _ => Err("a path part is neither str nor int".to_owned()),
            })
            .collect::<Result<_, _>>()?;
        let tensor = match &v["tensor"] {
            serde_json::Value::Null => None,
            t => {
                let dtype = t["dtype"].as_str().ok_or("no dtype")?;
                let dtype = crate::value::dtype_entry(dtype)
                    .map(|(d, _, _)| *d)
                    .ok_or(format!("unknown dtype {dtype}"))?;
                Some((
                    TensorMeta {
                        dtype,
                        size: ints(t, "size")?,
                        chunks: vec![],
                        requires_grad: t["requires_grad"].as_bool().unwrap_or(false),
                    },
                    Chunk {
                        offsets: ints(t, "offsets")?,
                        sizes: ints(t, "sizes")?,
                    },
                ))
            }
        };
        Ok(WrittenItem {
            key: s("key")?,
            path,
            tensor,
            storage: StorageInfo {
                relative_path: s("file")?,
                offset: u("offset")?,
                length: u("length")?,
            },
        })
    }
}

/// Writes rank `rank`'s items into `dir/__{rank}_0.distcp` (atomically; fsynced when
/// `durable`): each a complete `torch.save` archive, back to back. Returns where each went.
pub fn write_rank_file(
    dir: &Path,
    rank: usize,
    items: &[(String, Vec<PathPart>, LocalItem)],
    durable: bool,
) -> Result<Vec<WrittenItem>, CheckpointError> {
    write_items_file(dir, &rank_file_name(rank), items, durable)
}

/// [`write_rank_file`] under the file name `name` (readers find each item's file through
/// `.metadata`), into a local directory or, uploaded as it is written, under an
/// object-storage prefix.
pub fn write_items_file(
    dir: &Path,
    name: &str,
    items: &[(String, Vec<PathPart>, LocalItem)],
    durable: bool,
) -> Result<Vec<WrittenItem>, CheckpointError> {
    let name = name.to_owned();
    let path = dir.join(&name);
    let mut prepared = Vec::with_capacity(items.len());
    let mut needed = 0;
    for (key, _, item) in items {
        let value = match item {
            LocalItem::Block {
                global_size,
                offsets,
                tensor,
            } => {
                let sizes = tensor.size();
                metadata::check_chunk(global_size, offsets, &sizes).map_err(|e| {
                    CheckpointError::Unsupported {
                        path: path.clone(),
                        what: format!("item {key:?}: {e}"),
                    }
                })?;
                Value::Tensor(tensor.to_device(tch::Device::Cpu).contiguous())
            }
            LocalItem::Bytes(v) => v.clone(),
        };
        let p = super::prepare(&path, &value)?;
        needed += p.needed;
        prepared.push(p);
    }
    let mut lengths = Vec::with_capacity(items.len());
    crate::storage::files::write_atomically(&path, needed, durable, |w| {
        let mut total = 0;
        for p in &prepared {
            let (_, len) = super::write_archive(&mut *w, p)?;
            lengths.push(len);
            total += len;
        }
        Ok(total)
    })?;
    let mut offset = 0;
    Ok(items
        .iter()
        .zip(lengths)
        .map(|((key, path, item), length)| {
            let storage = StorageInfo {
                relative_path: name.clone(),
                offset,
                length,
            };
            offset += length;
            let tensor = match item {
                LocalItem::Block {
                    global_size,
                    offsets,
                    tensor,
                } => Some((
                    TensorMeta {
                        dtype: dtype_name(tensor.kind()),
                        size: global_size.clone(),
                        chunks: vec![],
                        requires_grad: tensor.requires_grad(),
                    },
                    Chunk {
                        offsets: offsets.clone(),
                        sizes: tensor.size(),
                    },
                )),
                LocalItem::Bytes(_) => None,
            };
            WrittenItem {
                key: key.clone(),
                path: path.clone(),
                tensor,
                storage,
            }
        })
        .collect())
}

/// Builds `.metadata` from what every rank wrote (in rank order) and writes it into `dir`
/// (atomically; fsynced when `durable`). Items keep the order of their first appearance;
/// a tensor's blocks are listed in rank order. The blocks of a tensor must agree on its dtype
/// and size.
pub fn write_metadata(
    dir: &Path,
    written: &[WrittenItem],
    save_id: &str,
    durable: bool,
) -> Result<Metadata, CheckpointError> {
    let path = dir.join(METADATA_FILE);
    let id = match crate::storage::is_url(dir) {
        true => dir.to_path_buf(),
        false => local::absolute(dir),
    };
    let mut m = Metadata {
        checkpoint_id: Some(id.to_string_lossy().into_owned()),
        save_id: Some(save_id.to_owned()),
        version: Some("1.0.0".into()),
        ..Metadata::default()
    };
    for w in written {
        m.planner_data
            .entry(w.key.clone())
            .or_insert_with(|| w.path.clone());
        let (offset, index) = match &w.tensor {
            None => {
                if m.items.insert(w.key.clone(), ItemMeta::Bytes).is_some() {
                    continue; // a replicated value: the first rank's copy is the one
                }
                (None, None)
            }
            Some((t, c)) => {
                let entry = m
                    .items
                    .entry(w.key.clone())
                    .or_insert_with(|| ItemMeta::Tensor(t.clone()));
                let ItemMeta::Tensor(have) = entry else {
                    return Err(mismatch(&path, &w.key, "a tensor and a value"));
                };
                if have.dtype != t.dtype || have.size != t.size {
                    return Err(mismatch(
                        &path,
                        &w.key,
                        "blocks of different dtypes or sizes",
                    ));
                }
                if have.chunks.iter().any(|x| x.offsets == c.offsets) {
                    continue; // a replicated tensor: one copy
                }
                have.chunks.push(c.clone());
                (Some(c.offsets.clone()), Some(have.chunks.len() as i64 - 1))
            }
        };
        m.storage.push((
            StorageIndex {
                fqn: w.key.clone(),
                offset,
                index,
            },
            w.storage.clone(),
        ));
    }
    let bytes = m.to_pickle();
    crate::storage::files::write_atomically(&path, bytes.len() as u64, durable, |w| {
        std::io::Write::write_all(w, &bytes)?;
        Ok(bytes.len() as u64)
    })?;
    Ok(m)
}

fn mismatch(path: &Path, key: &str, what: &str) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_owned(),
        msg: format!("item {key:?}: the ranks saved {what}"),
    }
}

/// Saves a whole (unsharded) state as a one-rank DCP checkpoint directory `dir`, atomically:
/// the directory appears complete or not at all (an existing one is replaced).
pub fn save(dir: &Path, state: &Value) -> Result<(), CheckpointError> {
    let items: Vec<(String, Vec<PathPart>, LocalItem)> = flatten(state)
        .into_iter()
        .map(|(k, p, v)| {
            let item = match v {
                Value::Tensor(t) => LocalItem::Block {
                    global_size: t.size(),
                    offsets: vec![0; t.dim()],
                    tensor: t.shallow_clone(),
                },
                v => LocalItem::Bytes(v.clone()),
            };
            (k, p, item)
        })
        .collect();
    let staging = local::staging_dir(dir)?;
    let result = (|| {
        let written = write_rank_file(&staging, 0, &items, true)?;
        write_metadata(&staging, &written, &new_save_id(), true)?;
        local::publish_dir(&staging, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// A fresh id for a save (DCP's `save_id`: a UUID-like string).
pub fn new_save_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let x = nanos ^ (u128::from(std::process::id()) << 64);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (x >> 96) as u32,
        (x >> 80) as u16,
        (x >> 64) as u16,
        (x >> 48) as u16,
        x as u64 & 0xffff_ffff_ffff
    )
}

// ---- reading ------------------------------------------------------------------------------

/// A DCP checkpoint directory opened for reading: its metadata read by the safe reader (only
/// DCP's own classes allowed), the data files opened as needed.
pub struct DcpReader {
    dir: PathBuf,
    meta: Metadata,
    /// Storage entries by item key.
    by_key: HashMap<String, Vec<usize>>,
    files: std::sync::Mutex<HashMap<String, File>>,
}

impl DcpReader {
    /// Opens `dir` and reads its `.metadata`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join(METADATA_FILE);
        let data = std::fs::read(&path).map_err(|e| CheckpointError::io(&path, e))?;
        let tree = super::pickle_read::read_dcp_pickle(&data, &path)?;
        let meta = Metadata::from_pyobj(&tree, &path)?;
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (idx, _)) in meta.storage.iter().enumerate() {
            if !meta.items.contains_key(&idx.fqn) {
                return Err(CheckpointError::Format {
                    path,
                    msg: format!("storage_data names {:?}, which has no metadata", idx.fqn),
                });
            }
            by_key.entry(idx.fqn.clone()).or_default().push(i);
        }
        for (k, item) in &meta.items {
            let n = by_key.get(k).map_or(0, Vec::len);
            let want = match item {
                ItemMeta::Tensor(t) => t.chunks.len(),
                ItemMeta::Bytes => 1,
            };
            if n != want {
                return Err(CheckpointError::Format {
                    path,
                    msg: format!("item {k:?} has {want} blocks and {n} storage entries"),
                });
            }
        }
        Ok(DcpReader {
            dir: dir.to_owned(),
            meta,
            by_key,
            files: Default::default(),
        })
    }

    /// The checkpoint's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn archive(&self, entry: usize) -> Result<Value, CheckpointError> {
        let (idx, info) = &self.meta.storage[entry];
        let path = self.dir.join(&info.relative_path);
        let wrap = |e: CheckpointError| CheckpointError::Item {
            key: idx.fqn.clone(),
            source: Box::new(e),
        };
        let file = {
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            match files.get(&info.relative_path) {
                Some(f) => f.try_clone(),
                None => File::open(&path).and_then(|f| {
                    let c = f.try_clone();
                    files.insert(info.relative_path.clone(), f);
                    c
                }),
            }
            .map_err(|e| wrap(CheckpointError::io(&path, e)))?
        };
        let len = file
            .metadata()
            .map_err(|e| wrap(CheckpointError::io(&path, e)))?
            .len();
        if info
            .offset
            .checked_add(info.length)
            .is_none_or(|end| end > len)
        {
            return Err(wrap(CheckpointError::Truncated {
                path,
                what: format!("bytes {}..+{}", info.offset, info.length),
                needed: info.offset.saturating_add(info.length),
                len,
            }));
        }
        let zip = ZipReader::from_range(&path, file, info.offset, info.length).map_err(wrap)?;
        super::read_archive(&zip, &path).map_err(wrap)
    }

    fn tensor_meta(&self, key: &str) -> Result<&TensorMeta, CheckpointError> {
        match self.meta.items.get(key) {
            Some(ItemMeta::Tensor(t)) => Ok(t),
            Some(ItemMeta::Bytes) => Err(self.err(format!("item {key:?} is not a tensor"))),
            None => Err(self.err(format!("no item {key:?}"))),
        }
    }

    fn err(&self, msg: String) -> CheckpointError {
        CheckpointError::Format {
            path: self.dir.clone(),
            msg,
        }
    }

    /// The block of tensor `key` at `offsets` of size `sizes`, assembled from every saved
    /// block that overlaps it (each read once; only those are read).
    pub fn read_block(
        &self,
        key: &str,
        offsets: &[i64],
        sizes: &[i64],
    ) -> Result<Tensor, CheckpointError> {
        let t = self.tensor_meta(key)?;
        metadata::check_chunk(&t.size, offsets, sizes)
            .map_err(|e| self.err(format!("{key}: {e}")))?;
        let kind = crate::value::dtype_entry(t.dtype)
            .and_then(|(_, _, k)| *k)
            .ok_or_else(|| self.err(format!("{key}: dtype {} is not supported", t.dtype)))?;
        // The usual resume on the same world size: one saved block is exactly the one asked
        // for, and is returned as read (no second buffer, no copy).
        let exact = self.by_key[key].iter().copied().find(|&e| {
            let (idx, _) = &self.meta.storage[e];
            idx.index
                .and_then(|i| t.chunks.get(i as usize))
                .is_some_and(|c| c.offsets == offsets && c.sizes == sizes)
        });
        let out = match exact {
            Some(_) => Tensor::empty([0], (kind, tch::Device::Cpu)), // not used
            None => Tensor::zeros(sizes, (kind, tch::Device::Cpu)),
        };
        let mut covered: i64 = 0;
        for &e in &self.by_key[key] {
            let (idx, _) = &self.meta.storage[e];
            let chunk = match (&idx.offset, idx.index) {
                (_, Some(i)) => t.chunks.get(i as usize),
                (Some(o), None) => t.chunks.iter().find(|c| &c.offsets == o),
                (None, None) => None,
            }
            .ok_or_else(|| self.err(format!("{key}: a storage entry names no block")))?;
            if exact.is_some_and(|x| x != e) {
                continue;
            }
            let Some((lo, hi)) = overlap(&chunk.offsets, &chunk.sizes, offsets, sizes) else {
                continue;
            };
            let saved = match self.archive(e)? {
                Value::Tensor(x) => x,
                other => {
                    return Err(self.err(format!("{key}: a block holds a {}", other.type_name())))
                }
            };
            if saved.size() != chunk.sizes || saved.kind() != kind {
                return Err(CheckpointError::Item {
                    key: key.to_owned(),
                    source: Box::new(self.err(format!(
                        "the block at {:?} holds a {:?} tensor of size {:?}, metadata says {} {:?}",
                        chunk.offsets,
                        saved.kind(),
                        saved.size(),
                        t.dtype,
                        chunk.sizes
                    ))),
                });
            }
            if exact.is_some() {
                return Ok(saved);
            }
            let mut src = saved;
            let mut dst = out.shallow_clone();
            for d in 0..sizes.len() {
                let n = hi[d] - lo[d];
                src = src.narrow(d as i64, lo[d] - chunk.offsets[d], n);
                dst = dst.narrow(d as i64, lo[d] - offsets[d], n);
            }
            dst.copy_(&src);
            covered += src.numel() as i64;
        }
        let want: i64 = sizes.iter().product();
        if covered < want {
            return Err(self.err(format!(
                "{key}: the saved blocks cover {covered} of the {want} elements asked for"
            )));
        }
        Ok(out)
    }

    /// The whole tensor `key`.
    pub fn read_tensor(&self, key: &str) -> Result<Tensor, CheckpointError> {
        let size = self.tensor_meta(key)?.size.clone();
        self.read_block(key, &vec![0; size.len()], &size)
    }

    /// The non-tensor value `key`.
    pub fn read_value(&self, key: &str) -> Result<Value, CheckpointError> {
        match self.meta.items.get(key) {
            Some(ItemMeta::Bytes) => self.archive(self.by_key[key][0]),
            Some(ItemMeta::Tensor(_)) => self.read_tensor(key).map(Value::Tensor),
            None => Err(self.err(format!("no item {key:?}"))),
        }
    }

    /// The path of `key` in the nested state (from `planner_data`, else its dotted parts).
    pub fn path_of(&self, key: &str) -> Vec<PathPart> {
        self.meta.planner_data.get(key).cloned().unwrap_or_else(|| {
            key.split('.')
                .map(|p| PathPart::Key(p.to_owned()))
                .collect()
        })
    }

    /// The whole state, nested again (what `dcp_to_torch_save` writes).
    pub fn read_all(&self) -> Result<Value, CheckpointError> {
        let mut items = Vec::with_capacity(self.meta.items.len());
        for key in self.meta.items.keys() {
            items.push((self.path_of(key), self.read_value(key)?));
        }
        unflatten(items).map_err(|e| self.err(e))
    }
}

/// The intersection of two blocks, as (start, end) per dimension, if not empty.
fn overlap(
    a_off: &[i64],
    a_size: &[i64],
    b_off: &[i64],
    b_size: &[i64],
) -> Option<(Vec<i64>, Vec<i64>)> {
    let mut lo = Vec::with_capacity(a_off.len());
    let mut hi = Vec::with_capacity(a_off.len());
    for d in 0..a_off.len() {
        let l = a_off[d].max(b_off[d]);
        let h = (a_off[d] + a_size[d]).min(b_off[d] + b_size[d]);
        if h <= l && !(a_size[d] == 0 && b_size[d] == 0) {
            return None;
        }
        lo.push(l);
        hi.push(h.max(l));
    }
    Some((lo, hi))
}

/// The row range `[start, end)` rank `rank` of `world` holds of a dimension of `n` rows when
/// it is split as `torch.chunk` splits it (FSDP's sharding): `c = ceil(n / world)` rows each,
/// the last ranks possibly fewer or none.
pub fn shard_rows(n: i64, rank: usize, world: usize) -> (i64, i64) {
    let w = world.max(1) as i64;
    let c = (n + w - 1) / w;
    let r = rank as i64;
    ((r * c).min(n), ((r + 1) * c).min(n))
}
