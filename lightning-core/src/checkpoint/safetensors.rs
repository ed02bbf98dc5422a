//! safetensors export and import: the checkpoint's `state_dict` as tensors, and
//! `hyper_parameters` (plus `hparams_name`, `epoch`, `global_step`, the Lightning version and
//! the original key order) as JSON strings in `__metadata__`.

use super::error::CheckpointError;
use super::schema::LIGHTNING_VERSION;
use crate::storage::files::write_atomically;
use crate::value::{Dict, Key, Value};
use ::safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    t: Tensor,
    len: usize,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.len == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: `t` is a contiguous CPU tensor of `len` bytes that outlives the borrow.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(self.t.data_ptr() as *const u8, self.len)
        })
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

const DTYPES: [(Kind, Dtype); 10] = [
    (Kind::Double, Dtype::F64),
    (Kind::Float, Dtype::F32),
    (Kind::Half, Dtype::F16),
    (Kind::BFloat16, Dtype::BF16),
    (Kind::Int64, Dtype::I64),
    (Kind::Int, Dtype::I32),
    (Kind::Int16, Dtype::I16),
    (Kind::Int8, Dtype::I8),
    (Kind::Uint8, Dtype::U8),
    (Kind::Bool, Dtype::BOOL),
];

/// A value tree as compact JSON for `__metadata__`, through [`Value`]'s serde impl: tensors
/// are refused (by the impl), and so are non-finite floats, which JSON has no form for (serde_json
/// would write `null`).
fn metadata_json(v: &Value) -> Result<String, String> {
    fn check_finite(v: &Value) -> Result<(), String> {
        match v {
            Value::Float(x) if !x.is_finite() => Err(format!("float {x} has no JSON form")),
            Value::List(items) | Value::Tuple(items) => items.iter().try_for_each(check_finite),
            Value::Dict(d) | Value::OrderedDict(d) => d.values().try_for_each(check_finite),
            _ => Ok(()),
        }
    }
    check_finite(v)?;
    serde_json::to_string(v).map_err(|e| e.to_string())
}

/// Writes the weights of `ckpt` (its `state_dict`, or the dict itself when it holds only
/// tensors) to a `.safetensors` file, atomically and durably, with hyperparameters in the
/// metadata.
pub fn export(path: &Path, ckpt: &Value) -> Result<(), CheckpointError> {
    let bad = |what: String| CheckpointError::Unsupported {
        path: path.to_owned(),
        what,
    };
    let sd = ckpt
        .get("state_dict")
        .or(Some(ckpt))
        .and_then(Value::as_dict)
        .ok_or_else(|| bad(format!("export needs a dict, found {}", ckpt.type_name())))?;
    let mut tensors = Vec::with_capacity(sd.len());
    for (k, v) in sd {
        let t = v.as_tensor().ok_or_else(|| {
            bad(format!(
                "state_dict.{k} is a {}, not a tensor",
                v.type_name()
            ))
        })?;
        let kind = t.kind();
        let dtype = DTYPES
            .iter()
            .find(|(k2, _)| *k2 == kind)
            .map(|(_, d)| *d)
            .ok_or_else(|| bad(format!("state_dict.{k}: dtype {kind:?}")))?;
        let host = t
            .f_to_device(Device::Cpu)
            .and_then(|h| h.f_contiguous())
            .map_err(|e| bad(format!("state_dict.{k}: {e}")))?;
        let len = host.numel() * kind.elt_size_in_bytes();
        tensors.push((
            k.to_string(),
            HostTensor {
                dtype,
                shape: t.size().iter().map(|&s| s as usize).collect(),
                t: host,
                len,
            },
        ));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    let order: Vec<String> = tensors.iter().map(|(k, _)| k.clone()).collect();
    meta.insert(
        "state_dict_keys".to_owned(),
        serde_json::to_string(&order).map_err(|e| bad(e.to_string()))?,
    );
    for key in [
        "hyper_parameters",
        "hparams_name",
        "epoch",
        "global_step",
        "pytorch-lightning_version",
    ] {
        if let (Some(v), true) = (ckpt.get(key), ckpt.get("state_dict").is_some()) {
            let j = metadata_json(v).map_err(|e| bad(format!("{key}: {e}")))?;
            meta.insert(key.to_owned(), j);
        }
    }
    let bytes = ::safetensors::tensor::serialize(tensors.iter().map(|(k, t)| (k, t)), &Some(meta))
        .map_err(|e| bad(e.to_string()))?;
    write_atomically(path, bytes.len() as u64, true, |w| {
        w.write_all(&bytes)?;
        Ok(bytes.len() as u64)
    })
}

/// Reads a `.safetensors` file into a checkpoint dict: `state_dict` (an OrderedDict in the
/// exported order), and `epoch`, `global_step`, `pytorch-lightning_version`, `hparams_name`,
/// `hyper_parameters` when the metadata has them.
pub fn import(path: &Path) -> Result<Value, CheckpointError> {
    let fmt = |msg: String| CheckpointError::Format {
        path: path.to_owned(),
        msg,
    };
    let file = crate::storage::files::open_for_read(path)?;
    // SAFETY: read-only mapping of a file we only read; it is dropped before returning.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
    let st =
        SafeTensors::deserialize(&map).map_err(|e| fmt(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&map).map_err(|e| fmt(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    if let Some(order) = meta
        .get("state_dict_keys")
        .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
    {
        let mut sorted = order.clone();
        sorted.sort();
        if sorted == names {
            names = order;
        }
    }
    let mut sd = Dict::new();
    for name in names {
        let view = st.tensor(&name).map_err(|e| fmt(format!("{name}: {e}")))?;
        let kind = DTYPES
            .iter()
            .find(|(_, d)| *d == view.dtype())
            .map(|(k, _)| *k)
            .ok_or_else(|| CheckpointError::Unsupported {
                path: path.to_owned(),
                what: format!("{name}: dtype {:?}", view.dtype()),
            })?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| fmt(format!("{name}: {e}")))?;
        sd.insert(Key::Str(name), Value::Tensor(t));
    }
    let json = |k: &str| -> Result<Option<Value>, CheckpointError> {
        match meta.get(k) {
            None => Ok(None),
            Some(s) => serde_json::from_str::<Value>(s)
                .map(Some)
                .map_err(|e| fmt(format!("metadata {k}: {e}"))),
        }
    };
    let mut ckpt = Value::dict();
    ckpt.insert("epoch", json("epoch")?.unwrap_or(Value::Int(0)));
    ckpt.insert("global_step", json("global_step")?.unwrap_or(Value::Int(0)));
    ckpt.insert(
        "pytorch-lightning_version",
        json("pytorch-lightning_version")?.unwrap_or(Value::from(LIGHTNING_VERSION)),
    );
    ckpt.insert("state_dict", Value::OrderedDict(sd));
    for k in ["hparams_name", "hyper_parameters"] {
        if let Some(v) = json(k)? {
            ckpt.insert(k, v);
        }
    }
    Ok(ckpt)
}
