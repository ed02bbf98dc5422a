//! The tree itself: [`Value`] and its keys, and the torch objects inside it
//! ([`TorchObject`]), one file because each holds the other.

use super::torch::{BigInt, RawTensor};
use indexmap::IndexMap;
use std::fmt;
use tch::Tensor;

/// A dict key: Python checkpoints use strings, and ints for optimizer state (`state[0]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A `str` key.
    Str(String),
    /// An `int` key.
    Int(i64),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Str(s) => f.write_str(s),
            Key::Int(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key::Str(s.to_owned())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Str(s)
    }
}

impl From<i64> for Key {
    fn from(i: i64) -> Self {
        Key::Int(i)
    }
}

/// An insertion-ordered dict, as Python's `dict` (3.7+) and `OrderedDict`.
pub type Dict = IndexMap<Key, Value>;

/// A node of the value tree.
#[derive(Debug)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// Python `int` that fits 64 bits.
    Int(i64),
    /// Python `int` beyond 64 bits.
    BigInt(BigInt),
    /// Python `float`.
    Float(f64),
    /// Python `complex` (real, imaginary).
    Complex(f64, f64),
    /// Python `str`.
    Str(String),
    /// Python `bytes`.
    Bytes(Vec<u8>),
    /// Python `bytearray`.
    ByteArray(Vec<u8>),
    /// Python `set`, in the order the file lists its items.
    Set(Vec<Value>),
    /// `torch.Size`.
    Size(Vec<i64>),
    /// `collections.Counter`.
    Counter(Dict),
    /// Python `list`.
    List(Vec<Value>),
    /// Python `tuple`.
    Tuple(Vec<Value>),
    /// Python `dict`.
    Dict(Dict),
    /// `collections.OrderedDict` (what `state_dict()` returns in PyTorch).
    OrderedDict(Dict),
    /// A dense tensor of a dtype tch has (`torch._utils._rebuild_tensor_v2`/`_v3`).
    Tensor(Tensor),
    /// Any other torch object (a tensor of a dtype or layout tch lacks, a layout, a qscheme).
    Torch(Box<TorchObject>),
}

impl Clone for Value {
    /// Clones the tree; tensors are shared (`shallow_clone`), not copied.
    fn clone(&self) -> Self {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::BigInt(i) => Value::BigInt(i.clone()),
            Value::Float(x) => Value::Float(*x),
            Value::Complex(re, im) => Value::Complex(*re, *im),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::ByteArray(b) => Value::ByteArray(b.clone()),
            Value::Set(v) => Value::Set(v.clone()),
            Value::Size(v) => Value::Size(v.clone()),
            Value::Counter(d) => Value::Counter(d.clone()),
            Value::Torch(o) => Value::Torch(o.clone()),
            Value::List(v) => Value::List(v.clone()),
            Value::Tuple(v) => Value::Tuple(v.clone()),
            Value::Dict(d) => Value::Dict(d.clone()),
            Value::OrderedDict(d) => Value::OrderedDict(d.clone()),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
        }
    }
}

impl PartialEq for Value {
    /// Structural equality; tensors are equal when dtype, shape and every element match
    /// (NaNs at the same positions count as equal).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            (Value::BigInt(a), Value::BigInt(b)) => a == b,
            (Value::Complex(a, b), Value::Complex(c, d)) => {
                let same = |x: &f64, y: &f64| x == y || (x.is_nan() && y.is_nan());
                same(a, c) && same(b, d)
            }
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) | (Value::ByteArray(a), Value::ByteArray(b)) => {
                a == b
            }
            (Value::Size(a), Value::Size(b)) => a == b,
            (Value::List(a), Value::List(b))
            | (Value::Tuple(a), Value::Tuple(b))
            | (Value::Set(a), Value::Set(b)) => a == b,
            (Value::Torch(a), Value::Torch(b)) => a == b,
            (Value::Dict(a), Value::Dict(b))
            | (Value::OrderedDict(a), Value::OrderedDict(b))
            | (Value::Counter(a), Value::Counter(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
            }
            (Value::Tensor(a), Value::Tensor(b)) => tensors_equal(a, b),
            _ => false,
        }
    }
}

