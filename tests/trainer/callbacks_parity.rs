//! Parity with Python Lightning 2.6: checkpoint file names (`_format_checkpoint_name` over a
//! dict of tensors), the callbacks' state keys, files and scores are computed by Lightning
//! itself in the venv and compared with ours, case by case. (Python's format-spec
//! mini-language is checked against the venv in lightning-core's `pyfmt` unit tests.)

use lightning_core::callbacks::{
    AfterSave, Callback, EarlyStopping, MetricValue, Metrics, Mode, ModelCheckpoint, RunInfo,
    TrainerContext, TrainerHandle,
};
use lightning_core::Value;
use serde_json::{json, Value as Json};
use std::time::Duration;

/// Runs `script` with one JSON argument; `None` when the test is skipped (see
/// `lightning_testkit::python`: it says why, or panics when Python is required).
fn python(script: &str, arg: &Json) -> Option<Vec<Json>> {
    match lightning_testkit::run_python(script, &[&arg.to_string()]) {
        None => None,
        Some(Err(e)) => panic!("{e}"),
        Some(Ok(out)) => Some(serde_json::from_str(out.trim()).expect("python printed JSON")),
    }
}

fn metric_json(m: &Metrics) -> Json {
    Json::Array(
        m.iter()
            .map(|(k, v)| match v {
                MetricValue::Int(i) => json!([k, "int", i.to_string()]),
                MetricValue::Float(x) => json!([k, "float", format!("{x:e}")]),
            })
            .collect(),
    )
}

/// `Ok(text)` or `Err(())` as a JSON value comparable with Python's answers.
fn outcome(r: Result<String, String>) -> Json {
    match r {
        Ok(s) => json!({ "ok": s }),
        Err(_) => json!({ "err": true }),
    }
}

