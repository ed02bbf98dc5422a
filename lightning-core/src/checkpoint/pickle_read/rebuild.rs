//! Rebuilding torch objects from the VM's nodes (`BUILD`, `REDUCE` of allowlisted globals,
//! persistent storage ids, tensor views), and converting the result to a [`Value`].

use super::*;
use crate::value::{QTensor, RawTensor};

/// The layouts `torch.serialization._get_layout` names.
const LAYOUTS: [&str; 8] = [
    "strided",
    "sparse_coo",
    "sparse_csr",
    "sparse_csc",
    "sparse_bsr",
    "sparse_bsc",
    "_mkldnn",
    "jagged",
];

impl Vm<'_, '_> {
    pub(super) fn build(&mut self, obj: Id, state: Id) -> Result<(), CheckpointError> {
        if let Node::Instance(_, _, s) = &mut self.arena[obj] {
            *s = Some(state);
            return Ok(());
        }
        let empty = match &self.arena[state] {
            Node::None => true,
            Node::Dict(v) | Node::OrderedDict(v) => v.is_empty(),
            Node::Tuple(v) => v.iter().all(|&i| match &self.arena[i] {
                Node::None => true,
                Node::Dict(d) => d.is_empty(),
                _ => false,
            }),
            _ => false,
        };
        // `state_dict()` OrderedDicts carry a `_metadata` attribute (module versions), set by
        // BUILD with a dict; the value tree has no attributes, so it is dropped.
        let attrs = matches!(self.arena[obj], Node::OrderedDict(_))
            && matches!(self.arena[state], Node::Dict(_));
        if empty || attrs {
            return Ok(());
        }
        let t = self.arena[obj].type_name();
        Err(self.err(format!("BUILD with state on a {t} is not supported")))
    }

