//! The reader's mode for `torch.distributed.checkpoint`'s `.metadata` files: a plain pickle of
//! DCP's metadata dataclasses, which `torch.load(weights_only=True)` cannot read. The same VM
//! runs with exactly the globals DCP writes allowed besides the checkpoint allowlist; their
//! instances are kept as plain nodes (class, arguments, `BUILD` state) and nothing is called.

use super::*;

/// The globals a DCP `.metadata` pickle may name besides torch's `weights_only` allowlist
/// (which already has `torch.Size`, the dtypes and `torch.serialization._get_layout`).
pub const DCP_GLOBALS: [&str; 10] = [
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "pathlib.PosixPath",
];

/// A Python value of a DCP metadata pickle: plain data and the metadata classes' instances.
#[derive(Clone, Debug, PartialEq)]
pub enum PyObj {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (within i64).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str` (a `PosixPath` too, as its path).
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `tuple`.
    Tuple(Vec<PyObj>),
    /// `list`.
    List(Vec<PyObj>),
    /// `dict`, in order, keys of any kind (DCP keys `storage_data` by `MetadataIndex`).
    Dict(Vec<(PyObj, PyObj)>),
    /// `torch.Size`.
    Size(Vec<i64>),
    /// A dtype by torch's name (`float32`).
    Dtype(&'static str),
    /// Another torch object (a layout).
    Torch(TorchObject),
    /// An instance of a class of [`DCP_GLOBALS`]: its short name, constructor arguments and
    /// state.
    Instance {
        /// The class name without its module (`TensorStorageMetadata`).
        class: &'static str,
        /// What `NEWOBJ`/`REDUCE` passed.
        args: Vec<PyObj>,
        /// What `BUILD` set, if anything.
        state: Option<Box<PyObj>>,
    },
}

impl PyObj {
    /// The instance's field `name` (from a dict state, or a `(None, slots)` state).
    pub fn field(&self, name: &str) -> Option<&PyObj> {
        let PyObj::Instance { state: Some(s), .. } = self else {
            return None;
        };
        let dict = match &**s {
            PyObj::Dict(d) => d,
            PyObj::Tuple(t) => match t.as_slice() {
                [_, PyObj::Dict(d)] => d,
                _ => return None,
            },
            _ => return None,
        };
        dict.iter()
            .find(|(k, _)| matches!(k, PyObj::Str(s) if s == name))
            .map(|(_, v)| v)
    }
}

/// Runs a DCP `.metadata` pickle from `path` (named in errors) with DCP's metadata classes
/// allowed ([`DCP_GLOBALS`]); any other global outside torch's allowlist, and any persistent
/// id, is an error.
pub fn read_dcp_pickle(data: &[u8], path: &Path) -> Result<PyObj, CheckpointError> {
    let mut no_storage = |key: &str, _: Kind, _: i64, _: &str| -> Result<Tensor, CheckpointError> {
        Err(CheckpointError::Format {
            path: path.to_owned(),
            msg: format!("a DCP metadata pickle names storage {key:?}"),
        })
    };
    let mut vm = Vm::new(data, path, &mut no_storage, true);
    let root = vm.run()?;
    let mut budget = vm.budget.get();
    vm.to_pyobj(root, 0, &mut budget)
}

impl Vm<'_, '_> {
    /// `NEWOBJ`/`REDUCE` of a DCP class: an inert instance node (a `PosixPath`: its path).
    pub(super) fn dcp_instance(
        &mut self,
        class: &'static str,
        args: Vec<Id>,
    ) -> Result<Node, CheckpointError> {
        if class == "pathlib.PosixPath" {
            let mut p = PathBuf::new();
            for &a in &args {
                match &self.arena[a] {
                    Node::Str(s) => p.push(s),
                    n => return Err(self.err(format!("PosixPath part is a {}", n.type_name()))),
                }
            }
            return Ok(Node::Str(p.to_string_lossy().into_owned()));
        }
        Ok(Node::Instance(class, args, None))
    }

    fn to_pyobj(&self, id: Id, depth: usize, budget: &mut usize) -> Result<PyObj, CheckpointError> {
        let limit = |what: String| CheckpointError::Limit {
            path: self.path.clone(),
            what,
        };
        if depth > MAX_DEPTH {
            return Err(limit(format!(
                "containers nested deeper than {MAX_DEPTH} levels"
            )));
        }
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| limit("too many shared references".into()))?;
        let seq = |v: &[Id], budget: &mut usize| -> Result<Vec<PyObj>, CheckpointError> {
            v.iter()
                .map(|&i| self.to_pyobj(i, depth + 1, budget))
                .collect()
        };
        Ok(match &self.arena[id] {
            Node::None => PyObj::None,
            Node::Bool(b) => PyObj::Bool(*b),
            Node::Int(i) => PyObj::Int(*i),
            Node::Float(x) => PyObj::Float(*x),
            Node::Str(s) => PyObj::Str(s.clone()),
            Node::Bytes(b) => PyObj::Bytes(b.clone()),
            Node::Size(v) => PyObj::Size(v.clone()),
            Node::List(v) => PyObj::List(seq(v, budget)?),
            Node::Tuple(v) => PyObj::Tuple(seq(v, budget)?),
            Node::Dict(v) | Node::OrderedDict(v) => {
                let mut d = Vec::with_capacity(v.len());
                for &(k, x) in v {
                    d.push((
                        self.to_pyobj(k, depth + 1, budget)?,
                        self.to_pyobj(x, depth + 1, budget)?,
                    ));
                }
                PyObj::Dict(d)
            }
            Node::Global(Glob::Dtype(d)) => PyObj::Dtype(d),
            Node::Obj(o) => PyObj::Torch(o.clone()),
            Node::Instance(class, args, state) => PyObj::Instance {
                class: class.rsplit('.').next().unwrap_or(class),
                args: seq(args, budget)?,
                state: match state {
                    Some(s) => Some(Box::new(self.to_pyobj(*s, depth + 1, budget)?)),
                    None => None,
                },
            },
            n => {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    what: format!("a {} in a DCP metadata pickle", n.type_name()),
                })
            }
        })
    }
}