/// (template, metrics, prefix, auto_insert_metric_name).
type NameCase = (
    Option<&'static str>,
    Vec<(&'static str, MetricValue)>,
    Option<&'static str>,
    bool,
);

#[test]
fn checkpoint_names_match_lightning() {
    use MetricValue::{Float as F, Int as I};
    let f32v = |x: f32| F(f64::from(x));
    let cases: Vec<NameCase> = vec![
        (None, vec![("epoch", I(3)), ("step", I(2))], None, true),
        (
            Some(""),
            vec![("epoch", I(3)), ("step", I(2))],
            Some("test"),
            true,
        ),
        (Some("ckpt"), vec![], Some("test"), true),
        (
            Some("{epoch:03d}-{acc}"),
            vec![("epoch", I(3)), ("acc", F(0.03))],
            None,
            true,
        ),
        (
            Some("{epoch:03d}-{epoch_test:03d}"),
            vec![("epoch", I(3)), ("epoch_test", I(3))],
            None,
            true,
        ),
        (
            Some("{epoch},{acc:.5f}"),
            vec![("epoch", I(3)), ("acc", F(0.03))],
            None,
            true,
        ),
        (
            Some("{epoch}_{val/loss:.5f}"),
            vec![("epoch", I(4)), ("val/loss", F(0.03))],
            None,
            true,
        ),
        (
            Some("epoch={epoch:03d}-val_acc={val/acc}"),
            vec![("epoch", I(3)), ("val/acc", F(0.03))],
            None,
            false,
        ),
        (
            Some("mAP@0.50={val/mAP@0.50:.4f}"),
            vec![("val/mAP@0.50", F(0.2))],
            None,
            false,
        ),
        (Some("{missing:d}"), vec![], None, true),
        (
            Some("{epoch:02d}-{val_loss:.2f}"),
            vec![("epoch", I(2)), ("val_loss", f32v(0.123_456))],
            None,
            true,
        ),
        (
            Some("checkpoint_{epoch:02d}-{acc:02.0f}"),
            vec![("epoch", I(1)), ("acc", F(1.12))],
            None,
            true,
        ),
        (
            Some("{epoch}-{step}-{val_loss}"),
            vec![("epoch", I(0)), ("step", I(10)), ("val_loss", f32v(0.1))],
            None,
            true,
        ),
        (
            Some("{val_loss}"),
            vec![("val_loss", F(f64::NAN))],
            None,
            true,
        ),
        (
            Some("{val_loss:.3f}"),
            vec![("val_loss", F(f64::INFINITY))],
            None,
            true,
        ),
        (
            Some("{val_loss:.3e}"),
            vec![("val_loss", F(1.5e-7))],
            None,
            true,
        ),
        (
            Some("{val_loss:g}-{x:.3}"),
            vec![("val_loss", F(1e-5)), ("x", F(123.0))],
            None,
            true,
        ),
        (Some("{big}"), vec![("big", F(1e16))], None, true),
        (
            Some("{epoch}{{literal}}"),
            vec![("epoch", I(1))],
            None,
            true,
        ),
        (Some("{epoch!r}"), vec![("epoch", I(1))], None, true),
        (
            Some("{epoch:>6}|{acc:<8.2%}"),
            vec![("epoch", I(7)), ("acc", F(0.5))],
            None,
            true,
        ),
        (Some("{epoch:d}"), vec![("epoch", F(2.5))], None, true),
        (Some("{epoch"), vec![("epoch", I(1))], None, true),
        (Some("a}b"), vec![], None, true),
        (Some("{0}"), vec![], None, true),
    ];
    let mut ours = vec![];
    let mut args = vec![];
    for (tpl, ms, prefix, auto) in &cases {
        let m: Metrics = ms.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let cb = ModelCheckpoint::builder()
            .auto_insert_metric_name(*auto)
            .build()
            .unwrap();
        // Python's `_format_checkpoint_name` is the name before `.ckpt` is added.
        let name = cb
            .format_checkpoint_name(&m, *tpl, None, *prefix)
            .map(|p| {
                let p = p.to_string_lossy().into_owned();
                p.strip_suffix(".ckpt").expect("a .ckpt name").to_owned()
            })
            .map_err(|e| e.to_string());
        ours.push(outcome(name));
        args.push(json!({ "tpl": tpl, "m": metric_json(&m), "prefix": prefix, "auto": auto }));
    }
    let script = r#"
import json, sys, torch
from lightning.pytorch.callbacks import ModelCheckpoint
cb = ModelCheckpoint()
out = []
for c in json.loads(sys.argv[1]):
    m = {k: torch.tensor(int(v)) if t == "int" else torch.tensor(float(v), dtype=torch.float64)
         for k, t, v in c["m"]}
    try:
        out.append({"ok": cb._format_checkpoint_name(c["tpl"], m, prefix=c["prefix"],
                                                      auto_insert_metric_name=c["auto"])})
    except Exception:
        out.append({"err": True})
print(json.dumps(out))
"#;
    let Some(theirs) = python(script, &Json::Array(args)) else {
        return;
    };
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(o, t, "case {i}: {:?}", cases[i]);
    }
    assert_eq!(ours.len(), theirs.len());
}

