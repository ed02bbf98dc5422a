//! Runs the built `lightning-ckpt` binary on files written by the library.

use lightning_core::checkpoint::{self, dcp};
use lightning_core::{Dict, Key, Value};
use std::path::Path;
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lightning-ckpt"))
        .args(args)
        .output()
        .expect("start lightning-ckpt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `script` with the venv's Python and the file path as `sys.argv[1]`; its stdout.
fn py_stdout(py: &Path, script: &str, file: &Path) -> String {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn sample(w_scale: f64) -> Value {
    let mut sd = Dict::new();
    let w = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]) * w_scale;
    sd.insert("net.0.weight".into(), w.into());
    sd.insert(
        "net.0.bias".into(),
        Tensor::from_slice(&[1i64, 2])
            .to_kind(Kind::BFloat16)
            .into(),
    );
    let mut st = Dict::new();
    let mut s0 = Dict::new();
    s0.insert("exp_avg".into(), Tensor::from_slice(&[0.5f64, 0.25]).into());
    st.insert(Key::Int(0), Value::Dict(s0));
    let mut opt = Value::dict();
    opt.insert("state", Value::Dict(st));
    let mut hp = Value::dict();
    hp.insert("hidden", 16i64);
    hp.insert("lr", 0.001);
    let mut top = Value::dict();
    top.insert("epoch", 3i64);
    top.insert("global_step", 42i64);
    top.insert("pytorch-lightning_version", "2.6.6");
    top.insert("state_dict", Value::OrderedDict(sd));
    top.insert("optimizer_states", Value::List(vec![opt]));
    top.insert("hparams_name", "kwargs");
    top.insert("hyper_parameters", hp);
    top
}

fn save(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    checkpoint::save(&p, v).unwrap();
    p.display().to_string()
}

#[test]
fn inspect_json_lists_every_tensor_with_torch_dtypes_and_sums() {
    let dir = tempfile::tempdir().unwrap();
    let a = save(dir.path(), "a.ckpt", &sample(1.0));
    let o = run(&["inspect", &a, "--json", "--values"]);
    assert!(o.status.success(), "{o:?}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["schema"], 1);
    assert_eq!(j["format"], "ckpt");
    assert_eq!(j["epoch"], 3);
    assert_eq!(j["global_step"], 42);
    assert_eq!(j["hyper_parameters"]["hidden"], 16);
    let paths: Vec<&str> = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "state_dict.net.0.weight",
            "state_dict.net.0.bias",
            "optimizer_states.0.state.0.exp_avg"
        ]
    );
    let w = &j["tensors"][0];
    assert_eq!(w["dtype"], "float32");
    assert_eq!(w["shape"], serde_json::json!([2, 3]));
    assert_eq!(w["sum"], 15.0);
    assert_eq!(
        w["values"],
        serde_json::json!([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    );
    assert_eq!(j["tensors"][1]["dtype"], "bfloat16");

    let o = run(&["inspect", &a]);
    let text = stdout(&o);
    assert!(
        text.contains("state_dict.net.0.weight  float32  [2,3]  sum=15"),
        "{text}"
    );
}

#[test]
fn convert_round_trips_through_safetensors_and_diff_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = save(dir.path(), "a.ckpt", &sample(1.0));
    let b = save(dir.path(), "b.ckpt", &sample(1.5));
    let st = dir.path().join("a.safetensors").display().to_string();
    let back = dir.path().join("back.ckpt").display().to_string();
    assert!(run(&["convert", &a, &st]).status.success());
    assert!(run(&["convert", &st, &back]).status.success());
    let j: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["inspect", &st, "--json"]))).unwrap();
    assert_eq!(j["format"], "safetensors");
    assert_eq!(j["hyper_parameters"]["lr"], 0.001);
    assert_eq!(j["tensors"].as_array().unwrap().len(), 2);

    let same = run(&["diff", &a, &a]);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    let d = run(&["diff", &a, &b]);
    assert_eq!(d.status.code(), Some(1));
    assert!(
        stdout(&d).contains("state_dict.net.0.weight: max abs diff 2.5e0"),
        "{}",
        stdout(&d)
    );
    // `--ignore` leaves a subtree out (and only that subtree: not `net.0.weightx`).
    let d = run(&["diff", &a, &b, "--ignore", "state_dict.net.0.weight"]);
    assert_eq!(d.status.code(), Some(0), "{}", stdout(&d));
    let d = run(&["diff", &a, &b, "--ignore", "state_dict.net.0.w"]);
    assert_eq!(d.status.code(), Some(1), "{}", stdout(&d));
    let d = run(&["diff", &a, &b, "--ignore", "state_dict"]);
    assert_eq!(d.status.code(), Some(0), "{}", stdout(&d));
    // The weights-only round trip lost the optimizer state: keys only in `a`.
    let d = run(&["diff", &a, &back]);
    assert_eq!(d.status.code(), Some(1));
    assert!(stdout(&d).contains("only in"), "{}", stdout(&d));
    assert!(!stdout(&d).contains("net.0.weight"), "{}", stdout(&d));
}

