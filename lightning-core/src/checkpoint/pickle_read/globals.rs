//! The allowlist: exactly the globals of torch 2.11's `weights_only` unpickler
//! (`torch._weights_only_unpickler._get_allowed_globals()`, 144 names); any other global is
//! refused by name. Protocol-2 pickles name builtins with Python 2's module `__builtin__`,
//! which is read as `builtins` (torch's `IMPORT_MAPPING` does the same).

use crate::value::{dtype_entry, DTYPES};
use tch::Kind;

/// A storage class named in a persistent id: how its record is read.
#[derive(Debug, PartialEq)]
pub(super) struct StorageClass {
    /// The class name (`FloatStorage`, `UntypedStorage`).
    pub name: &'static str,
    /// The elements the record holds (`Uint8` bytes for `UntypedStorage`, the integer
    /// representation for quantized storages).
    pub kind: Kind,
    /// For quantized storages, the quantized dtype (`quint8`).
    pub quantized: Option<&'static str>,
}

const fn typed(name: &'static str, kind: Kind) -> StorageClass {
    StorageClass {
        name,
        kind,
        quantized: None,
    }
}

const fn quant(name: &'static str, kind: Kind, dtype: &'static str) -> StorageClass {
    StorageClass {
        name,
        kind,
        quantized: Some(dtype),
    }
}

/// `torch.<Name>Storage` (and, for the first 12, `torch.cuda.<Name>Storage`).
pub(super) static STORAGES: [StorageClass; 17] = [
    typed("DoubleStorage", Kind::Double),
    typed("FloatStorage", Kind::Float),
    typed("HalfStorage", Kind::Half),
    typed("BFloat16Storage", Kind::BFloat16),
    typed("LongStorage", Kind::Int64),
    typed("IntStorage", Kind::Int),
    typed("ShortStorage", Kind::Int16),
    typed("CharStorage", Kind::Int8),
    typed("ByteStorage", Kind::Uint8),
    typed("BoolStorage", Kind::Bool),
    typed("ComplexFloatStorage", Kind::ComplexFloat),
    typed("ComplexDoubleStorage", Kind::ComplexDouble),
    quant("QInt8Storage", Kind::Int8, "qint8"),
    quant("QUInt8Storage", Kind::Uint8, "quint8"),
    quant("QInt32Storage", Kind::Int, "qint32"),
    quant("QUInt4x2Storage", Kind::Uint8, "quint4x2"),
    quant("QUInt2x4Storage", Kind::Uint8, "quint2x4"),
];

/// `torch.storage.UntypedStorage`: bytes (what `_rebuild_tensor_v3` reads).
pub(super) static UNTYPED: StorageClass = typed("UntypedStorage", Kind::Uint8);

const QSCHEMES: [&str; 5] = [
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
];

