//! Hyperparameters: the trait `#[derive(Hyperparameters)]` implements, and the conversions
//! between field types and the [`Value`] tree.

use crate::value::TorchObject;
use crate::value::{tensor_placeholder, Dict, Key, Value};
use std::path::PathBuf;

mod validate;
pub use validate::{check_range, check_with, match_variant, variant_error, Bounded};

/// Errors reading, building or overriding hyperparameters. Each names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HparamError {
    /// A field without a default was not given.
    #[error("missing hyperparameter `{field}` (it has no default)")]
    Missing {
        /// Dotted field name.
        field: String,
    },
    /// A value had the wrong type.
    #[error("hyperparameter `{field}`: expected {expected}, found {found}")]
    Type {
        /// Dotted field name.
        field: String,
        /// The Rust/Python type that was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A `key=value` override named no field.
    #[error("unknown hyperparameter `{field}`; valid names: {}", valid.join(", "))]
    Unknown {
        /// The name given.
        field: String,
        /// Every valid dotted name.
        valid: Vec<String>,
    },
    /// A `key=value` override string could not be parsed.
    #[error("hyperparameter `{field}`: cannot parse {value:?} as {expected}")]
    Parse {
        /// Dotted field name.
        field: String,
        /// The string given.
        value: String,
        /// The type expected.
        expected: String,
    },
    /// An override was not of the form `key=value`.
    #[error("override {0:?} is not of the form key=value")]
    Syntax(String),
    /// A value broke a rule of its field (`#[hparam(range = ..)]`, `#[hparam(validate = ..)]`).
    #[error("hyperparameter `{field}` = {value} is invalid: {rule}")]
    Invalid {
        /// Dotted field name.
        field: String,
        /// The value, as Rust's `Debug` prints it.
        value: String,
        /// The rule it broke (`must be in 0.0..=1.0`, or the validator's message).
        rule: String,
    },
    /// A YAML or JSON hparams document could not be read.
    #[error("invalid {format} hparams document: {msg}")]
    Document {
        /// `"YAML"` or `"JSON"`.
        format: &'static str,
        /// What the parser reported (with line/column when known).
        msg: String,
    },
    /// An hparams file could not be read.
    #[error("reading hparams file {}: {msg}", path.display())]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error's message (kept as text: this error is `Clone` and `PartialEq`).
        msg: String,
    },
    /// An hparams file was read but its document is not valid.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with the document.
        #[source]
        source: Box<HparamError>,
    },
}

/// Description of one hyperparameter field, for `--help`-style listings.
#[derive(Debug, Clone, PartialEq)]
pub struct HparamField {
    /// The saved (possibly renamed) dotted name.
    pub name: String,
    /// The Rust type, as written.
    pub ty: &'static str,
    /// The doc comment.
    pub doc: &'static str,
    /// The default, rendered, if any.
    pub default: Option<String>,
}

