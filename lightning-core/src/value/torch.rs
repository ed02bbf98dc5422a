//! What tch has no type for, kept as the file says it: Python ints beyond 64 bits
//! ([`BigInt`]), dense tensors of dtypes tch has no `Kind` for ([`RawTensor`]), and torch's
//! dtype names ([`DTYPES`], [`dtype_name`]). The other torch objects that
//! `torch.load(weights_only=True)` rebuilds (sparse, quantized, meta and nested tensors,
//! layouts, qschemes, classes) are [`TorchObject`](super::TorchObject)s, next to the tree
//! that holds them.

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

/// The [`DTYPES`] entry of the dtype torch names `name` (`float32`): its static name, bytes per
/// element and tch `Kind`.
pub fn dtype_entry(name: &str) -> Option<&'static (&'static str, usize, Option<Kind>)> {
    DTYPES.iter().find(|(d, _, _)| *d == name)
}

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
    use crate::value::{TorchObject, Value};

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
