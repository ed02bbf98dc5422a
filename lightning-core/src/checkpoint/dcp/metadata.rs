//! A DCP checkpoint's `.metadata`: the model ([`Metadata`]), its pickle as
//! `torch.distributed.checkpoint` writes it (protocol 4, the metadata dataclasses rebuilt by
//! `NEWOBJ` + `BUILD`), and its parse from the safe reader's DCP mode.

use crate::checkpoint::pickle_read::PyObj;
use crate::checkpoint::CheckpointError;
use indexmap::IndexMap;
use std::path::Path;

/// A step of an item's path in the nested state (`planner_data`): a dict key or a list index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathPart {
    /// A dict key (`str(key)`).
    Key(String),
    /// A list position.
    Index(i64),
}

/// One saved block of a tensor: where it starts and its extent, per dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Start of the block in the whole tensor.
    pub offsets: Vec<i64>,
    /// The block's size.
    pub sizes: Vec<i64>,
}

/// What `.metadata` says about a tensor item.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// torch's dtype name (`float32`).
    pub dtype: &'static str,
    /// The whole tensor's size.
    pub size: Vec<i64>,
    /// The saved blocks, which together cover it.
    pub chunks: Vec<Chunk>,
    /// `requires_grad` of the saved tensor.
    pub requires_grad: bool,
}

/// An item of the flattened state.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemMeta {
    /// A tensor, saved in blocks.
    Tensor(TensorMeta),
    /// Any other value, saved whole (`torch.save` of it).
    Bytes,
}

/// Which saved block a storage entry holds (DCP's `MetadataIndex`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageIndex {
    /// The item's flattened key.
    pub fqn: String,
    /// The block's offsets (tensors).
    pub offset: Option<Vec<i64>>,
    /// The block's position in the item's chunk list (tensors).
    pub index: Option<i64>,
}

/// Where a block lies (DCP's `_StorageInfo`): a byte range of a file of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageInfo {
    /// The file, relative to the checkpoint directory (`__0_0.distcp`).
    pub relative_path: String,
    /// Start of the block's `torch.save` archive in the file.
    pub offset: u64,
    /// Its length.
    pub length: u64,
}

/// A DCP checkpoint's `.metadata`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metadata {
    /// Every item by flattened key, in save order (`state_dict_metadata`).
    pub items: IndexMap<String, ItemMeta>,
    /// Each flattened key's path in the nested state (`planner_data`).
    pub planner_data: IndexMap<String, Vec<PathPart>>,
    /// Where each block is (`storage_data`).
    pub storage: Vec<(StorageIndex, StorageInfo)>,
    /// `storage_meta.checkpoint_id`, as saved.
    pub checkpoint_id: Option<String>,
    /// `storage_meta.save_id`.
    pub save_id: Option<String>,
    /// `version` (`1.0.0` in torch 2.11).
    pub version: Option<String>,
}

// ---- writing ------------------------------------------------------------------------------

const MODULE: &str = "torch.distributed.checkpoint.metadata";

/// A protocol-4 pickle emitter for the metadata classes (no memo: every object is written
/// where it is used, which Python's unpickler accepts).
struct Out(Vec<u8>);

impl Out {
    fn str(&mut self, s: &str) {
        let b = s.as_bytes();
        if b.len() < 256 {
            self.0.extend_from_slice(&[0x8c, b.len() as u8]);
        } else {
            self.0.push(b'X');
            self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        }
        self.0.extend_from_slice(b);
    }