#[test]
fn state_keys_match_lightning() {
    let intervals = [
        None,
        Some(Duration::from_secs(60)),
        Some(Duration::from_micros(86_400_000_007)),
    ];
    let mut ours = vec![];
    let mut args = vec![];
    for monitor in [None, Some("val_loss"), Some("it's")] {
        for mode in [Mode::Min, Mode::Max] {
            for (steps, epochs, iv) in [
                (None, None, None),
                (Some(5), None, None),
                (None, Some(3), None),
                (None, None, Some(1)),
                (None, None, Some(2)),
            ] {
                let mut b = ModelCheckpoint::builder().mode(mode);
                if let Some(m) = monitor {
                    b = b.monitor(m);
                }
                if let Some(s) = steps {
                    b = b.every_n_train_steps(s);
                }
                if let Some(e) = epochs {
                    b = b.every_n_epochs(e);
                }
                let iv: Option<Duration> = iv.and_then(|i: usize| intervals[i]);
                if let Some(d) = iv {
                    b = b.train_time_interval(d);
                }
                ours.push(json!(b.build().unwrap().state_key()));
                args.push(json!({
                    "monitor": monitor, "mode": mode.as_str(), "steps": steps, "epochs": epochs,
                    "iv": iv.map(|d| d.as_micros() as u64),
                }));
            }
        }
        if let Some(m) = monitor {
            for mode in [Mode::Min, Mode::Max] {
                let es = EarlyStopping::builder(m).mode(mode).build().unwrap();
                ours.push(json!(es.state_key()));
                args.push(json!({ "es": m, "mode": mode.as_str() }));
            }
        }
    }
    let script = r#"
import json, sys, datetime
from lightning.pytorch.callbacks import ModelCheckpoint, EarlyStopping
out = []
for c in json.loads(sys.argv[1]):
    if "es" in c:
        out.append(EarlyStopping(monitor=c["es"], mode=c["mode"]).state_key)
        continue
    iv = None if c["iv"] is None else datetime.timedelta(microseconds=c["iv"])
    out.append(ModelCheckpoint(monitor=c["monitor"], mode=c["mode"],
        every_n_train_steps=c["steps"], every_n_epochs=c["epochs"], train_time_interval=iv).state_key)
print(json.dumps(out))
"#;
    let Some(theirs) = python(script, &Json::Array(args)) else {
        return;
    };
    assert_eq!(Json::Array(ours), Json::Array(theirs));
}

/// A trainer stand-in whose saves are real checkpoint files holding the caller's state.
struct FileTrainer {
    metrics: indexmap::IndexMap<String, f64>,
    root: std::path::PathBuf,
    last_batch: bool,
    num_val_batches: usize,
    io: FileIo,
}

/// [`FileTrainer`]'s handle: writes the files, carries out after-save actions at once.
struct FileIo {
    epoch: i64,
    step: i64,
    stop: bool,
}

impl TrainerHandle for FileIo {
    fn save_checkpoint(
        &mut self,
        path: &std::path::Path,
        _weights_only: bool,
        caller: &dyn Callback,
    ) -> lightning_core::Result<()> {
        let mut cbs = Value::dict();
        cbs.insert(caller.state_key(), caller.state_dict());
        let mut ckpt = Value::dict();
        ckpt.insert("epoch", self.epoch);
        ckpt.insert("global_step", self.step);
        ckpt.insert("pytorch-lightning_version", "2.6.6");
        ckpt.insert("state_dict", Value::OrderedDict(Default::default()));
        ckpt.insert("callbacks", cbs);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        lightning_core::checkpoint::save(path, &ckpt)
            .map_err(|e| lightning_core::Error::Msg(e.to_string()))
    }
    fn when_durable(&mut self, action: AfterSave) -> lightning_core::Result<()> {
        Ok(action.apply(&lightning_core::storage::DefaultCheckpointIO)?)
    }
    fn request_stop(&mut self) {
        self.stop = true;
    }
}

impl FileTrainer {
    fn new(root: &std::path::Path, num_val_batches: usize) -> Self {
        FileTrainer {
            metrics: Default::default(),
            root: root.to_owned(),
            last_batch: false,
            num_val_batches,
            io: FileIo {
                epoch: 0,
                step: 0,
                stop: false,
            },
        }
    }

    fn ctx(&mut self) -> TrainerContext<'_> {
        let run = RunInfo {
            current_epoch: self.io.epoch,
            global_step: self.io.step,
            is_last_batch: self.last_batch,
            num_val_batches: self.num_val_batches,
            ..RunInfo::new(&self.metrics, &self.root)
        };
        TrainerContext::new(run, &mut self.io)
    }
}