/// Bitwise-meaningful tensor equality: same dtype, same shape, same values (NaN == NaN).
pub fn tensors_equal(a: &Tensor, b: &Tensor) -> bool {
    if a.kind() != b.kind() || a.size() != b.size() {
        return false;
    }
    let b = b.to_device(a.device());
    if matches!(
        a.kind(),
        tch::Kind::Float8e4m3fn
            | tch::Kind::Float8e5m2
            | tch::Kind::Float8e4m3fnuz
            | tch::Kind::Float8e5m2fnuz
    ) {
        // No comparison kernels for float8: compare the values widened (exact).
        return tensors_equal(&a.to_kind(tch::Kind::Float), &b.to_kind(tch::Kind::Float));
    }
    if a.is_floating_point() {
        let both_nan = a.isnan().logical_and(&b.isnan());
        a.eq_tensor(&b).logical_or(&both_nan).all().int64_value(&[]) != 0
    } else {
        a.eq_tensor(&b).all().int64_value(&[]) != 0
    }
}

impl Value {
    /// A short name of the variant's Python type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::ByteArray(_) => "bytearray",
            Value::Set(_) => "set",
            Value::Size(_) => "torch.Size",
            Value::Counter(_) => "Counter",
            Value::Torch(_) => "torch object",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::OrderedDict(_) => "OrderedDict",
            Value::Tensor(_) => "Tensor",
        }
    }

    /// A new empty `dict`.
    pub fn dict() -> Value {
        Value::Dict(Dict::new())
    }

    /// The entries of a `dict`, `OrderedDict` or `Counter`.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) | Value::OrderedDict(d) | Value::Counter(d) => Some(d),
            _ => None,
        }
    }

    /// Mutable entries of a `dict`, `OrderedDict` or `Counter`.
    pub fn as_dict_mut(&mut self) -> Option<&mut Dict> {
        match self {
            Value::Dict(d) | Value::OrderedDict(d) | Value::Counter(d) => Some(d),
            _ => None,
        }
    }

    /// The items of a `list` or `tuple`.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` (bools are not ints here).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as f64, if this is a `float` or an `int`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The bool, if this is a `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The tensor, if this is a tensor.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.get(&Key::Str(key.to_owned()))
    }

    /// Looks up a string key in a dict, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.as_dict_mut()?.get_mut(&Key::Str(key.to_owned()))
    }

    /// Follows a dotted path of dict keys (`"callbacks.ModelCheckpoint"` is ambiguous for
    /// keys containing dots; use [`Value::get`] for those).
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self, |v, k| match v {
            Value::List(items) | Value::Tuple(items) => items.get(k.parse::<usize>().ok()?),
            _ => v
                .as_dict()?
                .get(&Key::Str(k.to_owned()))
                .or_else(|| v.as_dict()?.get(&Key::Int(k.parse().ok()?))),
        })
    }

    /// Inserts into a dict; returns false (and does nothing) when `self` is not a dict.
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> bool {
        match self.as_dict_mut() {
            Some(d) => {
                d.insert(key.into(), value.into());
                true
            }
            None => false,
        }
    }

    /// Calls `f` for every dense tensor in the tree with its dotted path, depth first in order
    /// (the tensors inside [`TorchObject`]s are not visited; see [`Value::visit_all_tensors`]).
    pub fn visit_tensors(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.visit(prefix, false, f)
    }

    /// [`Value::visit_tensors`], and also the tensors inside [`TorchObject`]s (a sparse
    /// tensor's indices and values, a quantized tensor's integers, a raw tensor's storage
    /// bytes), at `path.part`: every tensor a save writes.
    pub fn visit_all_tensors(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.visit(prefix, true, f)
    }

    fn visit(&self, prefix: &str, inner: bool, f: &mut dyn FnMut(&str, &Tensor)) {
        let join = |k: &dyn fmt::Display| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match self {
            Value::Tensor(t) => f(prefix, t),
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => {
                for (i, x) in v.iter().enumerate() {
                    x.visit(&join(&i), inner, f);
                }
            }
            Value::Dict(d) | Value::OrderedDict(d) | Value::Counter(d) => {
                for (k, x) in d {
                    x.visit(&join(k), inner, f);
                }
            }
            Value::Torch(o) if inner => {
                for (name, x) in o.inner_tensors() {
                    x.visit(&join(&name), inner, f);
                }
            }
            _ => {}
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i.into())
    }
}
impl From<usize> for Value {
    /// Saturates at `i64::MAX` (never reached by real counters).
    fn from(i: usize) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Tensor(t)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::None, Into::into)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

/// A quantized tensor (`torch._utils._rebuild_qtensor`): its integer representation and its
/// quantizer, as the file says them.
#[derive(Debug)]
pub struct QTensor {
    /// The quantized dtype (`"quint8"`, `"qint8"`, `"qint32"`, `"quint4x2"`, `"quint2x4"`).
    pub dtype: String,
    /// The stored integers: a `Uint8`, `Int8` or `Int` tensor viewing the storage.
    pub int_repr: Tensor,
    /// The qscheme (`"per_tensor_affine"`, `"per_channel_affine"`, ...).
    pub qscheme: String,
    /// The quantizer's parameters after the qscheme: `(scale, zero_point)` per tensor,
    /// `(scales, zero_points, axis)` per channel.
    pub params: Vec<Value>,
    /// `requires_grad` as saved.
    pub requires_grad: bool,
}

