//! `load_from_checkpoint` against Python Lightning 2.6's on the same files: which
//! hyperparameters win (`hparams_file` as `.yaml`, `.yml`, `.csv`, with and without overrides,
//! a bad extension), and where `map_location` puts a checkpoint whose storages are tagged
//! `cuda:1` (the file is written by Python with that tag; no GPU is needed).

use lightning_testkit::trainer_util;

use lightning_core::checkpoint_loader::{checkpoint_value, MapLocation};
use lightning_core::prelude::*;
use std::path::Path;
use std::time::Duration;
use trainer_util::{Tiny, TinyHp};

const LIMIT: Duration = Duration::from_secs(120);

/// Runs `script` after [`trainer_util::PY_TINY`]; `None` when Python is skipped.
fn python(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = lightning_testkit::run_python_within(
        &format!("{}\n{script}", trainer_util::PY_TINY),
        args,
        LIMIT,
    )?;
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    let last = out.lines().last().unwrap_or_default();
    Some(serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {out}")))
}

fn hp_json(hp: &TinyHp) -> serde_json::Value {
    serde_json::json!({
        "hidden": hp.hidden, "lr": hp.lr, "dropout": hp.dropout,
        "optimizer": hp.optimizer, "step_lr": hp.step_lr,
    })
}

/// Python's `Tiny.load_from_checkpoint(ckpt, hparams_file=f, **kwargs)` for each case:
/// `[file or "", kwargs]` -> the model's hparams, or `"error"`.
const HPARAMS: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
ckpt, cases = sys.argv[1], json.loads(sys.argv[2])
out = []
for f, kw in cases:
    try:
        m = Tiny.load_from_checkpoint(ckpt, hparams_file=f or None, **kw)
        out.append({k: m.hparams[k] for k in ("hidden", "lr", "dropout", "optimizer", "step_lr")})
    except Exception as e:
        out.append("error")
print(json.dumps(out))
"#;

#[test]
fn hparams_file_precedence_matches_pythons_load_from_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let saved = TinyHp {
        lr: 0.01,
        dropout: 0.3,
        optimizer: "sgd".into(),
        step_lr: 2,
        ..TinyHp::default()
    };
    let (src, _vs) = Tiny::new(saved.clone(), 1);
    let mut value = checkpoint_value(&src);
    value.insert("pytorch-lightning_version", "2.6.6");
    let ckpt = d.join("m.ckpt");
    lightning_core::checkpoint::save(&ckpt, &value).unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).unwrap();
        d.join(name).to_str().unwrap().to_owned()
    };
    let yaml = write("hparams.yaml", "lr: 0.2\n");
    let yml = write("h.yml", "lr: 0.25\noptimizer: sgd\ndropout: 0.0\n");
    let csv = write(
        "meta_tags.csv",
        "key,value\r\nlr,0.3\r\nstep_lr,3\r\noptimizer,'sgd'\r\ndropout,5e-2\r\n",
    );
    let txt = write("h.txt", "lr: 0.4\n");
    // (file, the dropout override as Python's kwarg and ours)
    let cases: Vec<(String, Option<f64>)> = vec![
        (String::new(), None),
        (yaml.clone(), None),
        (yml, None),
        (csv, None),
        (yaml, Some(0.1)),
        (String::new(), Some(0.1)),
        (txt, None),
    ];
    let ours: Vec<serde_json::Value> = cases
        .iter()
        .map(|(f, over)| {
            let mut l = Tiny::loader(&ckpt);
            if !f.is_empty() {
                l = l.hparams_file(f);
            }
            if let Some(x) = *over {
                l = l.hparams(move |h| h.dropout = x);
            }
            match l.load() {
                Ok(m) => hp_json(&m.hp),
                Err(_) => serde_json::json!("error"),
            }
        })
        .collect();
    // without Python the facts still hold: the file replaces the saved values
    assert_eq!(ours[0], hp_json(&saved));
    assert_eq!(
        ours[1]["dropout"], 0.2,
        "a key the file lacks is the default"
    );
    assert_eq!(ours[6], "error");
    let py_cases: Vec<serde_json::Value> = cases
        .iter()
        .map(|(f, over)| match over {
            Some(x) => serde_json::json!([f, {"dropout": x}]),
            None => serde_json::json!([f, {}]),
        })
        .collect();
    let Some(theirs) = python(
        HPARAMS,
        &[
            ckpt.to_str().unwrap(),
            &serde_json::to_string(&py_cases).unwrap(),
        ],
    ) else {
        return;
    };
    assert_eq!(serde_json::Value::Array(ours), theirs);
}

/// Saves a [`Tiny`] checkpoint whose storages are tagged `cuda:1` (torch's `location_tag`
/// patched; the tensors are CPU tensors), then loads it with each `map_location` case:
/// the parameters' device, or `"error"`.
const MAP: &str = r#"
import json, sys, warnings
import torch.serialization as ser
warnings.filterwarnings("ignore")
path, cases = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
m = Tiny()
real = ser.location_tag
ser.location_tag = lambda storage: "cuda:1"
torch.save({"state_dict": m.state_dict(), "pytorch-lightning_version": "2.6.6",
            "hyper_parameters": dict(m.hparams)}, path)
ser.location_tag = real
out = []
for c in cases:
    try:
        out.append(str(next(Tiny.load_from_checkpoint(path, map_location=c).parameters()).device))
    except Exception:
        out.append("error")
print(json.dumps(out))
"#;

fn ours_map(path: &Path, case: &serde_json::Value) -> serde_json::Value {
    let ml = match case {
        serde_json::Value::Null => MapLocation::Default,
        serde_json::Value::String(s) => MapLocation::from(s.as_str()),
        serde_json::Value::Object(o) => MapLocation::map(
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())),
        ),
        other => panic!("case {other}"),
    };
    match Tiny::loader(path).map_location(ml).load() {
        Ok(m) => serde_json::json!(lightning_core::checkpoint_loader::location_of(
            m.fc1.ws.device()
        )),
        Err(_) => serde_json::json!("error"),
    }
}

#[test]
fn map_location_matches_pythons_on_a_cuda_tagged_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cuda1.ckpt");
    let cases = serde_json::json!([
        null,
        "cpu",
        {"cuda:1": "cpu"},
        {"cuda": "cpu"},
        {"cuda:1": "cuda:0"},
        "cuda:0",
        {"cuda:1": "cpu", "cpu": "cuda:0"}
    ]);
    let Some(theirs) = python(
        MAP,
        &[
            path.to_str().unwrap(),
            &serde_json::to_string(&cases).unwrap(),
        ],
    ) else {
        return;
    };
    let ours: Vec<serde_json::Value> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ours_map(&path, c))
        .collect();
    assert_eq!(
        serde_json::Value::Array(ours.clone()),
        theirs,
        "cases {cases}"
    );
    if !tch::Cuda::is_available() {
        // on a CPU machine: the default and the explicit mappings to the CPU load, the rest fail
        let want = ["cpu", "cpu", "cpu", "error", "error", "error", "cpu"];
        assert_eq!(ours, want.map(serde_json::Value::from).to_vec());
    }
}