/// A config struct whose fields are saved as a checkpoint's `hyper_parameters`.
/// Derive it with `#[derive(Hyperparameters)]`.
///
/// Field types: integers, floats, `bool`, `String`, `PathBuf`, `Option<T>`, `Vec<T>`, nested
/// configs (dotted keys: `optim.lr`) and enums of unit variants (derive `Hyperparameters` on
/// the enum too; it is stored as the variant's name, or its `#[hparam(rename = "..")]`).
/// Attributes: `#[hparam(default = <expr>)]`, `#[hparam(skip)]` (never saved, like
/// `save_hyperparameters(ignore=[..])`; needs a default; still settable by overrides),
/// `#[hparam(rename = "name")]`, and the value rules `#[hparam(range = 0.0..=1.0)]` (numbers,
/// and `Option`/`Vec` of numbers: each one must lie in the range) and
/// `#[hparam(validate = path)]` (`fn(&T) -> Result<(), E>` with `E: Display`). Doc comments
/// become [`HparamField::doc`].
///
/// The rules are checked by [`Hyperparameters::validate`], which `from_value` (so loading a
/// checkpoint or an hparams file), every string override, the checkpoint loader's typed
/// overrides and `Trainer::fit` call: a bad value is an [`HparamError::Invalid`] naming the
/// field, the value and the rule, never a panic inside libtorch.
///
/// When every field has a `default`, the derive also implements `Default` with those values
/// (opt out with `#[hparam(no_default)]` on the struct, to write your own). Enum fields accept
/// their variant names in any case from overrides and files (`act=gelu`) and are saved with
/// the canonical name.
///
/// ```
/// use lightning_core::prelude::*;
///
/// #[derive(Hyperparameters, Clone, Copy, Debug, PartialEq)]
/// pub enum Act { Relu, Gelu }
///
/// #[derive(Hyperparameters, Clone, Debug)]
/// pub struct MlpConfig {
///     /// Input features (no default: required).
///     pub in_dim: i64,
///     #[hparam(default = 64)]
///     pub hidden: i64,
///     #[hparam(default = 1e-3)]
///     pub lr: f64,
///     #[hparam(default = Act::Relu)]
///     pub act: Act,
///     #[hparam(skip, default = false)]
///     pub verbose: bool,
/// }
///
/// let mut saved = Value::dict();
/// saved.insert("in_dim", 4i64);
/// let mut hp = MlpConfig::from_value(&saved)?;          // missing fields take defaults
/// assert_eq!((hp.hidden, hp.act), (64, Act::Relu));
/// hp.set_str("lr", "3e-4")?;                            // `key=value` overrides
/// hp.set_str("act", "gelu")?;                           // variant names in any case
/// assert_eq!(hp.to_value().get("act"), Some(&Value::from("Gelu")));
/// assert_eq!(hp.to_value().get("lr"), Some(&Value::Float(3e-4)));
/// assert!(hp.to_value().get("verbose").is_none());    // skipped: never saved
/// let err = hp.set_str("hiden", "3").unwrap_err();
/// assert!(err.to_string().contains("valid names: in_dim, hidden, lr, act, verbose"));
/// # Ok::<(), lightning_core::HparamError>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a hyperparameters config",
    label = "not a config",
    note = "a config is a struct with named fields and `#[derive(Hyperparameters)]`; plain field types are integers, floats, bool, String, PathBuf, Option<T>, Vec<T>, [T; N], sets and unit enums"
)]
pub trait Hyperparameters: Sized + Clone + 'static {
    /// The fields as a `dict` (skipped fields left out).
    fn to_value(&self) -> Value;
    /// Builds from a (possibly partial) dict; missing fields take their defaults.
    fn from_value(value: &Value) -> Result<Self, HparamError>;
    /// Applies one string override to the field at `key` (dotted for nested structs).
    fn set_str(&mut self, key: &str, value: &str) -> Result<(), HparamError>;
    /// Every field, in declaration order (nested ones dotted).
    fn fields() -> Vec<HparamField>;
    /// Checks every field's rules (`#[hparam(range = ..)]`, `#[hparam(validate = ..)]`),
    /// nested configs included; the first broken rule is an [`HparamError::Invalid`].
    /// Configs without rules are always valid.
    fn validate(&self) -> Result<(), HparamError> {
        Ok(())
    }
}

/// A type that can be a hyperparameter field (implemented for scalars, strings, paths,
/// `Option`, `Vec`, nested [`Hyperparameters`] and unit enums by the derive).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a hyperparameter type",
    label = "not a hyperparameter type",
    note = "supported: integers, floats, bool, String, PathBuf, Option<T>, Vec<T> (Vec<u8>: bytes), [T; N] ([i64; N]: torch.Size), HashSet<T>/BTreeSet<T> (set), and types with `#[derive(Hyperparameters)]` (configs, unit enums)"
)]
pub trait HparamValue: Sized {
    /// The type's name for error messages (`"i64"`, `"list of f64"`).
    fn type_name() -> String;
    /// Converts to the value tree.
    fn to_value(&self) -> Value;
    /// Converts from the value tree; `field` names the field for errors.
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError>;
    /// Parses an override string; `field` names the field for errors.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError>;

    /// The value used when the field is absent and has no `default`: an error naming the
    /// field, except for nested configs, which are built from their own defaults.
    fn from_missing(field: &str) -> Result<Self, HparamError> {
        Err(HparamError::Missing {
            field: field.to_owned(),
        })
    }

    /// Applies a dotted override (`rest` is the part after `field.`). Only nested configs
    /// have sub-fields; for other types every sub-key is unknown.
    fn set_nested(&mut self, rest: &str, value: &str, field: &str) -> Result<(), HparamError> {
        let _ = value;
        Err(HparamError::Unknown {
            field: crate::traverse::join_name(field, rest),
            valid: vec![field.to_owned()],
        })
    }