/// A torch object that is not a dense tch tensor, kept as the file describes it.
#[derive(Debug)]
pub enum TorchObject {
    /// A dense tensor of a dtype tch has no `Kind` for.
    Raw(RawTensor),
    /// A sparse tensor (`_rebuild_sparse_tensor(layout, data)`): `layout` is torch's name
    /// (`"sparse_coo"`, `"sparse_csr"`, ...) and `data` its parts: `(indices, values, size,
    /// is_coalesced)` for COO, `(compressed_indices, plain_indices, values, size)` otherwise.
    Sparse {
        /// torch's layout name without `torch.`.
        layout: String,
        /// The parts, as saved.
        data: Vec<Value>,
    },
    /// A quantized tensor.
    Quantized(QTensor),
    /// A tensor on the `meta` device: a shape and no data.
    Meta {
        /// torch's dtype name without `torch.`.
        dtype: String,
        /// Shape.
        size: Vec<i64>,
        /// Strides.
        stride: Vec<i64>,
        /// `requires_grad` as saved.
        requires_grad: bool,
    },
    /// A nested tensor (`_rebuild_nested_tensor(buffer, sizes, strides, storage_offsets)`).
    Nested {
        /// The four parts, as saved.
        parts: Vec<Value>,
    },
    /// A layout (`torch.sparse_coo`), pickled through `torch.serialization._get_layout`.
    Layout(String),
    /// A global used as a value: a dtype (`torch.float32`), a qscheme
    /// (`torch.per_tensor_affine`), a tensor or storage class (`torch.FloatTensor`):
    /// `module.name`.
    Global(String),
    /// A `torch.device` (`"cuda:0"`, `"cpu"`), as `str(device)` prints it.
    Device(String),
}

impl Clone for TorchObject {
    fn clone(&self) -> Self {
        match self {
            TorchObject::Raw(r) => TorchObject::Raw(r.clone()),
            TorchObject::Sparse { layout, data } => TorchObject::Sparse {
                layout: layout.clone(),
                data: data.clone(),
            },
            TorchObject::Quantized(q) => TorchObject::Quantized(QTensor {
                dtype: q.dtype.clone(),
                int_repr: q.int_repr.shallow_clone(),
                qscheme: q.qscheme.clone(),
                params: q.params.clone(),
                requires_grad: q.requires_grad,
            }),
            TorchObject::Meta {
                dtype,
                size,
                stride,
                requires_grad,
            } => TorchObject::Meta {
                dtype: dtype.clone(),
                size: size.clone(),
                stride: stride.clone(),
                requires_grad: *requires_grad,
            },
            TorchObject::Nested { parts } => TorchObject::Nested {
                parts: parts.clone(),
            },
            TorchObject::Layout(l) => TorchObject::Layout(l.clone()),
            TorchObject::Global(g) => TorchObject::Global(g.clone()),
            TorchObject::Device(d) => TorchObject::Device(d.clone()),
        }
    }
}

impl PartialEq for TorchObject {
    fn eq(&self, other: &Self) -> bool {
        use TorchObject as T;
        match (self, other) {
            (T::Raw(a), T::Raw(b)) => a == b,
            (
                T::Sparse { layout, data },
                T::Sparse {
                    layout: l2,
                    data: d2,
                },
            ) => layout == l2 && data == d2,
            (T::Quantized(a), T::Quantized(b)) => {
                a.dtype == b.dtype
                    && a.qscheme == b.qscheme
                    && a.params == b.params
                    && a.requires_grad == b.requires_grad
                    && tensors_equal(&a.int_repr, &b.int_repr)
            }
            (
                T::Meta {
                    dtype,
                    size,
                    stride,
                    requires_grad,
                },
                T::Meta {
                    dtype: d2,
                    size: s2,
                    stride: st2,
                    requires_grad: r2,
                },
            ) => dtype == d2 && size == s2 && stride == st2 && requires_grad == r2,
            (T::Nested { parts }, T::Nested { parts: p2 }) => parts == p2,
            (T::Layout(a), T::Layout(b))
            | (T::Global(a), T::Global(b))
            | (T::Device(a), T::Device(b)) => a == b,
            _ => false,
        }
    }
}