#[test]
fn bad_files_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.ckpt");
    std::fs::write(&p, [7u8; 300]).unwrap();
    let o = run(&["inspect", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("junk.ckpt") && err.contains("not a zip archive"),
        "{err}"
    );
}

#[test]
fn inspect_lists_every_tensor_of_a_python_written_checkpoint() {
    // Skipped (saying why) or failed (LIGHTNING_RS_REQUIRE_PYTHON) without the venv.
    let Some(py) = lightning_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("py.ckpt");
    let script = r#"
import sys, json, torch
from torch import nn
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
opt = torch.optim.Adam(net.parameters(), lr=0.01)
net(torch.randn(5, 3)).sum().backward()
opt.step()
ck = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.6",
      "state_dict": net.state_dict(), "optimizer_states": [opt.state_dict()],
      "hyper_parameters": {"hidden": 4}}
torch.save(ck, sys.argv[1])
rows = []
def walk(x, path):
    if isinstance(x, torch.Tensor):
        rows.append([path, str(x.dtype).replace("torch.", ""), list(x.shape), x.double().sum().item()])
    elif isinstance(x, dict):
        for k, v in x.items():
            walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            walk(v, f"{path}.{i}" if path else str(i))
walk(ck, "")
print(json.dumps(rows))
"#;
    let expected: Vec<(String, String, Vec<i64>, f64)> =
        serde_json::from_str(py_stdout(&py, script, &p).trim()).unwrap();
    let o = run(&["inspect", p.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{o:?}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let got = j["tensors"].as_array().unwrap();
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        expected.len(),
        4 + 4 * 3,
        "4 weights, Adam step/exp_avg/exp_avg_sq for 4 params"
    );
    for (g, (path, dtype, shape, sum)) in got.iter().zip(&expected) {
        assert_eq!(g["path"], path.as_str());
        assert_eq!(g["dtype"], dtype.as_str());
        assert_eq!(g["shape"], serde_json::json!(shape));
        assert!(
            (g["sum"].as_f64().unwrap() - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{path}"
        );
    }
}

#[test]
fn inspect_diff_and_convert_handle_dtypes_and_layouts_tch_lacks() {
    let Some(py) = lightning_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.ckpt");
    let script = r#"
import sys, json, torch, warnings
warnings.filterwarnings("ignore")
ck = {"u16": torch.tensor([1, 2, 65535]).to(torch.uint16),
      "c": torch.tensor([1 + 2j, 3 - 1j]),
      "f8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn),
      "coo": torch.tensor([[0, 1.5], [2, 0]]).to_sparse(),
      "q": torch.quantize_per_tensor(torch.tensor([1.0, 2.0]), 0.5, 1, torch.quint8),
      "m": torch.empty(2, 3, device="meta")}
torch.save(ck, sys.argv[1])
q = ck["q"]
print(json.dumps({
    "u16": [float(ck["u16"].double().sum())],
    "c": [ck["c"].sum().real.item(), ck["c"].sum().imag.item()],
    "f8": [float(ck["f8"].double().sum())],
    "coo": [ck["coo"]._nnz(), float(ck["coo"]._values().sum())],
    "q": [q.q_scale(), q.q_zero_point(), float(q.int_repr().double().sum())],
}))
"#;
    let want: serde_json::Value = serde_json::from_str(py_stdout(&py, script, &p).trim()).unwrap();
    let o = run(&["inspect", p.to_str().unwrap(), "--json", "--values"]);
    assert!(o.status.success(), "{o:?}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = j["tensors"].as_array().unwrap();
    let row = |path: &str| rows.iter().find(|r| r["path"] == path).unwrap().clone();
    assert_eq!(rows.len(), 6);
    assert_eq!(row("u16")["dtype"], "uint16");
    assert_eq!(row("u16")["sum"], want["u16"][0]);
    assert_eq!(row("u16")["values"], serde_json::json!([1.0, 2.0, 65535.0]));
    assert_eq!(row("c")["dtype"], "complex64");
    assert_eq!(row("c")["sum"], want["c"]);
    assert_eq!(row("f8")["dtype"], "float8_e4m3fn");
    assert_eq!(row("f8")["sum"], want["f8"][0]);
    assert_eq!(row("coo")["layout"], "sparse_coo");
    assert_eq!(row("coo")["nnz"], want["coo"][0]);
    assert_eq!(row("coo")["sum"], want["coo"][1]);
    assert_eq!(row("coo")["shape"], serde_json::json!([2, 2]));
    assert_eq!(row("q")["qscheme"], "per_tensor_affine");
    assert_eq!(row("q")["scale"], want["q"][0]);
    assert_eq!(row("q")["zero_point"], want["q"][1]);
    assert_eq!(row("q")["sum"], want["q"][2]);
    assert_eq!(row("m")["device"], "meta");
    assert!(row("m").get("sum").is_none() && row("m").get("values").is_none());

    let back = dir.path().join("back.ckpt");
    let o = run(&["convert", p.to_str().unwrap(), back.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let o = run(&["diff", p.to_str().unwrap(), back.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let mut changed = checkpoint::load(&back).unwrap();
    changed.insert(
        "c",
        Tensor::from_slice(&[1.0f32, 2.0]).to_kind(Kind::ComplexFloat),
    );
    let changed = save(dir.path(), "changed.ckpt", &changed);
    let o = run(&["diff", p.to_str().unwrap(), &changed]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("c: max abs diff"), "{}", stdout(&o));
}

#[test]
fn inspect_diff_and_consolidate_take_sharded_checkpoint_directories() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = sample(1.0);
    let mut group = Dict::new();
    group.insert("lr".into(), 0.001.into());
    group.insert("params".into(), Value::List(vec![0i64.into(), 1i64.into()]));
    if let Some(Value::List(opts)) = v.get_mut("optimizer_states") {
        opts[0].insert("param_groups", Value::List(vec![Value::Dict(group)]));
    }
    let single = save(dir.path(), "single.ckpt", &v);
    // Lightning's sharded layout: the DCP part (optimizer state by parameter name) + meta.pt.
    let names = vec![vec!["net.0.weight".to_owned(), "net.0.bias".to_owned()]];
    let (state, meta) = dcp::lightning::split(&v, &names).unwrap();
    let sharded = dir.path().join("sharded.ckpt");
    dcp::save(&sharded, &state).unwrap();
    checkpoint::save(&sharded.join(dcp::lightning::META_FILE), &meta).unwrap();
    let sharded = sharded.display().to_string();

    let j: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["inspect", &sharded, "--json"]))).unwrap();
    assert_eq!(j["format"], "sharded");
    assert_eq!(j["epoch"], 3);
    assert_eq!(j["tensors"].as_array().unwrap().len(), 3, "{j}");
    // Read back by index, each group also names its parameters (torch's `param_names`).
    let names = "optimizer_states.0.param_groups.0.param_names";
    let d = run(&["diff", &single, &sharded]);
    assert_eq!(d.status.code(), Some(1), "{}", stdout(&d));
    assert!(stdout(&d).contains(&format!("{names}.1")), "{}", stdout(&d));
    let same = run(&["diff", &single, &sharded, "--ignore", names]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    let c = run(&["consolidate", &sharded]);
    assert!(c.status.success(), "{c:?}");
    let out = format!("{sharded}.consolidated");
    let same = run(&["diff", &single, &out, "--ignore", names]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    // A directory that is not a checkpoint is an error naming it.
    let bad = run(&["consolidate", dir.path().to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
}
