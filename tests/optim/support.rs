//! Shared by the optimizer/precision parity tests: moving [`Value`] trees (with tensors)
//! between Rust and the venv's Python PyTorch as JSON.
#![allow(dead_code)]

use lightning_core::value::{Dict, Key, Value};
use serde_json::Value as Json;
use tch::{Kind, Tensor};

/// Python helpers prepended to every script: `enc(obj)` / `dec(json)` mirror [`to_json`] /
/// [`from_json`].
pub const PY_PRELUDE: &str = r#"
import json, sys, torch
def enc(o):
    if isinstance(o, torch.Tensor):
        return {"t": str(o.dtype).replace("torch.", ""), "shape": list(o.shape), "data": o.detach().double().flatten().tolist()}
    if isinstance(o, tuple): return {"tuple": [enc(x) for x in o]}
    if isinstance(o, list): return [enc(x) for x in o]
    if isinstance(o, dict): return {"dict": [[k, enc(v)] for k, v in o.items()]}
    return o
def dec(o):
    if isinstance(o, list): return [dec(x) for x in o]
    if isinstance(o, dict):
        if "t" in o: return torch.tensor(o["data"], dtype=torch.float64).to(getattr(torch, o["t"])).reshape(o["shape"])
        if "tuple" in o: return tuple(dec(x) for x in o["tuple"])
        if "dict" in o: return {k: dec(v) for k, v in o["dict"]}
    return o
"#;

/// Encodes a value tree for [`PY_PRELUDE`]'s `dec`: [`encode`], then the library's serde impl.
pub fn to_json(v: &Value) -> Json {
    serde_json::to_value(encode(v)).expect("encoded tree serializes")
}

fn tagged(tag: &str, content: Value) -> Value {
    let mut o = Value::dict();
    o.insert(tag, content);
    o
}

/// The prelude's conventions as a value tree: tuples become `{"tuple": [..]}`, dicts
/// `{"dict": [[key, value], ..]}` (so int keys and types survive JSON) and tensors
/// `{"t": dtype, "shape", "data"}`.
fn encode(v: &Value) -> Value {
    v.rewrite(&mut |x| match x {
        Value::Tuple(items) => Some(tagged(
            "tuple",
            Value::List(items.iter().map(encode).collect()),
        )),
        Value::Dict(d) | Value::OrderedDict(d) => Some(tagged(
            "dict",
            Value::List(
                d.iter()
                    .map(|(k, x)| {
                        let k = match k {
                            Key::Str(s) => Value::from(s.as_str()),
                            Key::Int(i) => Value::Int(*i),
                        };
                        Value::List(vec![k, encode(x)])
                    })
                    .collect(),
            ),
        )),
        Value::Tensor(t) => Some(tensor_value(t)),
        _ => None,
    })
}

/// A tensor as `{"t": dtype, "shape", "data"}`.
pub fn tensor_json(t: &Tensor) -> Json {
    serde_json::to_value(tensor_value(t)).expect("tensor encoding serializes")
}

fn tensor_value(t: &Tensor) -> Value {
    let dtype = match t.kind() {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        k => panic!("test helper: unsupported dtype {k:?}"),
    };
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Double)
        .flatten(0, -1);
    let data: Vec<f64> = Vec::<f64>::try_from(&flat).expect("tensor to vec");
    let mut o = tagged("t", dtype.into());
    o.insert("shape", t.size());
    o.insert("data", data);
    o
}

/// Decodes `enc`'s output into a value tree: the library's serde impl, then the inverse of
/// [`encode`].
pub fn from_json(j: &Json) -> Value {
    decode(&serde_json::from_value(j.clone()).expect("JSON reads as a value tree"))
}

fn decode(v: &Value) -> Value {
    v.rewrite(&mut |x| {
        let o = x.as_dict()?;
        Some(if let Some(t) = x.get("t") {
            let kind = match t.as_str().expect("dtype") {
                "float32" => Kind::Float,
                "float64" => Kind::Double,
                "float16" => Kind::Half,
                "bfloat16" => Kind::BFloat16,
                "int64" => Kind::Int64,
                k => panic!("unsupported dtype {k}"),
            };
            let shape: Vec<i64> = x
                .get("shape")
                .and_then(Value::as_seq)
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dim"))
                .collect();
            let data: Vec<f64> = x
                .get("data")
                .and_then(Value::as_seq)
                .expect("data")
                .iter()
                .map(|d| d.as_f64().expect("f64"))
                .collect();
            Value::Tensor(Tensor::from_slice(&data).to_kind(kind).reshape(shape))
        } else if let Some(t) = x.get("tuple") {
            Value::Tuple(t.as_seq().expect("tuple").iter().map(decode).collect())
        } else if let Some(d) = x.get("dict") {
            let mut out = Dict::new();
            for kv in d.as_seq().expect("dict") {
                let kv = kv.as_seq().expect("[key, value]");
                let k = match &kv[0] {
                    Value::Str(s) => Key::Str(s.clone()),
                    Value::Int(i) => Key::Int(*i),
                    other => panic!("bad key {other:?}"),
                };
                out.insert(k, decode(&kv[1]));
            }
            Value::Dict(out)
        } else {
            panic!("unexpected object {o:?}")
        })
    })
}

/// Runs `PY_PRELUDE + script` with `input` as JSON in a temp file (path in `sys.argv[1]`);
/// the script prints one JSON document. `None` when the test is skipped (see
/// `lightning_testkit::python`: it says why, or panics when Python is required).
pub fn python_json(script: &str, input: &Json) -> Option<Json> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("in.json");
    std::fs::write(&path, input.to_string()).expect("write input");
    let full = format!("{PY_PRELUDE}\n{script}");
    match lightning_testkit::run_python(&full, &[path.to_str().expect("utf8 path")]) {
        None => None,
        Some(Err(e)) => panic!("{e}"),
        Some(Ok(out)) => Some(serde_json::from_str(out.trim()).expect("python printed JSON")),
    }
}

/// max |a-b| / max(max|b|, tiny): relative error over a whole tensor.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(Kind::Double);
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    diff / scale
}

/// Asserts two value trees have the same structure and keys, with tensors within `tol`
/// relative error and floats within `tol` relative.
pub fn assert_close(a: &Value, b: &Value, tol: f64, path: &str) {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => {
            let e = rel_err(x, y);
            assert!(e <= tol, "{path}: relative error {e:e} > {tol:e}");
        }
        (Value::Float(x), Value::Float(y)) => {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1e-300),
                "{path}: {x} vs {y}"
            );
        }
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => {
            assert!(
                (*x as f64 - y).abs() <= tol * y.abs().max(1e-300),
                "{path}: {x} vs {y}"
            );
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: length");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_close(p, q, tol, &format!("{path}[{i}]"));
            }
        }
        (Value::Dict(x), Value::Dict(y)) => {
            // Key order is not compared: torch's group dicts follow the caller's kwargs order.
            let mut kx: Vec<_> = x.keys().collect();
            let mut ky: Vec<_> = y.keys().collect();
            kx.sort();
            ky.sort();
            assert_eq!(kx, ky, "{path}: keys");
            for (k, v) in x {
                assert_close(v, &y[k], tol, &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}
