//! The `loops` dict of our checkpoints equals what Lightning 2.6.6 writes for a run of the
//! same shape (45 training batches and 2 validation batches per epoch, 4 epochs, an
//! epoch-interval StepLR, `save_top_k=-1`, `save_last=True`), key for key and value for value:
//! for epoch-end checkpoints and for mid-epoch ones (`every_n_train_steps`). A run stopped
//! mid-epoch and resumed writes the same `loops` as one that never stopped.

use crate::loops_compare;
use lightning_testkit::trainer_util;

use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::trainer::{CkptPath, Trainer};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use trainer_util::{Tiny, TinyHp};

const TRAIN_ROWS: i64 = 180;
const VAL_ROWS: i64 = 8;
const BATCH: i64 = 4;

/// Trains Lightning on the same shape into `argv[1]` and compares every checkpoint's `loops`
/// (and `epoch`, `global_step`) with ours of the same name in `argv[2]`.
const SCRIPT: &str = r#"
import json, os, sys, warnings
import torch, lightning as L
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
warnings.filterwarnings("ignore")
theirs, ours, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.l = nn.Linear(4, 1)
    def training_step(self, b, i):
        x, y = b; loss = ((self.l(x) - y) ** 2).mean(); self.log("train_loss", loss); return loss
    def validation_step(self, b, i):
        x, y = b; self.log("val_loss", ((self.l(x) - y) ** 2).mean())
    def configure_optimizers(self):
        o = torch.optim.Adam(self.parameters(), 1e-3)
        return {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.7)}
torch.manual_seed(0)
tr = DataLoader(TensorDataset(torch.randn(180, 4), torch.randn(180, 1)), batch_size=4)
va = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=theirs, save_top_k=-1, save_last=True,
                                         every_n_train_steps=every or None)
t = L.Trainer(max_epochs=4, callbacks=[cb], logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=theirs)
t.fit(M(), tr, va)
compare_loops(theirs, ours)
"#;

fn data() -> DataModule {
    tch::manual_seed(0);
    let x = Tensor::randn([TRAIN_ROWS + VAL_ROWS, 4], (Kind::Float, Device::Cpu));
    let y = x
        .sum_dim_intlist(1, false, Kind::Float)
        .gt(0.0)
        .to_kind(Kind::Int64);
    let train =
        TensorDataset::new(vec![x.narrow(0, 0, TRAIN_ROWS), y.narrow(0, 0, TRAIN_ROWS)]).unwrap();
    let val = TensorDataset::new(vec![
        x.narrow(0, TRAIN_ROWS, VAL_ROWS),
        y.narrow(0, TRAIN_ROWS, VAL_ROWS),
    ])
    .unwrap();
    DataModule::new()
        .train(DataLoader::new(train, BATCH))
        .val(DataLoader::new(val, BATCH))
}

fn trainer(dir: &Path, every: i64, max_epochs: i64, max_steps: i64) -> Trainer {
    loops_compare::checkpointing_trainer(dir, every)
        .max_epochs(max_epochs)
        .max_steps(max_steps)
        .build()
        .unwrap()
}

fn hp() -> TinyHp {
    TinyHp {
        dropout: 0.0,
        step_lr: 1,
        ..TinyHp::default()
    }
}

/// Trains ours into `dir`, then lets Python compare with Lightning's files.
fn compare(dir: &Path, every: i64) {
    let _serial = trainer_util::serial();
    let ours = dir.join("ours");
    let (mut m, _vs) = Tiny::new(hp(), 3);
    trainer(&ours, every, 4, -1)
        .fit(&mut m, &data(), None)
        .unwrap();
    let theirs = dir.join("theirs");
    let args = [
        theirs.to_str().unwrap(),
        ours.to_str().unwrap(),
        &every.to_string(),
    ];
    // None: skipped with the reason printed (a failure when Python is required)
    let script = format!("{}{SCRIPT}", loops_compare::PY_COMPARE_LOOPS);
    let Some(out) = lightning_testkit::run_python(&script, &args) else {
        return;
    };
    let loader_states = loops_compare::assert_same_loops(&out.unwrap_or_else(|e| panic!("{e}")));
    // the mid-epoch files (and only they) carry the loader's state
    assert_eq!(
        loader_states > 0,
        every > 0,
        "{loader_states} files with a loader state"
    );
}

#[test]
fn epoch_end_checkpoints_have_lightnings_loops() {
    compare(tempfile::tempdir().unwrap().path(), 0);
}

#[test]
fn mid_epoch_checkpoints_have_lightnings_loops() {
    compare(tempfile::tempdir().unwrap().path(), 20);
}

/// Stopped at step 60 (mid epoch 1) and resumed from `last.ckpt`: every later file's `loops`
/// equal those of the run that never stopped.
#[test]
fn a_resumed_run_writes_the_same_loops() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    let (mut m, _vs) = Tiny::new(hp(), 3);
    trainer(&straight, 20, 4, -1)
        .fit(&mut m, &data(), None)
        .unwrap();
    let resumed = dir.path().join("resumed");
    let (mut m, _vs) = Tiny::new(hp(), 3);
    trainer(&resumed, 20, 4, 60)
        .fit(&mut m, &data(), None)
        .unwrap();
    let (mut m, _vs) = Tiny::new(hp(), 99);
    trainer(&resumed, 20, 4, -1)
        .fit(&mut m, &data(), Some(CkptPath::Last))
        .unwrap();
    let loops = |p: &Path| {
        lightning_core::checkpoint::load(p)
            .unwrap()
            .get("loops")
            .cloned()
            .unwrap()
    };
    let mut names = trainer_util::files_under(&straight);
    names.sort();
    assert_eq!(names.len(), 10, "{names:?}");
    for name in names {
        assert_eq!(
            loops(&straight.join(&name)),
            loops(&resumed.join(&name)),
            "{name}"
        );
    }
}