/// The saved `ModelCheckpoint` state crosses over both ways: Python Lightning restores ours
/// from our `last.ckpt` (found under its own state key), and we restore one Lightning wrote.
#[test]
fn model_checkpoint_state_crosses_over_with_lightning() {
    let dir = tempfile::tempdir().unwrap();
    let build = || {
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .save_top_k(2)
            .save_last(true)
            .build()
            .unwrap()
    };
    let mut cb = build();
    let mut t = FileTrainer::new(dir.path(), 0);
    cb.setup(&mut t.ctx()).unwrap();
    cb.on_fit_start(&mut t.ctx()).unwrap();
    for loss in [0.5f32, 0.25, 0.75, 0.125] {
        t.io.step += 10;
        t.metrics.insert("val_loss".into(), f64::from(loss));
        cb.on_validation_end(&mut t.ctx()).unwrap();
        cb.on_train_epoch_end(&mut t.ctx()).unwrap();
        t.io.epoch += 1;
    }
    let d = cb.dirpath().unwrap().to_string_lossy().into_owned();
    let last = cb.last_model_path().unwrap().to_string_lossy().into_owned();
    let s = |p: Option<&std::path::Path>| p.map(|p| p.to_string_lossy().into_owned());
    let ours = json!({
        "best_model_path": s(cb.best_model_path()),
        "best_model_score": cb.best_model_score(),
        "best_k_models": cb.best_k_models().iter()
            .map(|(p, v)| (p.to_string_lossy().into_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "kth_best_model_path": s(cb.kth_best_model_path()),
        "kth_value": cb.kth_value(),
        "last_model_path": s(cb.last_model_path()),
    });
    let script = r#"
import json, sys, torch
from lightning.pytorch.callbacks import ModelCheckpoint
a = json.loads(sys.argv[1])
cb = ModelCheckpoint(dirpath=a["dir"], monitor="val_loss", save_top_k=2, save_last=True)
ck = torch.load(a["last"], weights_only=True)
cb.load_state_dict(ck["callbacks"][cb.state_key])
f = lambda t: None if t is None else float(t)
theirs = {"best_model_path": cb.best_model_path, "best_model_score": f(cb.best_model_score),
    "best_k_models": {k: f(v) for k, v in cb.best_k_models.items()},
    "kth_best_model_path": cb.kth_best_model_path, "kth_value": f(cb.kth_value),
    "last_model_path": cb.last_model_path}
# the other way: a state as a Lightning run leaves it (float32 tensors), saved with torch.save
cb2 = ModelCheckpoint(dirpath=a["dir"], monitor="val_loss", save_top_k=2, save_last=True)
p1, p2 = a["dir"] + "/epoch=1-step=20.ckpt", a["dir"] + "/epoch=3-step=40.ckpt"
cb2.best_k_models = {p1: torch.tensor(0.25), p2: torch.tensor(0.125)}
cb2.kth_best_model_path, cb2.kth_value = p1, torch.tensor(0.25)
cb2.best_model_path, cb2.best_model_score = p2, torch.tensor(0.125)
cb2.current_score, cb2.last_model_path = torch.tensor(0.125), a["dir"] + "/last.ckpt"
torch.save({"callbacks": {cb2.state_key: cb2.state_dict()}}, a["out"])
print(json.dumps([theirs]))
"#;
    let out = dir.path().join("from_python.ckpt");
    let arg = json!({ "dir": d, "last": last, "out": out.to_string_lossy() });
    let Some(theirs) = python(script, &arg) else {
        return;
    };
    assert_eq!(theirs[0], ours);

    let ckpt = lightning_core::checkpoint::load(&out).unwrap();
    let mut cb2 = build();
    let state = ckpt
        .get("callbacks")
        .and_then(|c| c.get(&cb2.state_key()))
        .expect("state under our key");
    cb2.load_state_dict(state).unwrap();
    assert_eq!(cb2.best_model_score(), Some(0.125));
    assert_eq!(cb2.best_model_path(), cb.best_model_path());
    assert_eq!(cb2.best_k_models(), cb.best_k_models());
    assert_eq!(
        (cb2.kth_best_model_path(), cb2.kth_value()),
        (cb.kth_best_model_path(), 0.25)
    );
    assert_eq!(cb2.last_model_path(), cb.last_model_path());
}

/// Lightning's loop order for one run: per epoch, `steps` batches (`on_train_batch_end` after
/// each optimizer step), then one validation logging `values[epoch]` as `metric`
/// (`on_validation_end`), then `on_train_epoch_end`; `on_fit_end` at the end.
fn drive(
    cb: &mut ModelCheckpoint,
    root: &std::path::Path,
    steps: i64,
    metric: &str,
    values: &[f32],
) {
    let mut t = FileTrainer::new(root, 2);
    cb.setup(&mut t.ctx()).unwrap();
    cb.on_fit_start(&mut t.ctx()).unwrap();
    for v in values {
        for b in 0..steps {
            t.io.step += 1;
            t.last_batch = b + 1 == steps;
            cb.on_train_batch_end(&mut t.ctx()).unwrap();
        }
        t.metrics.insert(metric.to_owned(), f64::from(*v));
        cb.on_validation_end(&mut t.ctx()).unwrap();
        cb.on_train_epoch_end(&mut t.ctx()).unwrap();
        t.io.epoch += 1;
    }
    cb.on_fit_end(&mut t.ctx()).unwrap();
}

/// The same runs in Python Lightning (a real `Trainer` on a model that logs the given values)
/// and in ours leave the same files, links, best/last paths and top-k scores.
#[test]
fn model_checkpoint_runs_leave_the_same_files_as_lightning() {
    let nan = f32::NAN;
    // (python kwargs, builder, steps per epoch, metric, values per epoch)
    type Scenario = (
        Json,
        fn(std::path::PathBuf) -> lightning_core::callbacks::ModelCheckpointBuilder,
        i64,
        &'static str,
        Vec<f32>,
    );
    let scenarios: Vec<Scenario> = vec![
        (
            json!({"monitor": "val_loss", "save_top_k": 2, "save_last": true}),
            |d| {
                ModelCheckpoint::builder()
                    .dirpath(d)
                    .monitor("val_loss")
                    .save_top_k(2)
                    .save_last(true)
            },
            2,
            "val_loss",
            vec![0.5, 0.3, 0.6, 0.2, nan],
        ),
        (
            json!({"monitor": "val_acc", "mode": "max", "save_last": "link", "filename": "{epoch:02d}-{val_acc:.3f}"}),
            |d| {
                ModelCheckpoint::builder()
                    .dirpath(d)
                    .monitor("val_acc")
                    .mode(Mode::Max)
                    .save_last(lightning_core::callbacks::SaveLast::Link)
                    .filename("{epoch:02d}-{val_acc:.3f}")
            },
            1,
            "val_acc",
            vec![0.25, 0.75, 0.5, 0.875],
        ),
        (
            json!({"every_n_train_steps": 3, "save_top_k": -1, "filename": "{step}", "save_last": true}),
            |d| {
                ModelCheckpoint::builder()
                    .dirpath(d)
                    .every_n_train_steps(3)
                    .save_top_k(-1)
                    .filename("{step}")
                    .save_last(true)
            },
            4,
            "val_loss",
            vec![1.0, 1.0],
        ),
        (
            json!({"monitor": "val_loss", "every_n_train_steps": 2, "save_top_k": -1}),
            |d| {
                ModelCheckpoint::builder()
                    .dirpath(d)
                    .monitor("val_loss")
                    .every_n_train_steps(2)
                    .save_top_k(-1)
            },
            4,
            "val_loss",
            vec![0.5, 0.4, 0.3],
        ),
        (
            json!({"monitor": "val_loss", "save_top_k": -1, "filename": "model"}),
            |d| {
                ModelCheckpoint::builder()
                    .dirpath(d)
                    .monitor("val_loss")
                    .save_top_k(-1)
                    .filename("model")
            },
            1,
            "val_loss",
            vec![0.5, 0.25, 0.125],
        ),
        (
            json!({"save_top_k": 0, "save_last": true}),
            |d| {
                ModelCheckpoint::builder()
                    .dirpath(d)
                    .save_top_k(0)
                    .save_last(true)
            },
            2,
            "val_loss",
            vec![1.0, 1.0],
        ),
    ];
    let root = tempfile::tempdir().unwrap();
    let mut ours = vec![];
    let mut args = vec![];
    for (i, (kwargs, build, steps, metric, values)) in scenarios.iter().enumerate() {
        let ours_dir = root.path().join(format!("ours{i}"));
        let theirs_dir = root.path().join(format!("theirs{i}"));
        let mut cb = build(ours_dir.clone()).build().unwrap();
        drive(&mut cb, root.path(), *steps, metric, values);
        ours.push(summary(&cb, &ours_dir));
        args.push(json!({
            "kwargs": kwargs, "dir": theirs_dir.to_string_lossy(), "steps": steps,
            "metric": metric, "values": values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        }));
    }
    let script = r#"
import json, os, sys, warnings, logging
warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

class M(BoringModel):
    def __init__(self, metric, values):
        super().__init__()
        self.metric, self.values = metric, values
    def validation_step(self, batch, batch_idx):
        self.log(self.metric, torch.tensor(self.values[self.current_epoch]))
        return super().validation_step(batch, batch_idx)

def rel(d, p):
    return os.path.relpath(p, d) if p else ""

out = []
for c in json.loads(sys.argv[1]):
    d = os.path.realpath(c["dir"])
    cb = ModelCheckpoint(dirpath=d, **c["kwargs"])
    values = [float(v) for v in c["values"]]
    t = Trainer(max_epochs=len(values), limit_train_batches=c["steps"], limit_val_batches=2,
                num_sanity_val_steps=0, callbacks=[cb], logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=d, accelerator="cpu")
    t.fit(M(c["metric"], values))
    files = {}
    for base, _, names in os.walk(d):
        for n in names:
            p = os.path.join(base, n)
            files[rel(d, p)] = os.readlink(p) if os.path.islink(p) else "file"
    out.append({"files": files, "best": rel(d, cb.best_model_path), "last": rel(d, cb.last_model_path),
        "kth": rel(d, cb.kth_best_model_path),
        "top_k": {rel(d, k): repr(float(v)) for k, v in cb.best_k_models.items()},
        "best_score": None if cb.best_model_score is None else repr(float(cb.best_model_score))})
print(json.dumps(out))
"#;
    let Some(mut theirs) = python(script, &Json::Array(args)) else {
        return;
    };
    for t in &mut theirs {
        for v in t["top_k"].as_object_mut().expect("a dict").values_mut() {
            *v = float_key_of_repr(v);
        }
        t["best_score"] = float_key_of_repr(&t["best_score"]);
    }
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(o, t, "scenario {i}: {}", scenarios[i].0);
    }
}

/// A score as comparable text: Rust's `{:?}`, which round-trips the f64 exactly.
fn float_key(x: f64) -> String {
    format!("{x:?}")
}

/// Python's `repr(float)` (`1e-05`, `inf`, `nan`) as the [`float_key`] of the same f64;
/// anything else (`null`) unchanged.
fn float_key_of_repr(j: &Json) -> Json {
    match j.as_str() {
        Some(r) => json!(float_key(r.parse().expect("a Python float repr"))),
        None => j.clone(),
    }
}

/// Files (`"file"` or a link's target), best/last/kth paths relative to `dir`, top-k scores.
fn summary(cb: &ModelCheckpoint, dir: &std::path::Path) -> Json {
    let d = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let rel = |p: Option<&std::path::Path>| {
        p.map_or(String::new(), |p| {
            p.strip_prefix(&d)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        })
    };
    let mut files = serde_json::Map::new();
    fn walk(
        base: &std::path::Path,
        dir: &std::path::Path,
        out: &mut serde_json::Map<String, Json>,
    ) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                walk(base, &p, out);
            } else {
                let what = if ty.is_symlink() {
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                } else {
                    "file".into()
                };
                out.insert(
                    p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                    json!(what),
                );
            }
        }
    }
    walk(&d, &d, &mut files);
    json!({
        "files": files,
        "best": rel(cb.best_model_path()),
        "last": rel(cb.last_model_path()),
        "kth": rel(cb.kth_best_model_path()),
        "top_k": cb.best_k_models().iter()
            .map(|(p, v)| (rel(Some(p)), json!(float_key(*v)))).collect::<serde_json::Map<_, _>>(),
        "best_score": cb.best_model_score().map(float_key),
    })
}