    /// The sub-fields of a nested config (empty for plain values).
    fn nested_fields() -> Vec<HparamField> {
        Vec::new()
    }

    /// Checks the rules of a nested config's fields (and of each one in an `Option` or
    /// `Vec`), with errors named under `field`; plain values have no rules of their own.
    fn validate_field(&self, field: &str) -> Result<(), HparamError> {
        let _ = field;
        Ok(())
    }

    /// How a `Vec` of this type is written: a list, except `Vec<u8>`, which Python would
    /// have written as `bytes`.
    #[doc(hidden)]
    fn vec_to_value(items: &[Self]) -> Value {
        Value::List(items.iter().map(Self::to_value).collect())
    }

    /// How a fixed-size array of this type is written: a tuple, except `[i64; N]`, which is a
    /// shape: a `torch.Size`.
    #[doc(hidden)]
    fn array_to_value(items: &[Self]) -> Value {
        Value::Tuple(items.iter().map(Self::to_value).collect())
    }
}

/// The items of a sequence value as the value tree holds them: lists and tuples, and the
/// sequences Python writes with their own types (`bytes`/`bytearray` as ints, `torch.Size`,
/// `set`). `None` for anything else.
fn seq_items(value: &Value) -> Option<std::borrow::Cow<'_, [Value]>> {
    use std::borrow::Cow;
    match value {
        Value::List(v) | Value::Tuple(v) | Value::Set(v) => Some(Cow::Borrowed(v)),
        Value::Bytes(b) | Value::ByteArray(b) => Some(Cow::Owned(
            b.iter().map(|&x| Value::Int(i64::from(x))).collect(),
        )),
        Value::Size(d) => Some(Cow::Owned(d.iter().map(|&x| Value::Int(x)).collect())),
        _ => None,
    }
}

impl HparamError {
    /// Prefixes the field name(s) with `prefix.` (used when a nested config reports an error).
    pub fn prefixed(self, prefix: &str) -> HparamError {
        let p = |f: String| crate::traverse::join_name(prefix, &f);
        match self {
            HparamError::Missing { field } => HparamError::Missing { field: p(field) },
            HparamError::Type {
                field,
                expected,
                found,
            } => HparamError::Type {
                field: p(field),
                expected,
                found,
            },
            HparamError::Unknown { field, valid } => HparamError::Unknown {
                field: p(field),
                valid: valid.into_iter().map(p).collect(),
            },
            HparamError::Parse {
                field,
                value,
                expected,
            } => HparamError::Parse {
                field: p(field),
                value,
                expected,
            },
            HparamError::Invalid { field, value, rule } => HparamError::Invalid {
                field: p(field),
                value,
                rule,
            },
            other => other,
        }
    }
}

/// The error for a value of the wrong variant.
pub fn type_error<T: HparamValue>(field: &str, found: &Value) -> HparamError {
    HparamError::Type {
        field: field.to_owned(),
        expected: T::type_name(),
        found: describe(found),
    }
}

/// The error for an override string that does not parse as `T`.
pub fn parse_error<T: HparamValue>(field: &str, s: &str) -> HparamError {
    HparamError::Parse {
        field: field.to_owned(),
        value: s.to_owned(),
        expected: T::type_name(),
    }
}

/// A short rendering of a value for error messages: its type and, for scalars, the value.
fn describe(v: &Value) -> String {
    match v {
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::Float(x) => format!("float {x}"),
        Value::Str(s) => format!("str {s:?}"),
        other => other.type_name().to_owned(),
    }
}

