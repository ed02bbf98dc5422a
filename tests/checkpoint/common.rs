//! Shared by the checkpoint interop tests: one structural description of a checkpoint tree,
//! computed the same way in Rust (from a `Value`) and in Python (from `torch.load`).
#![allow(dead_code)]

use lightning_core::torch_value::dtype_name;
use lightning_core::value::TorchObject;
use lightning_core::{Key, Value};
use serde_json::{json, Value as J};
use tch::{Kind, Tensor};

/// Python: `desc(obj)` gives the same JSON as [`describe`] does for the loaded `Value`.
pub const PY_DESCRIBE: &str = r#"
import torch, json, math, collections, sys, struct
def _f(v):
    return struct.unpack("<q", struct.pack("<d", v))[0] if math.isfinite(v) else str(v)
def _dt(d):
    return str(d).replace("torch.", "")
def desc(x):
    if isinstance(x, torch.Tensor):
        if x.is_quantized:
            q = {"quantized": _dt(x.dtype), "qscheme": _dt(x.qscheme()), "int_repr": desc(x.int_repr())}
            if x.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                q["params"] = [{"float": _f(x.q_scale())}, {"int": x.q_zero_point()}]
            else:
                q["params"] = [desc(x.q_per_channel_scales()), desc(x.q_per_channel_zero_points()),
                               {"int": x.q_per_channel_axis()}]
            return q
        if x.is_sparse:
            return {"sparse": "sparse_coo", "shape": list(x.shape),
                    "parts": [desc(x._indices()), desc(x._values())]}
        if x.layout == torch.sparse_csr:
            return {"sparse": "sparse_csr", "shape": list(x.shape),
                    "parts": [desc(x.crow_indices()), desc(x.col_indices()), desc(x.values())]}
        if x.is_meta:
            return {"meta": _dt(x.dtype), "shape": list(x.shape), "stride": list(x.stride())}
        if x.is_nested:
            return {"nested": [desc(t) for t in x.unbind()]}
        y = x.detach().cpu()
        if y.is_complex():
            y = torch.view_as_real(y)
        return {"tensor": _dt(x.dtype), "shape": list(x.shape),
                "values": [_f(v) for v in y.double().flatten().tolist()]}
    if isinstance(x, torch.Size):
        return {"Size": list(x)}
    if isinstance(x, collections.Counter):
        return {"Counter": [[k, desc(v)] for k, v in x.items()]}
    if isinstance(x, (set, frozenset)):
        return {"set": sorted(json.dumps(desc(v), sort_keys=True, separators=(",", ":")) for v in x)}
    if isinstance(x, complex):
        return {"complex": [_f(x.real), _f(x.imag)]}
    if isinstance(x, bytes):
        return {"bytes": list(x)}
    if isinstance(x, bytearray):
        return {"bytearray": list(x)}
    if isinstance(x, torch.layout):
        return {"layout": str(x)}
    if isinstance(x, torch.qscheme):
        return {"global": str(x)}
    if isinstance(x, torch.dtype):
        return {"global": str(x)}
    if isinstance(x, torch.device):
        return {"device": str(x)}
    if isinstance(x, collections.OrderedDict):
        return {"OrderedDict": [[k, desc(v)] for k, v in x.items()]}
    if isinstance(x, dict):
        return {"dict": [[k, desc(v)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {"tuple": [desc(v) for v in x]}
    if isinstance(x, list):
        return {"list": [desc(v) for v in x]}
    if isinstance(x, bool):
        return {"bool": x}
    if isinstance(x, int):
        return {"int": x} if -2**63 <= x < 2**63 else {"bigint": str(x)}
    if isinstance(x, float):
        return {"float": _f(x)}
    if isinstance(x, str):
        return {"str": x}
    if x is None:
        return None
    raise TypeError(f"unexpected {type(x)}")
"#;

/// Floats as their f64 bit patterns (exact through JSON), non-finite ones as names.
fn f(x: f64) -> J {
    if x.is_finite() {
        json!(x.to_bits() as i64)
    } else if x.is_nan() {
        json!("nan")
    } else if x > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

fn key(k: &Key) -> J {
    match k {
        Key::Str(s) => json!(s),
        Key::Int(i) => json!(i),
    }
}

/// JSON text with sorted keys and no spaces (Python's `json.dumps(sort_keys=True,
/// separators=(",", ":"))`).
fn canon(j: &J) -> String {
    match j {
        J::Object(m) => {
            let mut kv: Vec<_> = m.iter().collect();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            let items: Vec<String> = kv
                .iter()
                .map(|(k, v)| format!("{}:{}", J::String((*k).clone()), canon(v)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        J::Array(a) => format!("[{}]", a.iter().map(canon).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn dense(t: &Tensor) -> J {
    let vals = if t.is_complex() {
        t.view_as_real()
    } else {
        t.shallow_clone()
    };
    let flat = vals.to_kind(Kind::Double).contiguous().view([-1]);
    let vals = Vec::<f64>::try_from(&flat).unwrap_or_default();
    json!({
        "tensor": dtype_name(t.kind()),
        "shape": t.size(),
        "values": vals.into_iter().map(f).collect::<Vec<_>>(),
    })
}

fn torch_object(o: &TorchObject) -> J {
    let all = |v: &[Value]| v.iter().map(describe).collect::<Vec<_>>();
    match o {
        TorchObject::Raw(r) => {
            let vals = r.to_f64().unwrap().expect("a dtype with a numeric reading");
            json!({"tensor": r.dtype, "shape": r.size, "values": vals.into_iter().map(f).collect::<Vec<_>>()})
        }
        TorchObject::Sparse { layout, data } => {
            let n = if layout == "sparse_coo" { 2 } else { 3 };
            let shape = match data.get(n) {
                Some(Value::Size(s)) => s.clone(),
                other => panic!("sparse size is {other:?}"),
            };
            json!({"sparse": layout, "shape": shape, "parts": all(&data[..n])})
        }
        TorchObject::Quantized(q) => json!({
            "quantized": q.dtype, "qscheme": q.qscheme, "int_repr": dense(&q.int_repr),
            "params": all(&q.params),
        }),
        TorchObject::Meta {
            dtype,
            size,
            stride,
            ..
        } => {
            json!({"meta": dtype, "shape": size, "stride": stride})
        }
        TorchObject::Nested { parts } => {
            let t = |i: usize| parts[i].as_tensor().expect("nested part").shallow_clone();
            let (buf, sizes, strides, offs) = (t(0), t(1), t(2), t(3));
            let rows = (0..sizes.size()[0])
                .map(|i| {
                    let size = Vec::<i64>::try_from(&sizes.get(i)).unwrap();
                    let stride = Vec::<i64>::try_from(&strides.get(i)).unwrap();
                    let off = offs.int64_value(&[i]);
                    dense(&buf.as_strided(size.as_slice(), stride.as_slice(), off))
                })
                .collect::<Vec<_>>();
            json!({ "nested": rows })
        }
        TorchObject::Layout(l) => json!({ "layout": format!("torch.{l}") }),
        TorchObject::Global(g) => json!({ "global": g }),
        TorchObject::Device(d) => json!({ "device": d }),
    }
}

/// The description of a value tree (see [`PY_DESCRIBE`]).
pub fn describe(v: &Value) -> J {
    match v {
        Value::BigInt(i) => json!({ "bigint": i.to_string() }),
        Value::Complex(re, im) => json!({ "complex": [f(*re), f(*im)] }),
        Value::Bytes(b) => json!({ "bytes": b }),
        Value::ByteArray(b) => json!({ "bytearray": b }),
        Value::Size(s) => json!({ "Size": s }),
        Value::Counter(d) => json!({
            "Counter": d.iter().map(|(k, x)| json!([key(k), describe(x)])).collect::<Vec<_>>()
        }),
        Value::Set(items) => {
            let mut v: Vec<String> = items.iter().map(|x| canon(&describe(x))).collect();
            v.sort();
            v.dedup();
            json!({ "set": v })
        }
        Value::Torch(o) => torch_object(o),
        Value::None => J::Null,
        Value::Bool(b) => json!({ "bool": b }),
        Value::Int(i) => json!({ "int": i }),
        Value::Float(x) => json!({ "float": f(*x) }),
        Value::Str(s) => json!({ "str": s }),
        Value::List(items) => json!({ "list": items.iter().map(describe).collect::<Vec<_>>() }),
        Value::Tuple(items) => json!({ "tuple": items.iter().map(describe).collect::<Vec<_>>() }),
        Value::Dict(d) => {
            json!({ "dict": d.iter().map(|(k, x)| json!([key(k), describe(x)])).collect::<Vec<_>>() })
        }
        Value::OrderedDict(d) => json!({
            "OrderedDict": d.iter().map(|(k, x)| json!([key(k), describe(x)])).collect::<Vec<_>>()
        }),
        Value::Tensor(t) => dense(t),
    }
}

/// Runs a Python script (after [`PY_DESCRIBE`]); `None` when the test is skipped (see
/// `lightning_testkit::python`: it says why, or panics when Python is required).
pub fn python(script: &str, args: &[&str]) -> Option<String> {
    let full = format!("{PY_DESCRIBE}\n{script}");
    match lightning_testkit::run_python(&full, args) {
        None => None,
        Some(Ok(out)) => Some(out),
        Some(Err(e)) => panic!("{e}"),
    }
}

/// A Lightning module and a short training run (Adam, StepLR, ModelCheckpoint with top-k and
/// `save_last`) on random data in `sys.argv[1]`.
pub const PY_LIT: &str = r#"
import lightning as L
from torch import nn
class Lit(L.LightningModule):
    def __init__(self, in_dim=4, hidden=8, lr=0.01, name="mlp", layers=(8, 8)):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("counter", torch.arange(3, dtype=torch.int64))
    def forward(self, x):
        return self.net(x)
    def training_step(self, b, i):
        x, y = b
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss
    def validation_step(self, b, i):
        x, y = b
        self.log("val_loss", nn.functional.mse_loss(self(x), y))
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)]

def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = torch.randn(32, 1, generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=8)

def trainer(out, epochs):
    cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=out, monitor="val_loss", save_top_k=2, save_last=True)
    return L.Trainer(max_epochs=epochs, default_root_dir=out, callbacks=[cb], logger=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     deterministic=True), cb
"#;

/// The first place where two descriptions differ, as a readable path (None when equal).
pub fn first_diff(a: &J, b: &J, at: &str) -> Option<String> {
    match (a, b) {
        (J::Object(x), J::Object(y)) if x.len() == y.len() => x
            .iter()
            .find_map(|(k, v)| first_diff(v, y.get(k).unwrap_or(&J::Null), &format!("{at}/{k}"))),
        (J::Array(x), J::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_diff(v, w, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} vs {b}")),
    }
}

/// Asserts two descriptions are equal, reporting the first difference.
pub fn assert_same(ours: &J, theirs: &J) {
    if let Some(d) = first_diff(ours, theirs, "") {
        panic!("Rust and Python disagree at {d}");
    }
}
