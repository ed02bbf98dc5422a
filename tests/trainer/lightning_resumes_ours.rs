//! Python Lightning 2.6 resumes from a checkpoint written by OUR `Trainer` (its
//! `ModelCheckpoint`, at an epoch end): `Trainer.fit(model, ckpt_path=ours)` starts with the
//! weights, Adam state and StepLR state our file holds, at our epoch and global step, and
//! trains one more epoch. (The other direction is tests/trainer/resume_from_lightning.rs.)

use lightning_testkit::trainer_util;

use lightning_core::callbacks::ModelCheckpoint;
use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use serde_json::Value as Json;
use trainer_util::{data, Tiny, TinyHp};

/// Epochs we train before Python resumes.
const N: i64 = 2;
/// 64 rows -> 48 training rows in batches of 8, in both programs.
const STEPS_PER_EPOCH: i64 = 6;

/// Run after [`trainer_util::PY_TINY`] (the twin of `Tiny`). `Check` compares, at
/// `on_train_start` (after Lightning restored the checkpoint), the live optimizer and
/// scheduler with our file as torch reads it, and records them; the last line printed is a
/// JSON summary.
const RESUME: &str = r#"
import sys, json, torch, warnings, lightning.pytorch as pl
warnings.filterwarnings("ignore")
from torch.utils.data import DataLoader, TensorDataset
ours, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ck = torch.load(ours, weights_only=True)
def flat(t):
    return t.double().flatten().tolist()
seen = {}
class Check(pl.Callback):
    def on_train_start(self, trainer, module):
        opt = trainer.optimizers[0]
        sched = trainer.lr_scheduler_configs[0].scheduler
        saved = ck["optimizer_states"][0]
        params = list(module.parameters())
        assert sorted(saved["state"]) == list(range(len(params))), saved["state"].keys()
        state = []
        for i, p in enumerate(params):
            live, file = opt.state[p], saved["state"][i]
            for k in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(live[k], file[k]), (i, k, live[k], file[k])
            assert float(live["step"]) == float(file["step"]), (i, live["step"], file["step"])
            state.append({"step": float(live["step"]), "exp_avg": flat(live["exp_avg"]),
                          "exp_avg_sq": flat(live["exp_avg_sq"])})
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == [g["lr"] for g in saved["param_groups"]], (lrs, saved["param_groups"])
        s, f = sched.state_dict(), ck["lr_schedulers"][0]
        assert s["last_epoch"] == f["last_epoch"] and s["_last_lr"] == f["_last_lr"], (s, f)
        sd = module.state_dict()
        assert sorted(sd) == sorted(ck["state_dict"]), (sorted(sd), sorted(ck["state_dict"]))
        assert all(torch.equal(v, ck["state_dict"][k]) for k, v in sd.items())
        seen.update(state=state, lrs=lrs, last_epoch=s["last_epoch"], last_lr=s["_last_lr"],
                    epoch=trainer.current_epoch, step=trainer.global_step,
                    hparams=dict(module.hparams))
class Count(pl.Callback):
    batches = 0
    def on_train_batch_end(self, *a):
        Count.batches += 1
torch.manual_seed(0)
x = torch.randn(48, 4); y = torch.randint(0, 3, (48,))
t = pl.Trainer(max_epochs=n + 1, logger=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=root, callbacks=[pl.callbacks.ModelCheckpoint(dirpath=root), Check(), Count()])
t.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=8), ckpt_path=ours)
opt = t.optimizers[0]
print(json.dumps({
    "at_start": seen, "batches": Count.batches,
    "end": {"epoch": t.current_epoch, "step": t.global_step,
            "last_epoch": t.lr_scheduler_configs[0].scheduler.last_epoch,
            "lr": opt.param_groups[0]["lr"],
            "adam_steps": [float(opt.state[p]["step"]) for p in t.lightning_module.parameters()]},
}))
"#;

