//! The parts of a checkpoint's value tree that are neither plain Python values nor dense tch
//! tensors: Python ints beyond 64 bits ([`BigInt`]), dense tensors of dtypes tch has no
//! `Kind` for ([`RawTensor`]), and the other torch objects that `torch.load(weights_only=True)`
//! rebuilds (sparse, quantized, meta and nested tensors, layouts, qschemes, classes), kept as
//! the file says them ([`TorchObject`]) so that writing them back gives the same objects.

use crate::value::Value;
use std::fmt;
use tch::{Kind, Tensor};

/// A Python `int` that does not fit 64 bits: its minimal two's-complement little-endian bytes
/// (the operand of pickle's `LONG1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BigInt {
    bytes: Vec<u8>,
}

impl BigInt {
    /// From two's-complement little-endian bytes (trailing sign-extension bytes are dropped).
    pub fn from_le_bytes(bytes: &[u8]) -> BigInt {
        let mut n = bytes.len();
        while n > 1 {
            let (last, prev) = (bytes[n - 1], bytes[n - 2] & 0x80);
            if (last == 0 && prev == 0) || (last == 0xFF && prev != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        BigInt {
            bytes: bytes[..n].to_vec(),
        }
    }

    /// The minimal two's-complement little-endian bytes.
    pub fn le_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value, when it fits an `i128`.
    pub fn to_i128(&self) -> Option<i128> {
        if self.bytes.len() > 16 {
            return None;
        }
        let neg = self.bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut a = [if neg { 0xFF } else { 0 }; 16];
        a[..self.bytes.len()].copy_from_slice(&self.bytes);
        Some(i128::from_le_bytes(a))
    }

    fn is_negative(&self) -> bool {
        self.bytes.last().is_some_and(|b| b & 0x80 != 0)
    }
}

impl fmt::Display for BigInt {
    /// Decimal, as Python prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Magnitude as little-endian base-256 digits.
        let mut mag = self.bytes.clone();
        let neg = self.is_negative();
        if neg {
            // Two's complement negation: invert and add one.
            let mut carry = 1u16;
            for b in &mut mag {
                let v = u16::from(!*b) + carry;
                *b = v as u8;
                carry = v >> 8;
            }
        }
        let mut digits = Vec::new();
        while mag.iter().any(|&b| b != 0) {
            let mut rem = 0u32;
            for b in mag.iter_mut().rev() {
                let cur = (rem << 8) | u32::from(*b);
                *b = (cur / 10) as u8;
                rem = cur % 10;
            }
            digits.push(b'0' + rem as u8);
        }
        if digits.is_empty() {
            digits.push(b'0');
        }
        if neg {
            f.write_str("-")?;
        }
        digits.reverse();
        f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }
}

/// A dense tensor whose dtype tch has no `Kind` for (`uint16`, `uint32`, `uint64`,
/// `float8_e8m0fnu`, `float4_e2m1fn_x2`, `bits*`, sub-byte ints): the bytes of its storage and
/// its view over them, as `torch._utils._rebuild_tensor_v3` describes it.
#[derive(Debug)]
pub struct RawTensor {
    /// torch's dtype name without `torch.` (`"uint16"`).
    pub dtype: String,
    /// Bytes per element.
    pub itemsize: usize,
    /// The whole storage, as a 1-d `Uint8` tensor.
    pub storage: Tensor,
    /// Offset of the view, in elements.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
    /// `requires_grad` as saved.
    pub requires_grad: bool,
}

impl Clone for RawTensor {
    fn clone(&self) -> Self {
        RawTensor {
            dtype: self.dtype.clone(),
            itemsize: self.itemsize,
            storage: self.storage.shallow_clone(),
            offset: self.offset,
            size: self.size.clone(),
            stride: self.stride.clone(),
            requires_grad: self.requires_grad,
        }
    }
}

impl RawTensor {
    /// The elements' bytes in row-major order (`numel * itemsize` bytes).
    pub fn element_bytes(&self) -> Result<Vec<Vec<u8>>, tch::TchError> {
        let numel: i64 = self.size.iter().product();
        if numel == 0 {
            return Ok(vec![]);
        }
        let w = self.itemsize as i64;
        // A byte view: each element becomes a trailing dimension of `itemsize` bytes.
        let mut size = self.size.clone();
        size.push(w);
        let mut stride: Vec<i64> = self.stride.iter().map(|s| s * w).collect();
        stride.push(1);
        let v = self
            .storage
            .f_as_strided(&size, &stride, self.offset * w)?
            .f_contiguous()?
            .f_view([numel, w])?;
        let flat = Vec::<u8>::try_from(&v.f_view([-1])?)?;
        Ok(flat.chunks(self.itemsize).map(<[u8]>::to_vec).collect())
    }