    pub(super) fn call(&mut self, f: Id, args: Id) -> Result<Node, CheckpointError> {
        let g = match &self.arena[f] {
            Node::Global(g) => *g,
            n => return Err(self.err(format!("REDUCE on a {}, not a callable", n.type_name()))),
        };
        let a = self.tuple_items(args, "call arguments")?;
        if let Some(&first) = a.first() {
            self.charge(self.len_of(first))?; // OrderedDict(items) / set(items) copy them
        }
        let arg = |i: usize| {
            a.get(i)
                .copied()
                .ok_or_else(|| self.err(format!("{g:?} called with {} arguments", a.len())))
        };
        match g {
            Glob::Dcp(class) => self.dcp_instance(class, a),
            Glob::OrderedDict => {
                let mut pairs = vec![];
                if let Some(&items) = a.first() {
                    match &self.arena[items] {
                        Node::List(v) | Node::Tuple(v) => {
                            for &p in v {
                                let kv = self.tuple_items(p, "OrderedDict item")?;
                                if kv.len() != 2 {
                                    return Err(self.err("OrderedDict item is not a pair"));
                                }
                                pairs.push((kv[0], kv[1]));
                            }
                        }
                        Node::Dict(v) | Node::OrderedDict(v) => pairs.extend(v.iter().copied()),
                        n => {
                            return Err(self
                                .err(format!("OrderedDict({}) is not supported", n.type_name())))
                        }
                    }
                }
                Ok(Node::OrderedDict(pairs))
            }
            Glob::Set => {
                let items = match a.first().map(|&i| &self.arena[i]) {
                    None => vec![],
                    Some(Node::List(v) | Node::Tuple(v) | Node::Set(v)) => v.clone(),
                    Some(n) => {
                        return Err(self.err(format!("set({}) is not supported", n.type_name())))
                    }
                };
                Ok(Node::Set(items))
            }
            Glob::Counter => {
                let pairs = match a.first().map(|&i| &self.arena[i]) {
                    None => vec![],
                    Some(Node::Dict(v) | Node::OrderedDict(v) | Node::Counter(v)) => v.clone(),
                    Some(n) => {
                        return Err(self.err(format!("Counter({}) is not supported", n.type_name())))
                    }
                };
                Ok(Node::Counter(pairs))
            }
            Glob::Complex => {
                let part = |i: usize| match a.get(i).map(|&x| &self.arena[x]) {
                    None => Ok(0.0),
                    Some(Node::Float(x)) => Ok(*x),
                    Some(Node::Int(x)) => Ok(*x as f64),
                    Some(Node::Bool(b)) => Ok(f64::from(u8::from(*b))),
                    Some(n) => Err(self.err(format!("complex() of a {}", n.type_name()))),
                };
                Ok(Node::Complex(part(0)?, part(1)?))
            }
            Glob::Encode => {
                let text = match &self.arena[arg(0)?] {
                    Node::Str(s) => s.clone(),
                    n => return Err(self.err(format!("_codecs.encode of a {}", n.type_name()))),
                };
                let enc = match a.get(1).map(|&i| &self.arena[i]) {
                    None => "utf-8".to_owned(),
                    Some(Node::Str(e)) => e.to_ascii_lowercase().replace('_', "-"),
                    Some(n) => {
                        return Err(
                            self.err(format!("_codecs.encode encoding is a {}", n.type_name()))
                        )
                    }
                };
                self.encode(&text, &enc).map(Node::Bytes)
            }
            Glob::ByteArray => match a.first().map(|&i| &self.arena[i]) {
                None => Ok(Node::ByteArray(vec![])),
                Some(Node::Bytes(b) | Node::ByteArray(b)) => Ok(Node::ByteArray(b.clone())),
                Some(Node::Str(s)) => {
                    let enc = match a.get(1).map(|&i| &self.arena[i]) {
                        Some(Node::Str(e)) => e.to_ascii_lowercase().replace('_', "-"),
                        _ => return Err(self.err("bytearray(str) without an encoding")),
                    };
                    self.encode(s, &enc).map(Node::ByteArray)
                }
                Some(n) => Err(self.err(format!("bytearray({}) is not supported", n.type_name()))),
            },
            Glob::Size => {
                let dims = match a.first() {
                    None => vec![],
                    Some(&i) => self.ints_of(i, "torch.Size")?,
                };
                Ok(Node::Size(dims))
            }
            Glob::GetLayout => match &self.arena[arg(0)?] {
                Node::Str(s) => {
                    let name = s.strip_prefix("torch.").unwrap_or(s);
                    if LAYOUTS.contains(&name) {
                        Ok(Node::Obj(TorchObject::Layout(name.to_owned())))
                    } else {
                        Err(self.err(format!("unknown layout {s:?}")))
                    }
                }
                n => Err(self.err(format!("_get_layout of a {}", n.type_name()))),
            },
            Glob::Device => {
                let mut s = match &self.arena[arg(0)?] {
                    Node::Str(s) => s.clone(),
                    _ => return Err(self.err("torch.device needs a string")),
                };
                if let Some(&i) = a.get(1)
                    && let Node::Int(n) = self.arena[i]
                {
                    s = format!("{s}:{n}");
                }
                Ok(Node::Obj(TorchObject::Device(s)))
            }
            Glob::RebuildTensorV2 | Glob::RebuildTensor => {
                let storage = arg(0)?;
                let offset = self.int_of(arg(1)?, "tensor offset")?;
                let size = self.ints_of(arg(2)?, "tensor size")?;
                let stride = self.ints_of(arg(3)?, "tensor stride")?;
                let st = self.storage_of(storage, false)?;
                self.view(&st, offset, &size, &stride).map(Node::Tensor)
            }
            Glob::RebuildTensorV3 => {
                let st = self.storage_of(arg(0)?, true)?;
                let offset = self.int_of(arg(1)?, "tensor offset")?;
                let size = self.ints_of(arg(2)?, "tensor size")?;
                let stride = self.ints_of(arg(3)?, "tensor stride")?;
                let requires_grad = self.int_of(arg(4)?, "requires_grad")? != 0;
                let dtype = match self.arena[arg(6)?] {
                    Node::Global(Glob::Dtype(d)) => d,
                    ref n => return Err(self.err(format!("tensor dtype is a {}", n.type_name()))),
                };
                self.view_v3(st, dtype, offset, size, stride, requires_grad)
            }
            Glob::RebuildQTensor => {
                let (class, st) = match &self.arena[arg(0)?] {
                    Node::Storage(c, t) if c.quantized.is_some() => (*c, t.shallow_clone()),
                    n => {
                        return Err(self.err(format!(
                            "_rebuild_qtensor over a {}, not a quantized storage",
                            n.type_name()
                        )))
                    }
                };
                let offset = self.int_of(arg(1)?, "tensor offset")?;
                let size = self.ints_of(arg(2)?, "tensor size")?;
                let stride = self.ints_of(arg(3)?, "tensor stride")?;
                let q = self.tuple_items(arg(4)?, "quantizer parameters")?;
                let requires_grad = self.int_of(arg(5)?, "requires_grad")? != 0;
                let qscheme = match q.first().map(|&i| &self.arena[i]) {
                    Some(Node::Global(Glob::QScheme(s))) => (*s).to_owned(),
                    _ => return Err(self.err("quantizer parameters do not start with a qscheme")),
                };
                let params = self.values(&q[1..])?;
                let int_repr = self.view(&st, offset, &size, &stride)?;
                Ok(Node::Obj(TorchObject::Quantized(QTensor {
                    dtype: class.quantized.unwrap_or("quint8").to_owned(),
                    int_repr,
                    qscheme,
                    params,
                    requires_grad,
                })))
            }
            Glob::RebuildSparse => {
                let layout = match &self.arena[arg(0)?] {
                    Node::Obj(TorchObject::Layout(l)) if l.starts_with("sparse") => l.clone(),
                    n => {
                        return Err(self.err(format!("sparse tensor layout is a {}", n.type_name())))
                    }
                };
                let parts = self.tuple_items(arg(1)?, "sparse tensor data")?;
                if parts.len() < 3 {
                    return Err(self.err(format!("sparse tensor data of {} items", parts.len())));
                }
                let data = self.values(&parts)?;
                Ok(Node::Obj(TorchObject::Sparse { layout, data }))
            }
            Glob::RebuildNested => {
                let parts = [arg(0)?, arg(1)?, arg(2)?, arg(3)?];
                let parts = self.values(&parts)?;
                if !parts.iter().all(|p| matches!(p, Value::Tensor(_))) {
                    return Err(self.err("nested tensor parts are not four tensors"));
                }
                Ok(Node::Obj(TorchObject::Nested { parts }))
            }
            Glob::RebuildMeta => {
                let dtype = match self.arena[arg(0)?] {
                    Node::Global(Glob::Dtype(d)) => d.to_owned(),
                    ref n => {
                        return Err(self.err(format!("meta tensor dtype is a {}", n.type_name())))
                    }
                };
                let size = self.ints_of(arg(1)?, "tensor size")?;
                let stride = self.ints_of(arg(2)?, "tensor stride")?;
                if size.len() != stride.len() || size.len() > MAX_DIMS {
                    return Err(self.err("meta tensor sizes and strides do not match"));
                }
                let requires_grad = match a.get(3) {
                    Some(&i) => self.int_of(i, "requires_grad")? != 0,
                    None => false,
                };
                Ok(Node::Obj(TorchObject::Meta {
                    dtype,
                    size,
                    stride,
                    requires_grad,
                }))
            }
            Glob::RebuildDeviceFromCpu | Glob::RebuildDeviceFromNumpy => {
                // The data is already a CPU tensor; tensors are placed where the load says.
                match &self.arena[arg(0)?] {
                    Node::Tensor(t) => Ok(Node::Tensor(t.shallow_clone())),
                    n => Err(self.err(format!("{g:?} of a {}", n.type_name()))),
                }
            }
            Glob::RebuildWrapperSubclass => Err(CheckpointError::Unsupported {
                path: self.path.clone(),
                what: "a tensor subclass without data (torch._utils._rebuild_wrapper_subclass)"
                    .into(),
            }),
            Glob::RebuildParameter | Glob::RebuildParameterWithState => {
                match &self.arena[arg(0)?] {
                    Node::Tensor(t) => Ok(Node::Tensor(t.shallow_clone())),
                    n => Err(self.err(format!("Parameter of a {}", n.type_name()))),
                }
            }
            Glob::RebuildFromTypeV2 => {
                let func = arg(0)?;
                if !matches!(self.arena[arg(1)?], Node::Global(Glob::TensorType)) {
                    return Err(self.err("_rebuild_from_type_v2 of a type other than Tensor"));
                }
                let inner = arg(2)?;
                self.build(func, arg(3)?)?;
                self.call(func, inner)
            }
            Glob::Storage(_)
            | Glob::TypedStorage
            | Glob::TensorType
            | Glob::LegacyTensorClass(..)
            | Glob::Dtype(_)
            | Glob::QScheme(_) => Err(self.err(format!("{g:?} cannot be called here"))),
        }
    }

