//! The dynamic value tree shared by hyperparameters, `hparams.yaml` and checkpoint files.
//!
//! A Lightning checkpoint is a pickled Python dict; [`Value`] is the subset of Python values
//! that `torch.load(weights_only=True)` accepts: `None`, bools, ints, floats, strings, lists,
//! tuples, dicts (string or int keys, insertion-ordered), `OrderedDict`s and tensors.

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
    /// Python `int` (checkpoints never need more than 64 bits).
    Int(i64),
    /// Python `float`.
    Float(f64),
    /// Python `str`.
    Str(String),
    /// Python `list`.
    List(Vec<Value>),
    /// Python `tuple`.
    Tuple(Vec<Value>),
    /// Python `dict`.
    Dict(Dict),
    /// `collections.OrderedDict` (what `state_dict()` returns in PyTorch).
    OrderedDict(Dict),
    /// A tensor (`torch._utils._rebuild_tensor_v2` in the pickle).
    Tensor(Tensor),
}

impl Clone for Value {
    /// Clones the tree; tensors are shared (`shallow_clone`), not copied.
    fn clone(&self) -> Self {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(x) => Value::Float(*x),
            Value::Str(s) => Value::Str(s.clone()),
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
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::List(a), Value::List(b)) | (Value::Tuple(a), Value::Tuple(b)) => a == b,
            (Value::Dict(a), Value::Dict(b)) | (Value::OrderedDict(a), Value::OrderedDict(b)) => {
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
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
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

    /// The entries of a `dict` or `OrderedDict`.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) | Value::OrderedDict(d) => Some(d),
            _ => None,
        }
    }

    /// Mutable entries of a `dict` or `OrderedDict`.
    pub fn as_dict_mut(&mut self) -> Option<&mut Dict> {
        match self {
            Value::Dict(d) | Value::OrderedDict(d) => Some(d),
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

    /// Calls `f` for every tensor in the tree with its dotted path, depth first in order.
    pub fn visit_tensors(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        let join = |k: &dyn fmt::Display| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match self {
            Value::Tensor(t) => f(prefix, t),
            Value::List(v) | Value::Tuple(v) => {
                for (i, x) in v.iter().enumerate() {
                    x.visit_tensors(&join(&i), f);
                }
            }
            Value::Dict(d) | Value::OrderedDict(d) => {
                for (k, x) in d {
                    x.visit_tensors(&join(k), f);
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
}
