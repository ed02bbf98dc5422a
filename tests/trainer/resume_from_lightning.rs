//! Resuming a checkpoint written by Python Lightning 2.6 for an equivalent model: training
//! continues from its weights, Adam state, StepLR state, epoch and step.

use lightning_testkit::trainer_util;

use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use trainer_util::{data, Tiny, TinyHp};

/// The script after [`trainer_util::PY_TINY`].
const GEN: &str = r#"
import sys, torch, warnings, lightning.pytorch as pl
warnings.filterwarnings("ignore")
from torch.utils.data import DataLoader, TensorDataset
out = sys.argv[1]
torch.manual_seed(0)
x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
t = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=out, callbacks=[pl.callbacks.ModelCheckpoint(dirpath=out, filename="py")])
t.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=8))
"#;

#[test]
fn resumes_a_python_lightning_checkpoint() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    match lightning_testkit::run_python(&format!("{}\n{GEN}", trainer_util::PY_TINY), &[out]) {
        None => return, // skipped: lightning_testkit::python said why
        Some(r) => {
            r.unwrap();
        }
    }
    let py = dir.path().join("py.ckpt");
    let before = checkpoint::load(&py).unwrap();
    assert_eq!(before.get("global_step").and_then(Value::as_i64), Some(8));
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 77);
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .seed(1)
        .default_root_dir(dir.path())
        .logger(false)
        .enable_checkpointing(false)
        .max_epochs(2)
        .build()
        .unwrap();
    // 64 rows -> 48 train rows / 8 = 6 batches in our epoch 1.
    t.fit(&mut m, &data(64, 8, true), Some(CkptPath::from(&py)))
        .unwrap();
    assert_eq!((t.current_epoch(), t.global_step()), (2, 8 + 6));
    let after = dir.path().join("after.ckpt");
    t.save_checkpoint(&m, &after, false).unwrap();
    let c = checkpoint::load(&after).unwrap();
    let step = c
        .get_path("optimizer_states.0.state.0.step")
        .and_then(|v| v.as_tensor().map(|t| t.double_value(&[])).or(v.as_f64()));
    assert_eq!(step, Some(14.0), "Adam's step continued from Python's 8");
    assert_eq!(
        c.get_path("lr_schedulers.0.last_epoch")
            .and_then(Value::as_i64),
        Some(2)
    );
    let lr = c
        .get_path("optimizer_states.0.param_groups.0.lr")
        .and_then(Value::as_f64)
        .unwrap();
    assert!((lr - 0.05 * 0.7 * 0.7).abs() < 1e-12, "lr {lr}");
    // The weights moved on from Python's.
    assert_ne!(before.get("state_dict"), c.get("state_dict"));
}