impl TorchObject {
    /// What it is, for messages and reports (`"uint16 tensor"`, `"sparse_coo tensor"`).
    pub fn describe(&self) -> String {
        match self {
            TorchObject::Raw(r) => format!("{} tensor {:?}", r.dtype, r.size),
            TorchObject::Sparse { layout, .. } => format!("{layout} tensor"),
            TorchObject::Quantized(q) => format!("{} quantized tensor", q.dtype),
            TorchObject::Meta { dtype, size, .. } => format!("meta {dtype} tensor {size:?}"),
            TorchObject::Nested { .. } => "nested tensor".into(),
            TorchObject::Layout(l) => format!("layout torch.{l}"),
            TorchObject::Global(g) => g.clone(),
            TorchObject::Device(d) => format!("device {d}"),
        }
    }

    /// The tensors it holds (parts of sparse and nested tensors, a quantized tensor's integers
    /// and per-channel parameters; a raw tensor's storage bytes), with their names.
    pub fn inner_tensors(&self) -> Vec<(String, Value)> {
        let named = |vals: &[Value]| {
            vals.iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v.clone()))
                .collect()
        };
        match self {
            TorchObject::Raw(r) => vec![("storage".into(), r.storage.shallow_clone().into())],
            TorchObject::Sparse { data, .. } => named(data),
            TorchObject::Nested { parts } => named(parts),
            TorchObject::Quantized(q) => {
                let mut v: Vec<(String, Value)> = named(&q.params);
                v.insert(0, ("int_repr".into(), q.int_repr.shallow_clone().into()));
                v
            }
            TorchObject::Meta { .. }
            | TorchObject::Layout(_)
            | TorchObject::Global(_)
            | TorchObject::Device(_) => vec![],
        }
    }
}

/// The placeholder that stands for a tensor where a text format has no room for one
/// (`"<Tensor Float [2, 3]>"`).
pub fn tensor_placeholder(t: &Tensor) -> String {
    format!("<Tensor {:?} {:?}>", t.kind(), t.size())
}