    /// The elements as f64, when the dtype has a numeric reading here (unsigned ints and
    /// `float8_e8m0fnu`); `None` for bit-packed and sub-byte dtypes.
    pub fn to_f64(&self) -> Result<Option<Vec<f64>>, tch::TchError> {
        let read: fn(&[u8]) -> f64 = match self.dtype.as_str() {
            "uint16" | "uint32" | "uint64" => |b| {
                let mut a = [0u8; 8];
                a[..b.len()].copy_from_slice(b);
                u64::from_le_bytes(a) as f64
            },
            "float8_e8m0fnu" => |b| {
                if b[0] == 0xFF {
                    f64::NAN
                } else {
                    2f64.powi(i32::from(b[0]) - 127)
                }
            },
            _ => return Ok(None),
        };
        Ok(Some(
            self.element_bytes()?.iter().map(|b| read(b)).collect(),
        ))
    }
}

impl PartialEq for RawTensor {
    /// Same dtype, shape and element bytes (strides and storage may differ).
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype
            && self.size == other.size
            && self.requires_grad == other.requires_grad
            && matches!((self.element_bytes(), other.element_bytes()), (Ok(a), Ok(b)) if a == b)
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
                    && crate::value::tensors_equal(&a.int_repr, &b.int_repr)
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

/// Bytes per element of every dtype torch's safe loader names, with the tch `Kind` where tch
/// has one.
pub const DTYPES: [(&str, usize, Option<Kind>); 46] = [
    ("float64", 8, Some(Kind::Double)),
    ("float32", 4, Some(Kind::Float)),
    ("float16", 2, Some(Kind::Half)),
    ("bfloat16", 2, Some(Kind::BFloat16)),
    ("int64", 8, Some(Kind::Int64)),
    ("int32", 4, Some(Kind::Int)),
    ("int16", 2, Some(Kind::Int16)),
    ("int8", 1, Some(Kind::Int8)),
    ("uint8", 1, Some(Kind::Uint8)),
    ("bool", 1, Some(Kind::Bool)),
    ("complex32", 4, Some(Kind::ComplexHalf)),
    ("complex64", 8, Some(Kind::ComplexFloat)),
    ("complex128", 16, Some(Kind::ComplexDouble)),
    ("float8_e4m3fn", 1, Some(Kind::Float8e4m3fn)),
    ("float8_e5m2", 1, Some(Kind::Float8e5m2)),
    ("float8_e4m3fnuz", 1, Some(Kind::Float8e4m3fnuz)),
    ("float8_e5m2fnuz", 1, Some(Kind::Float8e5m2fnuz)),
    ("qint8", 1, None),
    ("quint8", 1, None),
    ("qint32", 4, None),
    ("quint4x2", 1, None),
    ("quint2x4", 1, None),
    ("uint16", 2, None),
    ("uint32", 4, None),
    ("uint64", 8, None),
    ("float8_e8m0fnu", 1, None),
    ("float4_e2m1fn_x2", 1, None),
    ("bits1x8", 1, None),
    ("bits2x4", 1, None),
    ("bits4x2", 1, None),
    ("bits8", 1, None),
    ("bits16", 2, None),
    ("uint1", 1, None),
    ("uint2", 1, None),
    ("uint3", 1, None),
    ("uint4", 1, None),
    ("uint5", 1, None),
    ("uint6", 1, None),
    ("uint7", 1, None),
    ("int1", 1, None),
    ("int2", 1, None),
    ("int3", 1, None),
    ("int4", 1, None),
    ("int5", 1, None),
    ("int6", 1, None),
    ("int7", 1, None),
];

/// torch's name for a tch `Kind` (`float32`, `complex64`, `float8_e4m3fn`).
pub fn dtype_name(k: Kind) -> &'static str {
    DTYPES.iter().find(|(_, _, kind)| *kind == Some(k)).map_or(
        match k {
            Kind::QInt8 => "qint8",
            Kind::QUInt8 => "quint8",
            Kind::QInt32 => "qint32",
            _ => "unknown",
        },
        |(n, _, _)| n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigint_prints_decimal_and_keeps_minimal_bytes() {
        let two70 = BigInt::from_le_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0]);
        assert_eq!(two70.le_bytes().len(), 9);
        assert_eq!(two70.to_string(), "1180591620717411303424");
        let neg = BigInt::from_le_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF]);
        assert_eq!(neg.to_string(), "-1180591620717411303424");
        assert_eq!(neg.to_i128(), Some(-(1i128 << 70)));
        assert_eq!(BigInt::from_le_bytes(&[0]).to_string(), "0");
    }

    fn raw_u16() -> RawTensor {
        RawTensor {
            dtype: "uint16".into(),
            itemsize: 2,
            storage: Tensor::from_slice(&[1u8, 0, 2, 0, 3, 0, 0xFF, 0xFF]),
            offset: 1,
            size: vec![2],
            stride: vec![2],
            requires_grad: false,
        }
    }

    #[test]
    fn load_state_dict_names_the_dtype_tch_lacks() {
        let mut sd = crate::value::Dict::new();
        let raw = Value::Torch(Box::new(TorchObject::Raw(raw_u16())));
        sd.insert("w".into(), raw);
        let Err(e) = crate::traverse::state_dict_from_value(&Value::OrderedDict(sd)) else {
            panic!("a uint16 tensor cannot load");
        };
        assert!(
            e.to_string()
                .contains("state_dict[\"w\"]: a uint16 tensor [2]"),
            "{e}"
        );
    }

    #[test]
    fn raw_tensor_reads_strided_uint16_elements() {
        let storage = Tensor::from_slice(&[1u8, 0, 2, 0, 3, 0, 0xFF, 0xFF]);
        let r = RawTensor {
            dtype: "uint16".into(),
            itemsize: 2,
            storage,
            offset: 1,
            size: vec![2],
            stride: vec![2],
            requires_grad: false,
        };
        assert_eq!(r.to_f64().unwrap(), Some(vec![2.0, 65535.0]));
    }
}