    fn int(&mut self, i: i64) {
        if (0..256).contains(&i) {
            self.0.extend_from_slice(&[b'K', i as u8]);
        } else if i32::try_from(i).is_ok() {
            self.0.push(b'J');
            self.0.extend_from_slice(&(i as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, 8 bytes is always enough for an i64.
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.str(module);
        self.str(name);
        self.0.push(0x93); // STACK_GLOBAL
    }

    fn none(&mut self) {
        self.0.push(b'N');
    }

    fn bool(&mut self, b: bool) {
        self.0.push(if b { 0x88 } else { 0x89 });
    }

    /// `cls.__new__(cls)`, then `BUILD` with the state `fields` pushes (a dict).
    fn object(&mut self, module: &str, class: &str, fields: impl FnOnce(&mut Self)) {
        self.global(module, class);
        self.0.extend_from_slice(&[b')', 0x81, b'}', b'(']); // (), NEWOBJ, {}, MARK
        fields(self);
        self.0.extend_from_slice(b"ub"); // SETITEMS, BUILD
    }

    fn size(&mut self, v: &[i64]) {
        self.global("torch", "Size");
        self.tuple(v);
        self.0.extend_from_slice(&[0x85, b'R']); // TUPLE1, REDUCE
    }

    fn tuple(&mut self, v: &[i64]) {
        self.0.push(b'(');
        for &i in v {
            self.int(i);
        }
        self.0.push(b't');
    }

    fn path(&mut self, parts: &[PathPart]) {
        self.0.push(b'(');
        for p in parts {
            match p {
                PathPart::Key(k) => self.str(k),
                PathPart::Index(i) => self.int(*i),
            }
        }
        self.0.push(b't');
    }

    fn chunk(&mut self, c: &Chunk) {
        self.object(MODULE, "ChunkStorageMetadata", |o| {
            o.str("offsets");
            o.size(&c.offsets);
            o.str("sizes");
            o.size(&c.sizes);
        });
    }

    fn tensor_meta(&mut self, t: &TensorMeta) {
        self.object(MODULE, "TensorStorageMetadata", |o| {
            o.str("properties");
            // TensorProperties.__setstate__ takes (dtype, layout, requires_grad,
            // memory_format, pin_memory).
            o.global(MODULE, "TensorProperties");
            o.0.extend_from_slice(&[b')', 0x81, b'(']);
            o.global("torch", t.dtype);
            o.global("torch.serialization", "_get_layout");
            o.str("torch.strided");
            o.0.extend_from_slice(&[0x85, b'R']);
            o.bool(t.requires_grad);
            o.global(MODULE, "_MEM_FORMAT_ENCODING");
            o.int(0); // TORCH_CONTIGUOUS_FORMAT
            o.0.extend_from_slice(&[0x85, b'R']);
            o.bool(false);
            o.0.extend_from_slice(b"tb"); // TUPLE, BUILD
            o.str("size");
            o.size(&t.size);
            o.str("chunks");
            o.0.extend_from_slice(b"](");
            for c in &t.chunks {
                o.chunk(c);
            }
            o.0.push(b'e'); // APPENDS
        });
    }
}

impl Metadata {
    /// The `.metadata` pickle, loadable by `torch.distributed.checkpoint` (and `pickle`).
    pub fn to_pickle(&self) -> Vec<u8> {
        let mut o = Out(vec![0x80, 4]);
        o.object(MODULE, "Metadata", |o| {
            o.str("state_dict_metadata");
            o.0.extend_from_slice(b"}(");
            for (k, item) in &self.items {
                o.str(k);
                match item {
                    ItemMeta::Tensor(t) => o.tensor_meta(t),
                    ItemMeta::Bytes => {
                        o.global(MODULE, "BytesStorageMetadata");
                        o.0.extend_from_slice(&[b')', 0x81]);
                    }
                }
            }
            o.0.push(b'u');
            o.str("planner_data");
            o.0.extend_from_slice(b"}(");
            for (k, p) in &self.planner_data {
                o.str(k);
                o.path(p);
            }
            o.0.push(b'u');
            o.str("storage_data");
            o.0.extend_from_slice(b"}(");
            for (idx, info) in &self.storage {
                o.object(MODULE, "MetadataIndex", |o| {
                    o.str("fqn");
                    o.str(&idx.fqn);
                    o.str("offset");
                    match &idx.offset {
                        Some(v) => o.size(v),
                        None => o.none(),
                    }
                    o.str("index");
                    match idx.index {
                        Some(i) => o.int(i),
                        None => o.none(),
                    }
                });
                o.object(
                    "torch.distributed.checkpoint.filesystem",
                    "_StorageInfo",
                    |o| {
                        o.str("relative_path");
                        o.str(&info.relative_path);
                        o.str("offset");
                        o.int(info.offset as i64);
                        o.str("length");
                        o.int(info.length as i64);
                    },
                );
            }
            o.0.push(b'u');
            o.str("storage_meta");
            o.object(MODULE, "StorageMeta", |o| {
                o.str("checkpoint_id");
                match &self.checkpoint_id {
                    Some(c) => o.str(c),
                    None => o.none(),
                }
                o.str("save_id");
                match &self.save_id {
                    Some(s) => o.str(s),
                    None => o.none(),
                }
                o.str("load_id");
                o.none();
                o.str("modules");
                o.0.push(b']');
            });
            o.str("version");
            o.str(self.version.as_deref().unwrap_or("1.0.0"));
        });
        o.0.push(b'.');
        o.0
    }

    /// Parses what the safe reader's DCP mode made of a `.metadata` pickle.
    pub fn from_pyobj(root: &PyObj, path: &Path) -> Result<Self, CheckpointError> {
        let bad = |msg: String| CheckpointError::Format {
            path: path.to_owned(),
            msg,
        };
        let class = |o: &PyObj, want: &str, what: &str| match o {
            PyObj::Instance { class, .. } if *class == want => Ok(()),
            other => Err(bad(format!(
                "{what}: expected {want}, found {}",
                kind(other)
            ))),
        };
        class(root, "Metadata", "the root")?;
        let field = |o: &PyObj, name: &str, what: &str| -> Result<PyObj, CheckpointError> {
            o.field(name)
                .cloned()
                .ok_or_else(|| bad(format!("{what}: no field {name:?}")))
        };
        let dict = |o: PyObj, what: &str| match o {
            PyObj::Dict(d) => Ok(d),
            other => Err(bad(format!(
                "{what}: expected a dict, found {}",
                kind(&other)
            ))),
        };
        let string = |o: &PyObj, what: &str| match o {
            PyObj::Str(s) => Ok(s.clone()),
            other => Err(bad(format!(
                "{what}: expected a str, found {}",
                kind(other)
            ))),
        };
        let ints = |o: &PyObj, what: &str| match o {
            PyObj::Size(v) => Ok(v.clone()),
            PyObj::Tuple(v) | PyObj::List(v) => v
                .iter()
                .map(|x| match x {
                    PyObj::Int(i) => Ok(*i),
                    other => Err(bad(format!("{what}: expected ints, found {}", kind(other)))),
                })
                .collect(),
            other => Err(bad(format!(
                "{what}: expected a torch.Size, found {}",
                kind(other)
            ))),
        };
        let uint = |o: &PyObj, what: &str| match o {
            PyObj::Int(i) if *i >= 0 => Ok(*i as u64),
            other => Err(bad(format!(
                "{what}: expected a non-negative int, found {}",
                kind(other)
            ))),
        };
        let mut m = Metadata::default();
        for (k, v) in dict(
            field(root, "state_dict_metadata", "Metadata")?,
            "state_dict_metadata",
        )? {
            let key = string(&k, "state_dict_metadata key")?;
            let at = format!("state_dict_metadata[{key:?}]");
            let item = match &v {
                PyObj::Instance {
                    class: "BytesStorageMetadata",
                    ..
                } => ItemMeta::Bytes,
                PyObj::Instance {
                    class: "TensorStorageMetadata",
                    ..
                } => {
                    let props = field(&v, "properties", &at)?;
                    class(&props, "TensorProperties", &format!("{at}.properties"))?;
                    let (dtype, requires_grad) = match &props {
                        PyObj::Instance { state: Some(s), .. } => match &**s {
                            PyObj::Tuple(t) if t.len() == 5 => match (&t[0], &t[2]) {
                                (PyObj::Dtype(d), PyObj::Bool(r)) => (*d, *r),
                                _ => return Err(bad(format!("{at}.properties: no dtype"))),
                            },
                            _ => match (props.field("dtype"), props.field("requires_grad")) {
                                (Some(PyObj::Dtype(d)), r) => (*d, r == Some(&PyObj::Bool(true))),
                                _ => return Err(bad(format!("{at}.properties: no dtype"))),
                            },
                        },
                        _ => return Err(bad(format!("{at}.properties: no state"))),
                    };
                    let size = ints(&field(&v, "size", &at)?, &format!("{at}.size"))?;
                    let PyObj::List(cs) = field(&v, "chunks", &at)? else {
                        return Err(bad(format!("{at}.chunks: expected a list")));
                    };
                    let mut chunks = Vec::with_capacity(cs.len());
                    for (i, c) in cs.iter().enumerate() {
                        let at = format!("{at}.chunks[{i}]");
                        class(c, "ChunkStorageMetadata", &at)?;
                        let offsets = ints(&field(c, "offsets", &at)?, &at)?;
                        let sizes = ints(&field(c, "sizes", &at)?, &at)?;
                        check_chunk(&size, &offsets, &sizes)
                            .map_err(|e| bad(format!("{at}: {e}")))?;
                        chunks.push(Chunk { offsets, sizes });
                    }
                    ItemMeta::Tensor(TensorMeta {
                        dtype,
                        size,
                        chunks,
                        requires_grad,
                    })
                }
                other => {
                    return Err(bad(format!(
                        "{at}: expected a storage metadata, found {}",
                        kind(other)
                    )))
                }
            };
            m.items.insert(key, item);
        }
        if let Some(PyObj::Dict(d)) = root.field("planner_data") {
            for (k, v) in d {
                let key = string(k, "planner_data key")?;
                let PyObj::Tuple(parts) = v else {
                    return Err(bad(format!("planner_data[{key:?}]: expected a tuple")));
                };
                let parts = parts
                    .iter()
                    .map(|p| match p {
                        PyObj::Str(s) => Ok(PathPart::Key(s.clone())),
                        PyObj::Int(i) => Ok(PathPart::Index(*i)),
                        other => Err(bad(format!(
                            "planner_data[{key:?}]: a {} in the path",
                            kind(other)
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
                m.planner_data.insert(key, parts);
            }
        }
        for (k, v) in dict(field(root, "storage_data", "Metadata")?, "storage_data")? {
            class(&k, "MetadataIndex", "storage_data key")?;
            class(&v, "_StorageInfo", "storage_data value")?;
            let fqn = string(&field(&k, "fqn", "MetadataIndex")?, "MetadataIndex.fqn")?;
            let at = format!("storage_data[{fqn:?}]");
            let offset = match k.field("offset") {
                None | Some(PyObj::None) => None,
                Some(o) => Some(ints(o, &format!("{at}.offset"))?),
            };
            let index = match k.field("index") {
                None | Some(PyObj::None) => None,
                Some(PyObj::Int(i)) => Some(*i),
                Some(other) => return Err(bad(format!("{at}.index: a {}", kind(other)))),
            };
            let relative_path = string(&field(&v, "relative_path", &at)?, &at)?;
            if relative_path.is_empty()
                || relative_path.contains('/')
                || relative_path.starts_with('.')
            {
                return Err(bad(format!(
                    "{at}: file {relative_path:?} is not a plain name"
                )));
            }
            let info = StorageInfo {
                relative_path,
                offset: uint(&field(&v, "offset", &at)?, &format!("{at}.offset"))?,
                length: uint(&field(&v, "length", &at)?, &format!("{at}.length"))?,
            };
            m.storage.push((StorageIndex { fqn, offset, index }, info));
        }
        if let Some(sm) = root.field("storage_meta") {
            m.checkpoint_id = match sm.field("checkpoint_id") {
                Some(PyObj::Str(s)) => Some(s.clone()),
                _ => None,
            };
            m.save_id = match sm.field("save_id") {
                Some(PyObj::Str(s)) => Some(s.clone()),
                _ => None,
            };
        }
        m.version = match root.field("version") {
            Some(PyObj::Str(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(m)
    }
}

/// Checks that a block lies inside a tensor of `size`.
pub(crate) fn check_chunk(size: &[i64], offsets: &[i64], sizes: &[i64]) -> Result<(), String> {
    if offsets.len() != size.len() || sizes.len() != size.len() {
        return Err(format!(
            "block of {} dimensions in a tensor of {}",
            offsets.len().max(sizes.len()),
            size.len()
        ));
    }
    for d in 0..size.len() {
        let (o, s) = (offsets[d], sizes[d]);
        if o < 0 || s < 0 || o.checked_add(s).is_none_or(|end| end > size[d]) {
            return Err(format!(
                "block at {offsets:?} of size {sizes:?} lies outside a tensor of size {size:?}"
            ));
        }
    }
    Ok(())
}

fn kind(o: &PyObj) -> String {
    match o {
        PyObj::None => "None".into(),
        PyObj::Bool(_) => "bool".into(),
        PyObj::Int(_) => "int".into(),
        PyObj::Float(_) => "float".into(),
        PyObj::Str(_) => "str".into(),
        PyObj::Bytes(_) => "bytes".into(),
        PyObj::Tuple(_) => "tuple".into(),
        PyObj::List(_) => "list".into(),
        PyObj::Dict(_) => "dict".into(),
        PyObj::Size(_) => "torch.Size".into(),
        PyObj::Dtype(_) => "dtype".into(),
        PyObj::Torch(_) => "torch object".into(),
        PyObj::Instance { class, .. } => (*class).to_owned(),
    }
}