macro_rules! int_hparam {
    ($($t:ty $({ $($extra:tt)* })?),*) => {$(
        impl HparamValue for $t {
            fn type_name() -> String {
                stringify!($t).to_owned()
            }
            /// Values above `i64::MAX` (only possible for `u64`/`usize`) are stored as floats.
            #[allow(irrefutable_let_patterns)]
            fn to_value(&self) -> Value {
                match i64::try_from(*self) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Float(*self as f64),
                }
            }
            fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
                match value {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| HparamError::Type {
                        field: field.to_owned(),
                        expected: format!("{} in {}..={}", stringify!($t), <$t>::MIN, <$t>::MAX),
                        found: format!("int {i}"),
                    }),
                    other => Err(type_error::<Self>(field, other)),
                }
            }
            fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
                s.trim().parse::<$t>().map_err(|_| parse_error::<Self>(field, s))
            }
            $($($extra)*)?
        }
    )*};
}
int_hparam!(i8, i16, i32, isize, u16, u32, u64, usize);
int_hparam!(u8 {
    /// `Vec<u8>` is Python `bytes`.
    fn vec_to_value(items: &[Self]) -> Value {
        Value::Bytes(items.to_vec())
    }
});
int_hparam!(i64 {
    /// `[i64; N]` is a shape: Python's `torch.Size`.
    fn array_to_value(items: &[Self]) -> Value {
        Value::Size(items.to_vec())
    }
});

macro_rules! float_hparam {
    ($($t:ty),*) => {$(
        impl HparamValue for $t {
            fn type_name() -> String {
                stringify!($t).to_owned()
            }
            fn to_value(&self) -> Value {
                Value::Float(f64::from(*self))
            }
            /// Accepts floats and ints (`lr: 1` in a YAML file is an int).
            fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
                match value {
                    Value::Float(x) => Ok(*x as $t),
                    Value::Int(i) => Ok(*i as $t),
                    other => Err(type_error::<Self>(field, other)),
                }
            }
            fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
                s.trim().parse::<$t>().map_err(|_| parse_error::<Self>(field, s))
            }
        }
    )*};
}
float_hparam!(f32, f64);

impl HparamValue for bool {
    fn type_name() -> String {
        "bool".to_owned()
    }
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        value
            .as_bool()
            .ok_or_else(|| type_error::<Self>(field, value))
    }
    /// Accepts `true`/`false` in any case (Python's `True`), and `1`/`0`.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(parse_error::<Self>(field, s)),
        }
    }
}

impl HparamValue for String {
    fn type_name() -> String {
        "String".to_owned()
    }
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
    /// A string; also a `torch.dtype` or `torch.device` value as `str()` prints it
    /// (`"torch.float32"`, `"cuda:0"`), the strings older checkpoints of ours held for them.
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        match value {
            Value::Str(s) => Ok(s.clone()),
            Value::Torch(o) => match &**o {
                TorchObject::Global(g) if g.starts_with("torch.") => Ok(g.clone()),
                TorchObject::Device(d) => Ok(d.clone()),
                _ => Err(type_error::<Self>(field, value)),
            },
            _ => Err(type_error::<Self>(field, value)),
        }
    }
    /// The string as given (not trimmed, not unquoted).
    fn parse_str(s: &str, _field: &str) -> Result<Self, HparamError> {
        Ok(s.to_owned())
    }
}

/// A `torch.dtype` hyperparameter (`dtype=torch.bfloat16` in a Lightning `__init__`): saved
/// as the dtype object itself, as Python saves it; reads a dtype object or its name
/// (`"bfloat16"`, `"torch.bfloat16"`), and string overrides take either spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TorchDtype(pub tch::Kind);

impl TorchDtype {
    fn from_name(name: &str) -> Option<TorchDtype> {
        let n = name.trim().strip_prefix("torch.").unwrap_or(name.trim());
        crate::value::dtype_entry(n).and_then(|(_, _, k)| k.map(TorchDtype))
    }
}

impl HparamValue for TorchDtype {
    fn type_name() -> String {
        "torch.dtype".to_owned()
    }
    fn to_value(&self) -> Value {
        Value::Torch(Box::new(TorchObject::Global(format!(
            "torch.{}",
            crate::value::dtype_name(self.0)
        ))))
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        String::from_value(value, field)
            .ok()
            .and_then(|s| Self::from_name(&s))
            .ok_or_else(|| type_error::<Self>(field, value))
    }
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        Self::from_name(s).ok_or_else(|| parse_error::<Self>(field, s))
    }
}

/// A `torch.device` hyperparameter: saved as a `torch.device` object, as Python saves it;
/// reads a device object or its text (`"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TorchDevice(pub tch::Device);

impl TorchDevice {
    fn from_name(name: &str) -> Option<TorchDevice> {
        let n = name.trim();
        let d = match n.split_once(':') {
            None => match n {
                "cpu" => tch::Device::Cpu,
                "cuda" => tch::Device::Cuda(0),
                "mps" => tch::Device::Mps,
                _ => return None,
            },
            Some(("cuda", i)) => tch::Device::Cuda(i.parse().ok()?),
            Some(("cpu", "0")) => tch::Device::Cpu,
            _ => return None,
        };
        Some(TorchDevice(d))
    }
}