    pub(super) fn persistent(&mut self, pid: Id) -> Result<Node, CheckpointError> {
        let items = self.tuple_items(pid, "persistent id")?;
        let s = |vm: &Self, i: usize| match items.get(i).map(|&x| &vm.arena[x]) {
            Some(Node::Str(s)) => Ok(s.clone()),
            _ => Err(vm.err(format!("persistent id item {i} is not a string"))),
        };
        if items.len() != 5 || s(self, 0)? != "storage" {
            return Err(self.err("persistent id is not ('storage', type, key, location, numel)"));
        }
        let class = match self.arena[items[1]] {
            Node::Global(Glob::Storage(c)) => c,
            _ => return Err(self.err("persistent id names no known storage type")),
        };
        let key = s(self, 2)?;
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(self.err(format!("storage key {key:?} is not a plain name")));
        }
        let numel = self.int_of(items[4], "storage size")?;
        if numel < 0 {
            return Err(self.err(format!("storage {key} has negative size {numel}")));
        }
        if let Some((c, t)) = self.storages.get(&key) {
            if *c != class || t.numel() as i64 != numel {
                return Err(self.err(format!("storage {key} used with two types or sizes")));
            }
            return Ok(Node::Storage(class, t.shallow_clone()));
        }
        let location = s(self, 3)?;
        let t = (self.load)(&key, class.kind, numel, &location)?;
        self.storages.insert(key, (class, t.shallow_clone()));
        Ok(Node::Storage(class, t))
    }

    /// The tensor over a storage node; quantized storages only through `_rebuild_qtensor`,
    /// untyped ones only through `_rebuild_tensor_v3` (unless `untyped`).
    fn storage_of(&self, id: Id, untyped: bool) -> Result<Tensor, CheckpointError> {
        match &self.arena[id] {
            Node::Storage(c, t)
                if c.quantized.is_none() && (untyped || c.name != "UntypedStorage") =>
            {
                Ok(t.shallow_clone())
            }
            Node::Storage(c, _) => Err(self.err(format!(
                "a {} cannot back this tensor (torch rebuilds it only through {})",
                c.name,
                if c.quantized.is_some() {
                    "_rebuild_qtensor"
                } else {
                    "_rebuild_tensor_v3"
                }
            ))),
            n => Err(self.err(format!("tensor over a {}, not a storage", n.type_name()))),
        }
    }

    /// `_rebuild_tensor_v3`: a view of `dtype` over a storage's bytes; a tch tensor when tch
    /// has the dtype, a [`RawTensor`] otherwise.
    fn view_v3(
        &self,
        st: Tensor,
        dtype: &str,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
        requires_grad: bool,
    ) -> Result<Node, CheckpointError> {
        let bytes = if st.kind() == Kind::Uint8 {
            st
        } else {
            st.f_view_dtype(Kind::Uint8).map_err(|e| self.err(e))?
        };
        let (_, itemsize, kind) = crate::value::dtype_entry(dtype)
            .copied()
            .ok_or_else(|| self.err(format!("dtype {dtype} in _rebuild_tensor_v3")))?;
        let nbytes = bytes.numel() as i64;
        if nbytes % itemsize as i64 != 0 {
            return Err(self.err(format!(
                "a storage of {nbytes} bytes is not a whole number of {dtype} elements"
            )));
        }
        match kind {
            Some(kind) if !dtype.starts_with('q') => {
                let typed = if nbytes == 0 {
                    Tensor::f_empty([0], (kind, bytes.device())).map_err(|e| self.err(e))?
                } else {
                    bytes.f_view_dtype(kind).map_err(|e| self.err(e))?
                };
                self.view(&typed, offset, &size, &stride).map(Node::Tensor)
            }
            _ => {
                self.check_extent(offset, &size, &stride, nbytes / itemsize as i64)?;
                Ok(Node::Obj(TorchObject::Raw(RawTensor {
                    dtype: dtype.to_owned(),
                    itemsize,
                    storage: bytes,
                    offset,
                    size,
                    stride,
                    requires_grad,
                })))
            }
        }
    }

    /// Converts argument nodes to values (for the parts of sparse, nested and quantized
    /// tensors), spending the copy budget.
    fn values(&self, ids: &[Id]) -> Result<Vec<Value>, CheckpointError> {
        let mut budget = self.budget.get();
        let v = ids
            .iter()
            .map(|&i| self.convert(i, 1, &mut budget))
            .collect::<Result<Vec<_>, _>>();
        self.budget.set(budget);
        v
    }

    /// `_codecs.encode(text, encoding)` for the encodings pickles use for bytes.
    fn encode(&self, text: &str, enc: &str) -> Result<Vec<u8>, CheckpointError> {
        match enc {
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| self.err("latin-1 bytes text has a character above U+00FF")),
            "utf-8" | "utf8" => Ok(text.as_bytes().to_vec()),
            "ascii" if text.is_ascii() => Ok(text.as_bytes().to_vec()),
            _ => Err(self.err(format!("_codecs.encode with encoding {enc:?}"))),
        }
    }

    fn view(
        &self,
        st: &Tensor,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Tensor, CheckpointError> {
        let kind = st.kind();
        self.check_extent(offset, size, stride, st.numel() as i64)?;
        let numel: i64 = size.iter().product();
        if numel == 0 {
            return Tensor::f_empty(size, (kind, st.device())).map_err(|e| self.err(e));
        }
        st.f_as_strided(size, stride, offset)
            .map_err(|e| self.err(e))
    }

    /// Checks that a view (`offset`, `size`, `stride`, in elements) stays inside a storage of
    /// `storage_numel` elements, without overflow.
    fn check_extent(
        &self,
        offset: i64,
        size: &[i64],
        stride: &[i64],
        storage_numel: i64,
    ) -> Result<(), CheckpointError> {
        if size.len() != stride.len() || size.len() > MAX_DIMS {
            return Err(self.err(format!(
                "tensor with {} sizes and {} strides",
                size.len(),
                stride.len()
            )));
        }
        if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
            return Err(self.err("negative tensor offset, size or stride"));
        }
        let mut numel: i64 = 1;
        let mut last: i64 = offset;
        for (&n, &s) in size.iter().zip(stride) {
            numel = numel
                .checked_mul(n)
                .ok_or_else(|| self.err("tensor size overflows"))?;
            if n > 0 {
                last = (n - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| self.err("tensor extent overflows"))?;
            }
        }
        if numel > 0 && last >= storage_numel {
            return Err(self.err(format!(
                "tensor view reaches element {last} of a storage of {storage_numel}"
            )));
        }
        Ok(())
    }

    fn key(&self, id: Id) -> Result<Key, CheckpointError> {
        match &self.arena[id] {
            Node::Str(s) => Ok(Key::Str(s.clone())),
            Node::Int(i) => Ok(Key::Int(*i)),
            n => Err(self.err(format!(
                "dict key of type {} is not supported",
                n.type_name()
            ))),
        }
    }

    pub(super) fn convert(
        &self,
        id: Id,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Value, CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(CheckpointError::Limit {
                path: self.path.clone(),
                what: format!("containers nested deeper than {MAX_DEPTH} levels"),
            });
        }
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| CheckpointError::Limit {
                path: self.path.clone(),
                what: "too many shared references (the value tree would explode)".into(),
            })?;
        let spend = |budget: &mut usize, n: usize| {
            *budget = budget
                .checked_sub(n)
                .ok_or_else(|| CheckpointError::Limit {
                    path: self.path.clone(),
                    what: "too many shared references (the value tree would explode)".into(),
                })?;
            Ok::<(), CheckpointError>(())
        };
        let seq = |v: &[Id], budget: &mut usize| -> Result<Vec<Value>, CheckpointError> {
            v.iter()
                .map(|&i| self.convert(i, depth + 1, budget))
                .collect()
        };
        let dict = |v: &[(Id, Id)], budget: &mut usize| -> Result<Dict, CheckpointError> {
            let mut d = Dict::with_capacity(v.len());
            for &(k, x) in v {
                d.insert(self.key(k)?, self.convert(x, depth + 1, budget)?);
            }
            Ok(d)
        };
        Ok(match &self.arena[id] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::BigInt(i) => {
                spend(budget, i.le_bytes().len())?;
                Value::BigInt(i.clone())
            }
            Node::Float(x) => Value::Float(*x),
            Node::Complex(re, im) => Value::Complex(*re, *im),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => {
                spend(budget, b.len())?;
                Value::Bytes(b.clone())
            }
            Node::ByteArray(b) => {
                spend(budget, b.len())?;
                Value::ByteArray(b.clone())
            }
            Node::Size(v) => {
                spend(budget, v.len())?;
                Value::Size(v.clone())
            }
            Node::List(v) => Value::List(seq(v, budget)?),
            Node::Set(v) => Value::Set(seq(v, budget)?),
            Node::Tuple(v) => Value::Tuple(seq(v, budget)?),
            Node::Dict(v) => Value::Dict(dict(v, budget)?),
            Node::OrderedDict(v) => Value::OrderedDict(dict(v, budget)?),
            Node::Counter(v) => Value::Counter(dict(v, budget)?),
            Node::Tensor(t) => Value::Tensor(t.shallow_clone()),
            Node::Obj(o) => Value::Torch(Box::new(o.clone())),
            Node::Global(Glob::Dtype(d)) => {
                Value::Torch(Box::new(TorchObject::Global(format!("torch.{d}"))))
            }
            Node::Global(Glob::QScheme(q)) => {
                Value::Torch(Box::new(TorchObject::Global(format!("torch.{q}"))))
            }
            Node::Global(Glob::LegacyTensorClass(m, n)) => {
                Value::Torch(Box::new(TorchObject::Global(format!("{m}.{n}"))))
            }
            n @ (Node::Global(_) | Node::Storage(..) | Node::Instance(..)) => {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    what: format!("a {} value in the checkpoint tree", n.type_name()),
                })
            }
        })
    }
}
