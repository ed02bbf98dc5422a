//! `WeightAveraging` / `EMAWeightAveraging`: Lightning's checkpoint layout (averaged weights in
//! `state_dict`, the live ones in `current_model_state`, `averaging_state.n_averaged`), exact
//! resume, and Lightning resuming ours / us resuming Lightning's.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{
    Callback, ModelCheckpoint, SaveLast, TrainerContext, WeightAveraging,
};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use std::path::Path;
use std::sync::{Arc, Mutex};
use trainer_util::{data, Tiny, TinyHp};

fn tiny() -> (Tiny, tch::nn::VarStore) {
    Tiny::new(
        TinyHp {
            dropout: 0.0,
            ..TinyHp::default()
        },
        9,
    )
}

fn trainer(root: &Path, epochs: i64, extra: Option<Probe>) -> Trainer {
    let mut b = Trainer::builder()
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .logger(false)
        .seed(4)
        .default_root_dir(root)
        .max_epochs(epochs)
        .callback(WeightAveraging::ema(0.9))
        .callback(
            ModelCheckpoint::builder()
                .dirpath(root.join("ck"))
                .save_last(SaveLast::True)
                .build()
                .unwrap(),
        );
    if let Some(p) = extra {
        b = b.callback(p);
    }
    b.build().unwrap()
}

/// The parts of a checkpoint the averaging owns or changes.
fn parts(p: &Path) -> Vec<(String, Option<Value>)> {
    let v = lightning_core::checkpoint::load(p).unwrap();
    [
        "state_dict",
        "current_model_state",
        "averaging_state",
        "optimizer_states",
        "callbacks.EMAWeightAveraging",
        "global_step",
    ]
    .iter()
    .map(|k| (k.to_string(), v.get_path(k).cloned()))
    .collect()
}

#[test]
fn ema_checkpoints_hold_lightnings_layout_and_resume_exactly() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _va) = tiny();
    trainer(&dir.path().join("straight"), 4, None)
        .fit(&mut a, &data(64, 8, true), None)
        .unwrap();
    let straight = parts(&dir.path().join("straight/ck/last.ckpt"));
    let get = |k: &str| {
        straight
            .iter()
            .find(|(n, _)| n == k)
            .unwrap()
            .1
            .clone()
            .unwrap()
    };
    assert_ne!(
        get("state_dict"),
        get("current_model_state"),
        "the average differs from the live weights"
    );
    assert_eq!(get("callbacks.EMAWeightAveraging"), {
        let mut s = Value::dict();
        s.insert("latest_update_step", 24i64);
        s
    });
    let n = get("averaging_state")
        .get("n_averaged")
        .unwrap()
        .as_tensor()
        .unwrap()
        .shallow_clone();
    assert_eq!((n.kind(), n.int64_value(&[])), (tch::Kind::Int64, 24));

    let root = dir.path().join("resumed");
    let (mut b, _vb) = tiny();
    trainer(&root, 2, None)
        .fit(&mut b, &data(64, 8, true), None)
        .unwrap();
    let (mut c, _vc) = tiny();
    trainer(&root, 4, None)
        .fit(&mut c, &data(64, 8, true), Some(CkptPath::Last))
        .unwrap();
    assert_eq!(
        parts(&root.join("ck/last.ckpt")),
        straight,
        "2 epochs + resume to 4 == 4 straight"
    );
    // After fit the module holds the average (Lightning's on_train_end).
    let sd = get("state_dict");
    for (name, t) in c.named_parameters() {
        assert!(
            t.equal(sd.get(&name).unwrap().as_tensor().unwrap()),
            "{name}"
        );
    }
}

/// Captures the module's weights when `fit` starts (after the averaging callback restored
/// the live ones).
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Vec<(String, tch::Tensor)>>>);
impl Callback for Probe {
    fn state_key(&self) -> String {
        "Probe".into()
    }
    fn on_fit_start(&mut self, t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        let copy = t
            .module_tensors()
            .into_iter()
            .map(|(n, x)| (n, x.copy()))
            .collect();
        *self.0.lock().unwrap() = copy;
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// After `PY_TINY`: Lightning's `EMAWeightAveraging(decay=0.9)` resumes `argv[1]` for one more
/// epoch and saves `argv[2]`; prints what it started from.
const PY_EMA: &str = r#"
import sys, json, warnings
warnings.filterwarnings("ignore")
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.callbacks import EMAWeightAveraging
seen = {}
class Probe(pl.Callback):
    def on_train_start(self, trainer, m):
        ema = [c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging)][0]
        seen.update(step=trainer.global_step, latest=ema._latest_update_step,
                    n=int(ema._average_model.n_averaged),
                    live={k: v.flatten().tolist() for k, v in m.state_dict().items()},
                    avg={k: v.flatten().tolist() for k, v in ema._average_model.module.state_dict().items()})
torch.manual_seed(0)
x = torch.randn(32, 4); y = (x[:, 0] > 0).long()
t = pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[EMAWeightAveraging(decay=0.9), Probe()])
t.fit(Tiny(dropout=0.0), DataLoader(TensorDataset(x, y), batch_size=8), ckpt_path=sys.argv[1])
t.save_checkpoint(sys.argv[2])
print(json.dumps(seen))
"#;

fn flat(t: &tch::Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1]).to_kind(tch::Kind::Float)).unwrap()
}

#[test]
fn lightning_resumes_our_ema_checkpoint_and_we_resume_its() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _va) = tiny();
    trainer(&dir.path().join("ours"), 4, None)
        .fit(&mut a, &data(64, 8, true), None)
        .unwrap();
    let ours = dir.path().join("ours/ck/last.ckpt");
    let theirs = dir.path().join("theirs.ckpt");
    let script = format!("{}\n{PY_EMA}", trainer_util::PY_TINY);
    let Some(out) =
        lightning_testkit::run_python(&script, &[ours.to_str().unwrap(), theirs.to_str().unwrap()])
    else {
        return;
    };
    let out = out.unwrap();
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let saved = lightning_core::checkpoint::load(&ours).unwrap();
    assert_eq!(
        (
            got["step"].as_i64(),
            got["latest"].as_i64(),
            got["n"].as_i64()
        ),
        (Some(24), Some(24), Some(24))
    );
    let check = |py: &serde_json::Value, key: &str| {
        for (k, v) in saved.get(key).unwrap().as_dict().unwrap() {
            let theirs: Vec<f32> = py[k.to_string()]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(theirs, flat(v.as_tensor().unwrap()), "{key}.{k}");
        }
    };
    check(&got["live"], "current_model_state");
    check(&got["avg"], "state_dict");

    // Ours resumes Lightning's file: its live weights in the module, its average kept.
    let probe = Probe::default();
    let (mut b, _vb) = tiny();
    let mut t = trainer(&dir.path().join("back"), 5, Some(probe.clone()));
    t.fit(&mut b, &data(64, 8, true), Some(CkptPath::from(&theirs)))
        .unwrap();
    let lit = lightning_core::checkpoint::load(&theirs).unwrap();
    let live = std::mem::take(&mut *probe.0.lock().unwrap());
    let cur = lit.get("current_model_state").unwrap();
    for (name, x) in &live {
        assert!(
            x.equal(cur.get(name).unwrap().as_tensor().unwrap()),
            "live {name}"
        );
    }
    let avg = t.callback::<WeightAveraging>().unwrap().averaged().unwrap();
    let sd = lit.get("state_dict").unwrap();
    for (name, x) in &avg {
        assert!(
            x.equal(sd.get(name).unwrap().as_tensor().unwrap()),
            "average {name}"
        );
    }
}
