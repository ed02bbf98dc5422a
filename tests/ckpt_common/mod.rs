//! Shared by the checkpoint interop tests: one structural description of a checkpoint tree,
//! computed the same way in Rust (from a `Value`) and in Python (from `torch.load`).
#![allow(dead_code)]

use lightning_core::{Key, Value};
use serde_json::{json, Value as J};
use tch::Kind;

/// Python: `desc(obj)` gives the same JSON as [`describe`] does for the loaded `Value`.
pub const PY_DESCRIBE: &str = r#"
import torch, json, math, collections, sys, struct
def _f(v):
    return struct.unpack("<q", struct.pack("<d", v))[0] if math.isfinite(v) else str(v)
def desc(x):
    if isinstance(x, torch.Tensor):
        return {"tensor": str(x.dtype).replace("torch.", ""), "shape": list(x.shape),
                "values": [_f(v) for v in x.detach().cpu().double().flatten().tolist()]}
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
        return {"int": x}
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

/// torch's dtype name.
pub fn dtype(k: Kind) -> &'static str {
    match k {
        Kind::Double => "float64",
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "other",
    }
}

/// The description of a value tree (see [`PY_DESCRIBE`]).
pub fn describe(v: &Value) -> J {
    match v {
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
        Value::Tensor(t) => {
            let flat = t.to_kind(Kind::Double).contiguous().view([-1]);
            let vals = Vec::<f64>::try_from(&flat).unwrap_or_default();
            json!({
                "tensor": dtype(t.kind()),
                "shape": t.size(),
                "values": vals.into_iter().map(f).collect::<Vec<_>>(),
            })
        }
    }
}

/// Runs a Python script (after [`PY_DESCRIBE`]); `None` when the test is skipped (see
/// `lightning_rs::python`: it says why, or panics when Python is required).
pub fn python(script: &str, args: &[&str]) -> Option<String> {
    let full = format!("{PY_DESCRIBE}\n{script}");
    match lightning_rs::run_python(&full, args) {
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