fn f64s(v: &Value) -> Vec<f64> {
    let t = v.as_tensor().expect("a tensor");
    Vec::<f64>::try_from(&t.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap()
}

fn json_f64s(j: &Json) -> Vec<f64> {
    j.as_array()
        .unwrap_or_else(|| panic!("not a list: {j}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A scalar that torch may store as a tensor (Adam's `step`) or as a number.
fn scalar(v: &Value) -> f64 {
    v.as_tensor()
        .map(|t| t.double_value(&[]))
        .or(v.as_f64())
        .unwrap_or_else(|| panic!("not a scalar: {v:?}"))
}

#[test]
fn python_lightning_resumes_our_trainers_checkpoint_with_its_optimizer_and_scheduler() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let hp = TinyHp::default();
    let (mut m, _vs) = Tiny::new(hp.clone(), 7);
    let mc = ModelCheckpoint::builder().dirpath(&ck).build().unwrap();
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .seed(1)
        .default_root_dir(dir.path())
        .max_epochs(N)
        .callback(mc)
        .build()
        .unwrap();
    t.fit(&mut m, &data(64, 8, true), None).unwrap();
    let steps = t.global_step();
    assert_eq!(steps, N * STEPS_PER_EPOCH);
    // The default ModelCheckpoint keeps the latest epoch-end save.
    let files = trainer_util::files_under(&ck);
    let name = format!("epoch={}-step={steps}.ckpt", N - 1);
    assert_eq!(files, std::slice::from_ref(&name));
    let ours = ck.join(&name);
    let file = checkpoint::load(&ours).unwrap();
    assert_eq!(file.get("global_step").and_then(Value::as_i64), Some(steps));

    let py_root = dir.path().join("py");
    let out = match lightning_testkit::run_python(
        &format!("{}\n{RESUME}", trainer_util::PY_TINY),
        &[
            ours.to_str().unwrap(),
            py_root.to_str().unwrap(),
            &N.to_string(),
        ],
    ) {
        None => return, // skipped: lightning_testkit::python said why
        Some(r) => r.unwrap_or_else(|e| panic!("{e}")),
    };
    let last = out.lines().last().unwrap_or_default();
    let py: Json = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {out}"));
    let start = &py["at_start"];

    // Where Lightning resumed: our epoch count and global step, our hyperparameters.
    assert_eq!(start["epoch"], N, "{py}");
    assert_eq!(start["step"], steps, "{py}");
    assert_eq!(start["hparams"]["hidden"], hp.hidden);
    assert_eq!(start["hparams"]["lr"], hp.lr);
    // Adam's state per parameter, as our file holds it (Python asserted live == file too).
    let state = start["state"].as_array().unwrap();
    assert_eq!(state.len(), 4);
    for (i, s) in state.iter().enumerate() {
        let ours = |k: &str| {
            file.get_path(&format!("optimizer_states.0.state.{i}.{k}"))
                .unwrap_or_else(|| panic!("our file has no optimizer state {i}.{k}"))
        };
        assert_eq!(s["step"].as_f64(), Some(scalar(ours("step"))), "param {i}");
        assert_eq!(s["step"].as_f64(), Some(steps as f64), "param {i}");
        for k in ["exp_avg", "exp_avg_sq"] {
            assert_eq!(json_f64s(&s[k]), f64s(ours(k)), "param {i} {k}");
        }
    }
    // StepLR's state and the param group's lr, as our file holds them.
    let sched = file
        .get_path("lr_schedulers.0")
        .expect("our scheduler state");
    assert_eq!(
        start["last_epoch"].as_i64(),
        sched.get("last_epoch").and_then(Value::as_i64)
    );
    let last_lr: Vec<f64> = sched
        .get("_last_lr")
        .and_then(Value::as_seq)
        .expect("_last_lr")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(json_f64s(&start["last_lr"]), last_lr);
    let group_lr = file
        .get_path("optimizer_states.0.param_groups.0.lr")
        .and_then(Value::as_f64)
        .unwrap();
    assert_eq!(json_f64s(&start["lrs"]), [group_lr]);
    assert!(
        (group_lr - hp.lr * 0.7f64.powi(N as i32)).abs() < 1e-12,
        "{group_lr}"
    );

    // Then exactly one more epoch, continuing the same optimizer and scheduler.
    let end = &py["end"];
    assert_eq!(py["batches"], STEPS_PER_EPOCH, "{py}");
    assert_eq!(end["epoch"], N + 1, "{py}");
    assert_eq!(end["step"], steps + STEPS_PER_EPOCH, "{py}");
    assert_eq!(
        end["last_epoch"].as_i64(),
        start["last_epoch"].as_i64().map(|e| e + 1)
    );
    assert!(
        (end["lr"].as_f64().unwrap() - group_lr * 0.7).abs() < 1e-12,
        "{py}"
    );
    assert_eq!(
        json_f64s(&end["adam_steps"]),
        [(steps + STEPS_PER_EPOCH) as f64; 4]
    );
}

/// A datamodule's hyperparameters go into our checkpoints as Lightning writes them, so
/// `LightningDataModule.load_from_checkpoint` rebuilds the datamodule from our file.
#[test]
fn a_datamodule_rebuilds_from_our_checkpoint_in_lightning() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 2);
    let mut hp = lightning_core::Dict::new();
    hp.insert("batch_size".into(), 8i64.into());
    hp.insert("root".into(), "data/digits".into());
    let dm = data(64, 8, true).hyper_parameters(hp);
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .enable_checkpointing(false)
        .default_root_dir(dir.path())
        .max_epochs(1)
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    let p = dir.path().join("dm.ckpt");
    t.save_checkpoint(&m, &p, false).unwrap();
    let c = checkpoint::load(&p).unwrap();
    assert_eq!(
        c.get("datamodule_hparams_name").and_then(Value::as_str),
        Some("kwargs")
    );
    let script = r#"
import sys, warnings, lightning.pytorch as pl
warnings.filterwarnings("ignore")
class DM(pl.LightningDataModule):
    def __init__(self, batch_size=1, root="nowhere"):
        super().__init__()
        self.save_hyperparameters()
dm = DM.load_from_checkpoint(sys.argv[1])
print(dm.hparams.batch_size, dm.hparams.root)
"#;
    let Some(out) = lightning_testkit::run_python(script, &[p.to_str().unwrap()]) else {
        return;
    };
    assert_eq!(out.unwrap().lines().last(), Some("8 data/digits"));
}