impl HparamValue for TorchDevice {
    fn type_name() -> String {
        "torch.device".to_owned()
    }
    fn to_value(&self) -> Value {
        let name = match self.0 {
            tch::Device::Cpu => "cpu".to_owned(),
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            tch::Device::Mps => "mps".to_owned(),
            tch::Device::Vulkan => "vulkan".to_owned(),
        };
        Value::Torch(Box::new(TorchObject::Device(name)))
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        String::from_value(value, field)
            .ok()
            .and_then(|s| Self::from_name(&s))
            .ok_or_else(|| type_error::<Self>(field, value))
    }
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        Self::from_name(s).ok_or_else(|| parse_error::<Self>(field, s))
    }
}

impl HparamValue for PathBuf {
    fn type_name() -> String {
        "path".to_owned()
    }
    /// Stored as a string (lossy for non-UTF-8 paths, as Python's `str(path)` would fail).
    fn to_value(&self) -> Value {
        Value::Str(self.to_string_lossy().into_owned())
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        value
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| type_error::<Self>(field, value))
    }
    fn parse_str(s: &str, _field: &str) -> Result<Self, HparamError> {
        Ok(PathBuf::from(s))
    }
}

impl<T: HparamValue> HparamValue for Option<T> {
    fn type_name() -> String {
        format!("optional {}", T::type_name())
    }
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::None, T::to_value)
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        match value {
            Value::None => Ok(None),
            v => T::from_value(v, field).map(Some),
        }
    }
    /// `None`, `none`, `null` and `~` give `None` (so `Option<String>` cannot hold those words
    /// through a string override); anything else is parsed as `T`.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        match s.trim() {
            "None" | "none" | "null" | "~" => Ok(None),
            _ => T::parse_str(s, field).map(Some),
        }
    }
    fn validate_field(&self, field: &str) -> Result<(), HparamError> {
        self.as_ref().map_or(Ok(()), |v| v.validate_field(field))
    }
}

impl<T: HparamValue> HparamValue for Vec<T> {
    fn type_name() -> String {
        format!("list of {}", T::type_name())
    }
    /// A list (`Vec<u8>`: `bytes`).
    fn to_value(&self) -> Value {
        T::vec_to_value(self)
    }
    /// Accepts lists, tuples, sets, `bytes`/`bytearray` and `torch.Size`; an item's error
    /// names it `field.i`.
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        let items = seq_items(value).ok_or_else(|| type_error::<Self>(field, value))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| T::from_value(v, &format!("{field}.{i}")))
            .collect()
    }
    /// `[1, 2, 3]` (a YAML/JSON list) or `1,2,3`; an empty string or `[]` is an empty list.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        let t = s.trim();
        if t.starts_with('[') {
            // Scalars go through `T::parse_str` on their text, so a u64 above i64::MAX
            // (which the value tree cannot hold as an int) still parses exactly.
            let y: serde_norway::Value =
                serde_norway::from_str(t).map_err(|_| parse_error::<Self>(field, s))?;
            let seq = y
                .as_sequence()
                .ok_or_else(|| parse_error::<Self>(field, s))?;
            return seq
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let f = format!("{field}.{i}");
                    match item {
                        serde_norway::Value::Number(n) => T::parse_str(&n.to_string(), &f),
                        serde_norway::Value::String(x) => T::parse_str(x, &f),
                        serde_norway::Value::Bool(b) => T::parse_str(&b.to_string(), &f),
                        other => {
                            let v = serde_norway::from_value::<Value>(other.clone())
                                .map_err(|_| parse_error::<T>(&f, s))?;
                            T::from_value(&v, &f)
                        }
                    }
                })
                .collect();
        }
        if t.is_empty() {
            return Ok(Vec::new());
        }
        t.split(',')
            .enumerate()
            .map(|(i, item)| T::parse_str(item.trim(), &format!("{field}.{i}")))
            .collect()
    }
    fn validate_field(&self, field: &str) -> Result<(), HparamError> {
        self.iter()
            .enumerate()
            .try_for_each(|(i, v)| v.validate_field(&format!("{field}.{i}")))
    }
}