/// `EarlyStopping` stops at the same epoch with the same counters as Lightning's, for
/// patience, min_delta, max mode, thresholds and a non-finite value.
#[test]
fn early_stopping_matches_lightning() {
    type Case = (
        Json,
        fn() -> lightning_core::callbacks::EarlyStoppingBuilder,
        Vec<f32>,
    );
    let cases: Vec<Case> = vec![
        (
            json!({"patience": 2}),
            || EarlyStopping::builder("m").patience(2),
            vec![1.0, 0.5, 0.6, 0.7, 0.1, 0.1],
        ),
        (
            json!({"patience": 1, "min_delta": 0.1}),
            || EarlyStopping::builder("m").patience(1).min_delta(0.1),
            vec![1.0, 0.95, 0.5, 0.45],
        ),
        (
            json!({"mode": "max", "patience": 3}),
            || EarlyStopping::builder("m").mode(Mode::Max).patience(3),
            vec![0.1, 0.2, 0.2, 0.15, 0.3, 0.3, 0.3, 0.3],
        ),
        (
            json!({"stopping_threshold": 0.2}),
            || EarlyStopping::builder("m").stopping_threshold(0.2),
            vec![1.0, 0.5, 0.1, 0.05],
        ),
        (
            json!({"divergence_threshold": 2.0}),
            || EarlyStopping::builder("m").divergence_threshold(2.0),
            vec![1.0, 1.5, 2.5, 0.5],
        ),
        (
            json!({}),
            || EarlyStopping::builder("m"),
            vec![1.0, f32::NAN, 0.5],
        ),
    ];
    let root = tempfile::tempdir().unwrap();
    let mut ours = vec![];
    let mut args = vec![];
    for (kwargs, build, values) in &cases {
        let mut es = build().build().unwrap();
        let mut t = FileTrainer::new(root.path(), 2);
        let mut epochs = 0;
        for v in values {
            t.io.step += 1;
            t.metrics.insert("m".into(), f64::from(*v));
            es.on_validation_end(&mut t.ctx()).unwrap();
            es.on_train_epoch_end(&mut t.ctx()).unwrap();
            epochs += 1;
            t.io.epoch += 1;
            if t.io.stop {
                break;
            }
        }
        ours.push(json!({
            "epochs": epochs, "stopped_epoch": es.stopped_epoch(), "wait_count": es.wait_count(),
            "best": float_key(es.best_score()),
            "reason": es.stopping_reason() as i64,
        }));
        args.push(json!({ "kwargs": kwargs, "values": values.iter().map(|v| v.to_string()).collect::<Vec<_>>() }));
    }
    let script = r#"
import json, sys, warnings, logging
warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel

class M(BoringModel):
    def __init__(self, values):
        super().__init__()
        self.values = values
    def validation_step(self, batch, batch_idx):
        self.log("m", torch.tensor(self.values[self.current_epoch]))
        return super().validation_step(batch, batch_idx)

out = []
for c in json.loads(sys.argv[1]):
    values = [float(v) for v in c["values"]]
    es = EarlyStopping(monitor="m", **c["kwargs"])
    t = Trainer(max_epochs=len(values), limit_train_batches=1, limit_val_batches=2,
                num_sanity_val_steps=0, callbacks=[es], logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    t.fit(M(values))
    out.append({"epochs": t.current_epoch, "stopped_epoch": es.stopped_epoch,
                "wait_count": es.wait_count, "best": repr(float(es.best_score)),
                "reason": es.stopping_reason.value})
print(json.dumps(out))
"#;
    let Some(mut theirs) = python(script, &Json::Array(args)) else {
        return;
    };
    for t in &mut theirs {
        t["best"] = float_key_of_repr(&t["best"]);
    }
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(o, t, "case {i}: {}", cases[i].0);
    }
}
