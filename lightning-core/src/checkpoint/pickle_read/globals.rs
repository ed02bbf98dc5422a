//! The allowlist: the globals a checkpoint's pickle may name (what
//! `torch.load(weights_only=True)` accepts for checkpoints); any other is refused by name.

use tch::Kind;

/// An allowlisted global.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Glob {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    StorageType(Kind),
    TensorType,
    Dtype(&'static str),
    Device,
    Set,
}

/// The storage class name (in module `torch`) for a dtype, and back.
pub fn storage_type_name(kind: Kind) -> Option<&'static str> {
    STORAGE_TYPES
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(n, _)| *n)
}

const STORAGE_TYPES: [(&str, Kind); 10] = [
    ("DoubleStorage", Kind::Double),
    ("FloatStorage", Kind::Float),
    ("HalfStorage", Kind::Half),
    ("BFloat16Storage", Kind::BFloat16),
    ("LongStorage", Kind::Int64),
    ("IntStorage", Kind::Int),
    ("ShortStorage", Kind::Int16),
    ("CharStorage", Kind::Int8),
    ("ByteStorage", Kind::Uint8),
    ("BoolStorage", Kind::Bool),
];

const DTYPES: [&str; 24] = [
    "float64",
    "double",
    "float32",
    "float",
    "float16",
    "half",
    "bfloat16",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "cfloat",
    "cdouble",
    "uint16",
    "uint32",
    "uint64",
    "float8_e4m3fn",
];

pub(super) fn resolve_global(module: &str, name: &str) -> Option<Glob> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Glob::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Glob::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Glob::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Glob::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Glob::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Glob::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Glob::TensorType,
        ("torch", "device") => Glob::Device,
        ("builtins", "set") | ("builtins", "frozenset") => Glob::Set,
        ("torch", n) => {
            if let Some((_, k)) = STORAGE_TYPES.iter().find(|(s, _)| *s == n) {
                Glob::StorageType(*k)
            } else {
                Glob::Dtype(DTYPES.iter().find(|d| **d == n)?)
            }
        }
        _ => return None,
    })
}