/// A fixed-size array: written as a tuple (`[i64; N]`: a `torch.Size`); reads any sequence of
/// exactly `N` items.
impl<T: HparamValue, const N: usize> HparamValue for [T; N] {
    fn type_name() -> String {
        format!("{N} x {}", T::type_name())
    }
    fn to_value(&self) -> Value {
        T::array_to_value(self)
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        let items = Vec::<T>::from_value(value, field)?;
        let n = items.len();
        items.try_into().map_err(|_| HparamError::Type {
            field: field.to_owned(),
            expected: Self::type_name(),
            found: format!("{n} items"),
        })
    }
    /// As `Vec<T>` (`[1, 2, 3]` or `1,2,3`), with exactly `N` items.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        Vec::<T>::parse_str(s, field)?
            .try_into()
            .map_err(|_| parse_error::<Self>(field, s))
    }
    fn validate_field(&self, field: &str) -> Result<(), HparamError> {
        self.iter()
            .enumerate()
            .try_for_each(|(i, v)| v.validate_field(&format!("{field}.{i}")))
    }
}

/// Reads a set's items from any sequence (duplicates collapse); parses `{a, b}`, `[a, b]` or
/// `a,b`.
fn set_from_str<T: HparamValue>(s: &str, field: &str) -> Result<Vec<T>, HparamError> {
    let t = s.trim();
    match t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        Some(inner) => Vec::<T>::parse_str(&format!("[{inner}]"), field),
        None => Vec::<T>::parse_str(t, field),
    }
}

macro_rules! set_hparam {
    ($set:ident, $($bound:path),+; $doc:literal) => {
        #[doc = $doc]
        impl<T: HparamValue $(+ $bound)+> HparamValue for std::collections::$set<T> {
            fn type_name() -> String {
                format!("set of {}", T::type_name())
            }
            /// A Python `set`.
            fn to_value(&self) -> Value {
                Value::Set(self.iter().map(T::to_value).collect())
            }
            fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
                Ok(Vec::<T>::from_value(value, field)?.into_iter().collect())
            }
            fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
                Ok(set_from_str::<T>(s, field)?.into_iter().collect())
            }
            fn validate_field(&self, field: &str) -> Result<(), HparamError> {
                self.iter().try_for_each(|v| v.validate_field(field))
            }
        }
    };
}
set_hparam!(BTreeSet, Ord; "A Python `set` (written in sorted order).");
set_hparam!(HashSet, Eq, std::hash::Hash; "A Python `set` (written in the set's iteration order).");

/// Every [`Hyperparameters`] config is a field type too: it nests as a dict, and string
/// overrides reach its fields with dotted keys (`model.hidden=128`). Not recommended in
/// errors: an unsupported field type is reported as "not a hyperparameter type", not as a
/// missing config.
#[diagnostic::do_not_recommend]
impl<H: Hyperparameters> HparamValue for H {
    fn type_name() -> String {
        let full = std::any::type_name::<H>();
        full.rsplit("::").next().unwrap_or(full).to_owned()
    }
    fn to_value(&self) -> Value {
        Hyperparameters::to_value(self)
    }
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError> {
        <H as Hyperparameters>::from_value(value).map_err(|e| e.prefixed(field))
    }
    /// A YAML/JSON mapping of some of its fields (`{hidden: 3}`); the rest take defaults.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError> {
        let v = from_yaml(s).map_err(|_| parse_error::<Self>(field, s))?;
        <Self as HparamValue>::from_value(&v, field)
    }
    fn from_missing(field: &str) -> Result<Self, HparamError> {
        <H as Hyperparameters>::from_value(&Value::dict()).map_err(|e| e.prefixed(field))
    }
    fn set_nested(&mut self, rest: &str, value: &str, field: &str) -> Result<(), HparamError> {
        self.set_str(rest, value).map_err(|e| e.prefixed(field))
    }
    fn nested_fields() -> Vec<HparamField> {
        H::fields()
    }
    fn validate_field(&self, field: &str) -> Result<(), HparamError> {
        Hyperparameters::validate(self).map_err(|e| e.prefixed(field))
    }
}

/// The hyperparameters of a module without an `#[hparams]` field: an empty dict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHparams;