impl Value {
    /// A copy of the tree in which every node for which `f` returns `Some` is replaced by
    /// that value (the replaced node's children are not visited); tensors are shared.
    ///
    /// Used to give tensors or non-finite floats a form before serializing:
    /// `v.rewrite(&mut |x| x.as_tensor().map(|t| Value::from(tensor_placeholder(t))))`.
    pub fn rewrite(&self, f: &mut dyn FnMut(&Value) -> Option<Value>) -> Value {
        if let Some(new) = f(self) {
            return new;
        }
        match self {
            Value::List(v) => Value::List(v.iter().map(|x| x.rewrite(f)).collect()),
            Value::Tuple(v) => Value::Tuple(v.iter().map(|x| x.rewrite(f)).collect()),
            Value::Dict(d) => {
                Value::Dict(d.iter().map(|(k, x)| (k.clone(), x.rewrite(f))).collect())
            }
            Value::OrderedDict(d) => {
                Value::OrderedDict(d.iter().map(|(k, x)| (k.clone(), x.rewrite(f))).collect())
            }
            Value::Set(v) => Value::Set(v.iter().map(|x| x.rewrite(f)).collect()),
            Value::Counter(d) => {
                Value::Counter(d.iter().map(|(k, x)| (k.clone(), x.rewrite(f))).collect())
            }
            leaf => leaf.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_path_walks_dicts_lists_and_int_keys() {
        let mut inner = Dict::new();
        inner.insert(Key::Int(0), Value::from(vec![1i64, 2, 3]));
        let mut top = Value::dict();
        top.insert("state", Value::Dict(inner));
        assert_eq!(top.get_path("state.0.2"), Some(&Value::Int(3)));
        assert_eq!(top.get_path("state.1"), None);
        assert_eq!(top.get_path("nope"), None);
    }

    #[test]
    fn tensor_equality_is_by_value_dtype_and_shape() {
        let a = Value::Tensor(Tensor::from_slice(&[1.0f32, f32::NAN]));
        let b = Value::Tensor(Tensor::from_slice(&[1.0f32, f32::NAN]));
        let c = Value::Tensor(Tensor::from_slice(&[1.0f64, f64::NAN]));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn visit_tensors_reports_dotted_paths() {
        let mut sd = Value::OrderedDict(Dict::new());
        sd.insert(
            "fc.weight",
            Tensor::zeros([2, 2], (tch::Kind::Float, tch::Device::Cpu)),
        );
        let mut top = Value::dict();
        top.insert("state_dict", sd);
        let mut seen = vec![];
        top.visit_tensors("", &mut |p, t| seen.push((p.to_owned(), t.size())));
        assert_eq!(seen, vec![("state_dict.fc.weight".to_owned(), vec![2, 2])]);
    }

    fn sample() -> Value {
        let mut inner = Dict::new();
        inner.insert(
            Key::Int(3),
            Value::Tuple(vec![Value::Float(1.5), Value::None]),
        );
        inner.insert(Key::from("z"), Value::Bool(false));
        let mut v = Value::OrderedDict(Dict::new());
        v.insert("name", "mlp");
        v.insert("hidden", 64i64);
        v.insert("lr", 1e-3);
        v.insert("whole", 2.0);
        v.insert("inner", Value::Dict(inner));
        v
    }

    #[test]
    fn json_maps_tuples_to_lists_int_keys_to_strings_and_keeps_order() {
        let text = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            text,
            r#"{"name":"mlp","hidden":64,"lr":0.001,"whole":2.0,"inner":{"3":[1.5,null],"z":false}}"#
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        let mut inner = Dict::new();
        inner.insert(
            Key::from("3"),
            Value::List(vec![Value::Float(1.5), Value::None]),
        );
        inner.insert(Key::from("z"), Value::Bool(false));
        let mut want = Value::dict();
        want.insert("name", "mlp");
        want.insert("hidden", 64i64);
        want.insert("lr", 1e-3);
        want.insert("whole", 2.0);
        want.insert("inner", Value::Dict(inner));
        assert_eq!(back, want);
    }

    #[test]
    fn yaml_keeps_int_keys_and_reads_what_pyyaml_writes() {
        let text = serde_norway::to_string(&sample()).unwrap();
        assert!(text.contains("\n  3:\n  - 1.5\n  - null\n"), "{text}");
        let back: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(back.get_path("inner.3.0"), Some(&Value::Float(1.5)));
        assert_eq!(back.get_path("whole"), Some(&Value::Float(2.0)));
        // Tags are dropped, bool keys read as Python's names, an empty document is None.
        let v: Value =
            serde_norway::from_str("t: !!python/tuple [1, 2]\nu: !x 3\ntrue: 1\n").unwrap();
        assert_eq!(v.get("t"), Some(&Value::from(vec![1i64, 2])));
        assert_eq!(v.get("u"), Some(&Value::Int(3)));
        assert_eq!(v.get("True"), Some(&Value::Int(1)));
        assert_eq!(serde_norway::from_str::<Value>("").unwrap(), Value::None);
        assert!(serde_norway::from_str::<Value>("1.5: a\n").is_err());
    }

    #[test]
    fn non_finite_floats_are_null_in_json_and_keep_their_value_in_yaml() {
        let v = Value::from(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        assert_eq!(serde_json::to_string(&v).unwrap(), "[null,null,null]");
        let text = serde_norway::to_string(&v).unwrap();
        assert_eq!(text, "- .nan\n- .inf\n- -.inf\n");
        assert_eq!(serde_norway::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn integers_beyond_i64_read_as_floats_and_repeated_keys_keep_the_last() {
        let v: Value = serde_json::from_str("[9223372036854775808, -1]").unwrap();
        assert_eq!(
            v,
            Value::List(vec![Value::Float(9.223372036854776e18), Value::Int(-1)])
        );
        let v: Value = serde_json::from_str(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        let keys: Vec<String> = v.as_dict().unwrap().keys().map(Key::to_string).collect();
        assert_eq!(
            (keys, v.get("a")),
            (vec!["a".into(), "b".into()], Some(&Value::Int(3)))
        );
    }

    #[test]
    fn tensors_have_no_serde_form() {
        let mut v = Value::dict();
        v.insert(
            "w",
            Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)),
        );
        let e = serde_json::to_string(&v).unwrap_err();
        assert!(e.to_string().contains("tensor (Float [2])"), "{e}");
        assert!(serde_norway::to_string(&v).is_err());
        let printable = v.rewrite(&mut |x| x.as_tensor().map(|t| tensor_placeholder(t).into()));
        assert_eq!(
            serde_json::to_string(&printable).unwrap(),
            r#"{"w":"<Tensor Float [2]>"}"#
        );
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn finite_floats_and_ints_round_trip_through_json_and_yaml(
            x in proptest::num::f64::ANY.prop_filter("finite", |x| x.is_finite()),
            i in proptest::num::i64::ANY,
        ) {
            let v = Value::from(vec![Value::Float(x), Value::Int(i)]);
            let j: Value = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            prop_assert_eq!(&j, &v);
            let y: Value = serde_norway::from_str(&serde_norway::to_string(&v).unwrap()).unwrap();
            prop_assert_eq!(&y, &v);
        }
    }
}