/// An allowlisted global.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Glob {
    OrderedDict,
    Counter,
    Set,
    Complex,
    ByteArray,
    Encode,
    Size,
    Device,
    GetLayout,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    RebuildSparse,
    RebuildNested,
    RebuildQTensor,
    RebuildMeta,
    RebuildDeviceFromCpu,
    RebuildDeviceFromNumpy,
    RebuildWrapperSubclass,
    /// A storage class (legacy typed, quantized, or untyped).
    Storage(&'static StorageClass),
    /// `torch.storage.TypedStorage` (a class, usable only as a value).
    TypedStorage,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`.
    TensorType,
    /// A legacy tensor class (`torch.FloatTensor`, `torch.cuda.sparse.LongTensor`): its name.
    LegacyTensorClass(&'static str, &'static str),
    /// A dtype, by torch's name.
    Dtype(&'static str),
    /// A qscheme, by torch's name.
    QScheme(&'static str),
    /// One of `torch.distributed.checkpoint`'s metadata classes (`module.name`), allowed only
    /// when reading a DCP `.metadata` file.
    Dcp(&'static str),
}

/// The storage class name (in module `torch`) for a dtype tch has.
pub fn storage_type_name(kind: Kind) -> Option<&'static str> {
    STORAGES
        .iter()
        .find(|s| s.kind == kind && s.quantized.is_none())
        .map(|s| s.name)
}

/// The storage class name (in module `torch`) of a quantized dtype (`quint8` ->
/// `QUInt8Storage`).
pub fn quantized_storage_name(dtype: &str) -> Option<&'static str> {
    STORAGES
        .iter()
        .find(|s| s.quantized == Some(dtype))
        .map(|s| s.name)
}

/// The allowlisted qscheme of that name (`per_tensor_affine`).
pub fn qscheme_name(name: &str) -> Option<&'static str> {
    QSCHEMES.iter().find(|q| **q == name).copied()
}

/// A legacy tensor class of `module`; the sparse modules have no `BoolTensor`.
fn legacy_tensor_class(module: &'static str, name: &str) -> Option<Glob> {
    let full = TENSOR_CLASS_NAMES.iter().find(|n| **n == name)?;
    if module.ends_with("sparse") && *full == "BoolTensor" {
        return None;
    }
    Some(Glob::LegacyTensorClass(module, full))
}

/// `torch.<Name>Tensor`, `torch.cuda.<Name>Tensor`; the sparse ones (`torch.sparse.`,
/// `torch.cuda.sparse.`) lack `BoolTensor`.
const TENSOR_CLASS_NAMES: [&str; 10] = [
    "BFloat16Tensor",
    "BoolTensor",
    "ByteTensor",
    "CharTensor",
    "DoubleTensor",
    "FloatTensor",
    "HalfTensor",
    "IntTensor",
    "LongTensor",
    "ShortTensor",
];

/// The allowlisted global `module.name`, or `None` (refused).
pub(super) fn resolve_global(module: &str, name: &str) -> Option<Glob> {
    let module = if module == "__builtin__" {
        "builtins"
    } else {
        module
    };
    Some(match (module, name) {
        ("collections", "OrderedDict") => Glob::OrderedDict,
        ("collections", "Counter") => Glob::Counter,
        ("builtins", "set") => Glob::Set,
        ("builtins", "complex") => Glob::Complex,
        ("builtins", "bytearray") => Glob::ByteArray,
        ("_codecs", "encode") => Glob::Encode,
        ("torch", "Size") => Glob::Size,
        ("torch", "device") => Glob::Device,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Glob::TensorType,
        ("torch.serialization", "_get_layout") => Glob::GetLayout,
        ("torch._tensor", "_rebuild_from_type_v2") => Glob::RebuildFromTypeV2,
        ("torch.storage", "UntypedStorage") => Glob::Storage(&UNTYPED),
        ("torch.storage", "TypedStorage") => Glob::TypedStorage,
        ("torch._utils", f) => match f {
            "_rebuild_tensor" => Glob::RebuildTensor,
            "_rebuild_tensor_v2" => Glob::RebuildTensorV2,
            "_rebuild_tensor_v3" => Glob::RebuildTensorV3,
            "_rebuild_parameter" => Glob::RebuildParameter,
            "_rebuild_parameter_with_state" => Glob::RebuildParameterWithState,
            "_rebuild_sparse_tensor" => Glob::RebuildSparse,
            "_rebuild_nested_tensor" => Glob::RebuildNested,
            "_rebuild_qtensor" => Glob::RebuildQTensor,
            "_rebuild_meta_tensor_no_storage" => Glob::RebuildMeta,
            "_rebuild_device_tensor_from_cpu_tensor" => Glob::RebuildDeviceFromCpu,
            "_rebuild_device_tensor_from_numpy" => Glob::RebuildDeviceFromNumpy,
            "_rebuild_wrapper_subclass" => Glob::RebuildWrapperSubclass,
            _ => return None,
        },
        ("torch", n) => {
            if let Some(s) = STORAGES.iter().find(|s| s.name == n) {
                Glob::Storage(s)
            } else if let Some((d, _, _)) = dtype_entry(n) {
                Glob::Dtype(d)
            } else if let Some(q) = QSCHEMES.iter().find(|q| **q == n) {
                Glob::QScheme(q)
            } else {
                legacy_tensor_class("torch", n)?
            }
        }
        ("torch.cuda", n) => match STORAGES[..12].iter().find(|s| s.name == n) {
            Some(s) => Glob::Storage(s),
            None => legacy_tensor_class("torch.cuda", n)?,
        },
        ("torch.sparse", n) => legacy_tensor_class("torch.sparse", n)?,
        ("torch.cuda.sparse", n) => legacy_tensor_class("torch.cuda.sparse", n)?,
        _ => return None,
    })
}

/// Every allowlisted name, `module.name` (for tests against torch's own list).
pub fn allowed_globals() -> Vec<String> {
    let mut v: Vec<String> = [
        "collections.OrderedDict",
        "collections.Counter",
        "builtins.set",
        "builtins.complex",
        "builtins.bytearray",
        "_codecs.encode",
        "torch.Size",
        "torch.device",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in [
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor",
        "_rebuild_qtensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_wrapper_subclass",
    ] {
        v.push(format!("torch._utils.{f}"));
    }
    v.extend(STORAGES.iter().map(|s| format!("torch.{}", s.name)));
    v.extend(
        STORAGES[..12]
            .iter()
            .map(|s| format!("torch.cuda.{}", s.name)),
    );
    v.extend(DTYPES.iter().map(|(d, _, _)| format!("torch.{d}")));
    v.extend(QSCHEMES.iter().map(|q| format!("torch.{q}")));
    for m in ["torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse"] {
        for n in TENSOR_CLASS_NAMES {
            if !(m.ends_with("sparse") && n == "BoolTensor") {
                v.push(format!("{m}.{n}"));
            }
        }
    }
    v
}

/// Whether the global `module.name` is allowlisted.
pub fn is_allowed(module: &str, name: &str) -> bool {
    resolve_global(module, name).is_some()
}