impl Hyperparameters for NoHparams {
    fn to_value(&self) -> Value {
        Value::dict()
    }
    /// Accepts an empty dict (or `None`); any key is unknown.
    fn from_value(value: &Value) -> Result<Self, HparamError> {
        DictReader::new::<Self>(value, &[])?;
        Ok(NoHparams)
    }
    fn set_str(&mut self, key: &str, _value: &str) -> Result<(), HparamError> {
        Err(HparamError::Unknown {
            field: key.to_owned(),
            valid: Vec::new(),
        })
    }
    fn fields() -> Vec<HparamField> {
        Vec::new()
    }
}

/// Reads the dict a config is built from; used by the derive's `from_value`.
#[doc(hidden)]
pub struct DictReader<'a>(Option<&'a Dict>);

impl<'a> DictReader<'a> {
    /// Checks that `value` is a dict (or `None`, read as empty) whose keys are all in `valid`.
    pub fn new<H: Hyperparameters>(value: &'a Value, valid: &[&str]) -> Result<Self, HparamError> {
        let d = match value {
            Value::None => return Ok(DictReader(None)),
            v => v.as_dict().ok_or_else(|| HparamError::Type {
                field: String::new(),
                expected: format!("dict of {} fields", <H as HparamValue>::type_name()),
                found: describe(v),
            })?,
        };
        for k in d.keys() {
            let known = matches!(k, Key::Str(s) if valid.contains(&s.as_str()));
            if !known {
                return Err(HparamError::Unknown {
                    field: k.to_string(),
                    valid: valid.iter().map(|s| (*s).to_owned()).collect(),
                });
            }
        }
        Ok(DictReader(Some(d)))
    }

    /// The value under `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.0?.get(&Key::Str(name.to_owned()))
    }
}

/// A `--help`-style listing of a config's fields, one per line:
/// `  name <type> (default: x)  description`; required fields say `(required)`.
pub fn help<H: Hyperparameters>() -> String {
    let fields = H::fields();
    let width = fields
        .iter()
        .map(|f| f.name.len() + f.ty.len() + 3)
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|f| {
            let head = format!("{} <{}>", f.name, f.ty);
            let default = f
                .default
                .as_deref()
                .map_or_else(|| "(required)".to_owned(), |d| format!("(default: {d})"));
            let doc = f.doc.replace('\n', " ");
            format!("  {head:width$}  {default}  {doc}")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits an override `key=value` at the first `=`; the key is trimmed and must be non-empty.
///
/// ```
/// use lightning_core::hparams::parse_override;
/// assert_eq!(parse_override("lr=3e-4").unwrap(), ("lr".to_owned(), "3e-4".to_owned()));
/// assert!(parse_override("lr").is_err());
/// ```
pub fn parse_override(s: &str) -> Result<(String, String), HparamError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(HparamError::Syntax(s.to_owned())),
    }
}

/// Applies `key=value` overrides in order.
pub fn apply_overrides<H: Hyperparameters>(
    hp: &mut H,
    overrides: &[&str],
) -> Result<(), HparamError> {
    for o in overrides {
        let (k, v) = parse_override(o)?;
        hp.set_str(&k, &v)?;
    }
    Ok(())
}

/// The tree with each tensor replaced by its descriptive string, for the text formats.
fn printable(v: &Value) -> Value {
    v.rewrite(&mut |x| x.as_tensor().map(|t| Value::Str(tensor_placeholder(t))))
}

/// Writes a value tree as YAML (what Lightning's `hparams.yaml` holds), through
/// [`Value`]'s serde impl.
///
/// Tuples become sequences, int keys stay ints, non-finite floats become `.nan`/`.inf`; tensors
/// have no YAML form and are written as a descriptive string (`"<Tensor Float [2, 3]>"`).
///
/// Known limitation (of the serde_yaml family's emitter): floats below 1e-5 or from 1e16 in
/// magnitude are written in exponent form without a dot (`1e-10`, `1e16`), which this crate reads
/// back as floats but Python's `yaml.safe_load` (YAML 1.1) reads as strings.
///
/// ```
/// use lightning_core::{hparams, Value};
/// let mut v = Value::dict();
/// v.insert("lr", 0.001);
/// v.insert("hidden", 64i64);
/// let text = hparams::to_yaml(&v);
/// assert_eq!(hparams::from_yaml(&text).unwrap(), v);
/// ```
pub fn to_yaml(v: &Value) -> String {
    // Without tensors the tree always serializes (keys are strings or ints).
    serde_norway::to_string(&printable(v)).unwrap_or_default()
}

