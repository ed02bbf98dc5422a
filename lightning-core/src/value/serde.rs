//! The serde data model of the value tree: `hparams.yaml`, JSON hparams files and the JSON
//! metadata of safetensors exports read and write [`Value`]s through it.

use super::tree::{Dict, Key, TorchObject, Value};
use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::ser::{self, Serialize, Serializer};
use std::fmt;

impl Serialize for Key {
    /// A string key as a string, an int key as an int (JSON writes it as a string, `"0"`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Str(k) => s.serialize_str(k),
            Key::Int(i) => s.serialize_i64(*i),
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    /// A string, an int (a YAML `3:` key; one above `i64::MAX` is an error) or a bool (a YAML
    /// `true:` key, read as PyYAML does, then as the string `"True"`/`"False"`); floats, nulls
    /// and collections are errors. JSON keys are always strings, so they stay strings (`"0"`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
                Ok(Key::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                i64::try_from(v)
                    .map(Key::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key::Str(if v { "True" } else { "False" }.to_owned()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

/// The serde data model of the tree, shared by `hparams.yaml`, JSON hparams files and the
/// JSON metadata of safetensors exports.
///
/// | Value | serialized as | deserialized from |
/// |---|---|---|
/// | `None` | unit (`null`) | unit / none (`null`, `~`, an empty YAML document) |
/// | `Bool` | bool | bool |
/// | `Int` | i64 | i64, and u64 up to `i64::MAX` |
/// | `BigInt` | i128 when it fits, else its decimal string | never produced |
/// | `Float` | f64: serde_json writes non-finite floats as `null` (JSON has none; callers that must not lose them check first), YAML as `.nan`/`.inf`/`-.inf` | f64, and integers beyond i64 (u64/i128/u128, as JSON parsers read them) |
/// | `Complex` | a pair `[re, im]` | never produced |
/// | `Str` | str | str |
/// | `Bytes`, `ByteArray` | sequence of ints (0-255) | never produced |
/// | `Set`, `Size` | sequence | never produced |
/// | `Counter` | map | never produced |
/// | `List`, `Tuple` | sequence | sequence, always as a `List` |
/// | `Dict`, `OrderedDict` | map in insertion order, keys as [`Key`] says (int keys stay ints in YAML, become strings in JSON) | map, always as a `Dict`, in document order (a repeated key keeps its first position and its last value, as Python's loaders do) |
/// | `Tensor`, `Torch` | an error: text formats have no tensor form (use [`Value::rewrite`] with [`tensor_placeholder`] or a report of your own first) | never produced |
///
/// A YAML tag (`!tag value`) is dropped and its content kept.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::None => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::BigInt(i) => match i.to_i128() {
                Some(v) => s.serialize_i128(v),
                None => s.serialize_str(&i.to_string()),
            },
            Value::Float(x) => s.serialize_f64(*x),
            Value::Complex(re, im) => s.collect_seq([re, im]),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) | Value::ByteArray(b) => s.collect_seq(b),
            Value::Size(v) => s.collect_seq(v),
            Value::List(items) | Value::Tuple(items) | Value::Set(items) => s.collect_seq(items),
            Value::Dict(d) | Value::OrderedDict(d) | Value::Counter(d) => s.collect_map(d),
            // A dtype, qscheme or device is its text, as `str()` prints it.
            Value::Torch(o) => match &**o {
                TorchObject::Global(g) => s.serialize_str(g),
                TorchObject::Device(d) => s.serialize_str(d),
                _ => Err(ser::Error::custom(format!(
                    "a {} has no serde form",
                    o.describe()
                ))),
            },
            Value::Tensor(t) => Err(ser::Error::custom(format!(
                "a tensor ({:?} {:?}) has no serde form",
                t.kind(),
                t.size()
            ))),
        }
    }
}

/// See the table on [`Value`]'s `Serialize` impl.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null, a bool, a number, a string, a sequence or a mapping")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element()? {
            items.push(x);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut d = Dict::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some((k, v)) = map.next_entry::<Key, Value>()? {
            d.insert(k, v);
        }
        Ok(Value::Dict(d))
    }
    /// A YAML tagged node (`!tag value`): the tag is dropped, the content kept.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (_tag, content) = data.variant::<String>()?;
        content.newtype_variant()
    }
}