/// Reads a YAML document into a value tree (mappings become `Dict`s in file order; tags such
/// as `!!python/tuple` are dropped and their content kept).
pub fn from_yaml(text: &str) -> Result<Value, HparamError> {
    serde_norway::from_str(text).map_err(|e| HparamError::Document {
        format: "YAML",
        msg: e.to_string(),
    })
}

/// Writes a value tree as pretty JSON, through [`Value`]'s serde impl.
///
/// JSON has no int keys (they become strings), no tuples (lists) and no NaN/inf (`null`);
/// tensors are written as a descriptive string.
pub fn to_json(v: &Value) -> String {
    serde_json::to_string_pretty(&printable(v)).unwrap_or_default()
}

/// Reads a JSON document into a value tree (objects become `Dict`s in file order).
pub fn from_json(text: &str) -> Result<Value, HparamError> {
    serde_json::from_str(text).map_err(|e| HparamError::Document {
        format: "JSON",
        msg: e.to_string(),
    })
}

/// Reads an hparams file by extension: `.json` as JSON, anything else as YAML.
pub fn read_file(path: &std::path::Path) -> Result<Value, HparamError> {
    let text = std::fs::read_to_string(path).map_err(|e| HparamError::ReadFile {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let v = if is_json {
        from_json(&text)
    } else {
        from_yaml(&text)
    };
    v.map_err(|e| HparamError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        let mut inner = Dict::new();
        inner.insert(Key::Int(3), Value::from(vec![1.5f64, -2.0]));
        let mut v = Value::dict();
        v.insert("name", "mlp");
        v.insert("hidden", 64i64);
        v.insert("lr", 1e-3);
        v.insert("flag", true);
        v.insert("none", Value::None);
        v.insert("inner", Value::Dict(inner));
        v
    }

    #[test]
    fn yaml_and_json_round_trip_a_tree() {
        let v = sample();
        assert_eq!(from_yaml(&to_yaml(&v)).unwrap(), v);
        // JSON turns int keys into strings.
        let j = from_json(&to_json(&v)).unwrap();
        assert_eq!(j.get_path("inner.3.1"), Some(&Value::Float(-2.0)));
        assert_eq!(j.get("lr"), Some(&Value::Float(1e-3)));
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(matches!(
            from_yaml("a: [1, 2"),
            Err(HparamError::Document { format: "YAML", .. })
        ));
        assert!(matches!(
            from_json("{\"a\": }"),
            Err(HparamError::Document { format: "JSON", .. })
        ));
    }

    #[test]
    fn scalar_parsing_names_field_and_type() {
        assert_eq!(u8::parse_str("255", "x"), Ok(255));
        let e = u8::parse_str("256", "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hyperparameter `x`: cannot parse \"256\" as u8"
        );
        let e = u8::from_value(&Value::Int(-1), "x").unwrap_err();
        assert!(e.to_string().contains("u8 in 0..=255"), "{e}");
        assert_eq!(bool::parse_str("True", "b"), Ok(true));
        assert_eq!(Option::<i64>::parse_str("None", "o"), Ok(None));
        assert_eq!(Vec::<i64>::parse_str("[1, 2]", "v"), Ok(vec![1, 2]));
        assert_eq!(Vec::<i64>::parse_str("1, 2,3", "v"), Ok(vec![1, 2, 3]));
        let e = Vec::<i64>::parse_str("1,x", "v").unwrap_err();
        assert!(
            matches!(e, HparamError::Parse { ref field, .. } if field == "v.1"),
            "{e}"
        );
        assert!(f64::from_value(&Value::Str("a".into()), "lr").is_err());
    }

    #[test]
    fn no_hparams_is_an_empty_dict() {
        assert_eq!(Hyperparameters::to_value(&NoHparams), Value::dict());
        assert_eq!(
            <NoHparams as Hyperparameters>::from_value(&Value::None),
            Ok(NoHparams)
        );
        let mut d = Value::dict();
        d.insert("x", 1i64);
        assert!(matches!(
            <NoHparams as Hyperparameters>::from_value(&d),
            Err(HparamError::Unknown { .. })
        ));
    }
}
