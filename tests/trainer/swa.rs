//! `StochasticWeightAveraging`: SWALR swapped in at `swa_epoch_start`, the average taken at
//! each epoch start, the batch-norm epoch (statistics of the averaged weights, no steps),
//! exact resume from before, inside and at the end of the averaging, and Lightning 2.6's
//! callback running the same job from the same weights and data: the same weights, average,
//! statistics and SWALR state (bit for bit when run alone), also when each resumes the
//! other's checkpoint.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{ModelCheckpoint, SaveLast, StochasticWeightAveraging, SwaStart};
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::layers::BatchNorm;
use lightning_core::optim::{Sgd, SgdConfig};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use lightning_core::TensorKind;
use std::path::{Path, PathBuf};
use tch::nn::{Module, ModuleT};
use tch::{nn, Device, Kind, Tensor};

#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct BnConfig {
    #[hparam(default = 0.1)]
    pub lr: f64,
}

/// Linear -> BatchNorm1d -> ReLU -> Linear, SGD(momentum 0.9) with StepLR(1, 0.7).
#[lightning_module]
pub struct BnNet {
    #[hparams]
    hp: BnConfig,
    fc1: nn::Linear,
    bn: BatchNorm,
    fc2: nn::Linear,
}

impl BnNet {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.fc2
            .forward(&self.bn.forward_t(&self.fc1.forward(x), train).relu())
    }
}

impl LightningModule for BnNet {
    fn build(hp: &BnConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(BnNet {
            hp: hp.clone(),
            fc1: nn::linear(vs / "fc1", 4, 8, Default::default()),
            bn: BatchNorm::new(&(vs / "bn"), 1, 8, Default::default()),
            fc2: nn::linear(vs / "fc2", 8, 3, Default::default()),
        })
    }
    fn training_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let loss = self.forward(&b[0], true).cross_entropy_for_logits(&b[1]);
        ctx.log("train_loss", &loss);
        Ok(loss)
    }
    fn validation_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        let loss = self.forward(&b[0], false).cross_entropy_for_logits(&b[1]);
        ctx.log("val_loss", loss);
        Ok(())
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let mut opt = Sgd::new(
            self.parameters(),
            SgdConfig {
                lr: self.hp.lr,
                momentum: 0.9,
                ..Default::default()
            },
        )?;
        let step = Scheduler::new(
            &mut opt,
            Schedule::Step {
                step_size: 1,
                gamma: 0.7,
            },
        )?;
        Ok(OptimizerConfig::new(opt).scheduler(step))
    }
}

const EPOCHS: i64 = 4;
/// 48 training rows in batches of 8.
const STEPS_PER_EPOCH: i64 = 6;

/// Deterministic values in [-1, 1] (tests run in parallel threads: the global RNG is
/// shared, so neither the data nor the weights come from it).
fn wave(shape: &[i64], phase: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.731 + phase).sin())
        .to_kind(Kind::Float)
        .reshape(shape)
}

/// 48 training and 16 validation rows, unshuffled (Python reads the same tensors).
fn tensors() -> [Tensor; 4] {
    let x = wave(&[64, 4], 0.3) * 2.0 + wave(&[64, 4], 1.1);
    let y = x
        .narrow(1, 0, 1)
        .squeeze_dim(1)
        .gt(0.0)
        .to_kind(Kind::Int64)
        + x.narrow(1, 1, 1)
            .squeeze_dim(1)
            .gt(0.5)
            .to_kind(Kind::Int64);
    [
        x.narrow(0, 0, 48),
        y.narrow(0, 0, 48),
        x.narrow(0, 48, 16),
        y.narrow(0, 48, 16),
    ]
}

fn data() -> DataModule {
    let [xt, yt, xv, yv] = tensors();
    DataModule::new()
        .train(DataLoader::new(
            TensorDataset::new(vec![xt, yt]).unwrap(),
            8,
        ))
        .val(DataLoader::new(
            TensorDataset::new(vec![xv, yv]).unwrap(),
            8,
        ))
}

fn model() -> (BnNet, nn::VarStore) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = BnNet::build(&BnConfig::default(), &vs.root()).unwrap();
    let _guard = tch::no_grad_guard();
    let mut phase = 0.0;
    m.visit_mut("", &mut |_, t, kind| {
        if kind == TensorKind::Parameter {
            phase += 0.5;
            t.copy_(&(wave(&t.size(), phase) * 0.5));
        }
    });
    (m, vs)
}

fn swa() -> StochasticWeightAveraging {
    StochasticWeightAveraging::new(0.02)
        .swa_epoch_start(SwaStart::Epoch(2))
        .annealing_epochs(2)
}

/// Every epoch-end checkpoint in `root/ck` (and one every `every` steps in `root/steps`
/// when set).
fn trainer(root: &Path, every: Option<i64>) -> Trainer {
    let ck = ModelCheckpoint::builder()
        .dirpath(root.join("ck"))
        .save_top_k(-1)
        .save_last(SaveLast::True);
    let mut b = Trainer::builder()
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .logger(false)
        .seed(4)
        .default_root_dir(root)
        .max_epochs(EPOCHS)
        .callback(swa())
        .callback(ck.build().unwrap());
    if let Some(n) = every {
        let steps = ModelCheckpoint::builder()
            .dirpath(root.join("steps"))
            .save_top_k(-1)
            .every_n_train_steps(n);
        b = b.callback(steps.build().unwrap());
    }
    b.build().unwrap()
}

/// The module's state after `fit` and the callback's average and count.
struct Outcome {
    module: Vec<(String, Tensor)>,
    average: Vec<(String, Tensor)>,
    n_averaged: i64,
}

fn fit(root: &Path, every: Option<i64>, from: Option<PathBuf>) -> Outcome {
    let (mut m, _vs) = model();
    let mut t = trainer(root, every);
    t.fit(&mut m, &data(), from.map(CkptPath::from)).unwrap();
    let cb = t.callback::<StochasticWeightAveraging>().unwrap();
    Outcome {
        module: m.state_dict().into_iter().collect(),
        average: cb.averaged().unwrap(),
        n_averaged: cb.n_averaged(),
    }
}

fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    assert_close(a, b, 0.0, what)
}

/// Equal within `tol` (0: bit for bit).
fn assert_close(a: &[(String, Tensor)], b: &[(String, Tensor)], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!(n, m, "{what}");
        if tol == 0.0 && x.equal(y) {
            continue;
        }
        let diff = (x.to_kind(Kind::Double) - y.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= tol, "{what}: {n} differs by up to {diff}");
    }
}

fn state_of(ckpt: &Path) -> Value {
    lightning_core::checkpoint::load(ckpt)
        .unwrap()
        .get_path("callbacks.StochasticWeightAveraging")
        .cloned()
        .unwrap()
}

#[test]
fn swa_averages_swaps_in_swalr_reestimates_batch_norm_and_resumes_exactly() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("straight");
    let straight = fit(&root, Some(5), None);
    let ck = root.join("ck");
    // swa_epoch_start=2: averaged at the start of epochs 1, 2 and 3
    assert_eq!(straight.n_averaged, 3);
    // the module ends with the average's parameters and statistics re-estimated over the
    // batch-norm epoch (6 batches, counted from 0)
    for (name, x) in &straight.module {
        match straight.average.iter().find(|(n, _)| n == name) {
            Some((_, avg)) if !name.starts_with("bn.running") && !name.ends_with("tracked") => {
                assert!(x.equal(avg), "{name}: the module holds the average")
            }
            _ => {}
        }
    }
    let tracked = &straight
        .module
        .iter()
        .find(|(n, _)| n == "bn.num_batches_tracked")
        .unwrap()
        .1;
    assert_eq!(tracked.int64_value(&[]), STEPS_PER_EPOCH);
    // the batch-norm epoch ends in one step that changes nothing (Lightning's, whose
    // checkpoints after it are named epoch=4-step=25)
    let last = lightning_core::checkpoint::load(&ck.join("last.ckpt")).unwrap();
    assert_eq!(
        last.get("global_step").and_then(Value::as_i64),
        Some(EPOCHS * STEPS_PER_EPOCH + 1)
    );
    // SWALR replaced StepLR from epoch 1 on: the checkpoint's scheduler is SWALR's state, and
    // the callback's copy of it is the same
    let sched = last.get_path("lr_schedulers.0").unwrap().clone();
    assert_eq!(
        sched.get("_anneal_strategy").and_then(Value::as_str),
        Some("cos")
    );
    let state = state_of(&ck.join("last.ckpt"));
    assert_eq!(state.get("scheduler_state"), Some(&sched));
    assert_eq!(state.get("n_averaged").and_then(Value::as_i64), Some(3));
    assert_eq!(
        state.get("latest_update_epoch").and_then(Value::as_i64),
        Some(3)
    );
    // before averaging started, no scheduler state and no average yet
    let early = state_of(&ck.join("epoch=0-step=6.ckpt"));
    assert_eq!(early.get("scheduler_state"), Some(&Value::None));
    assert_eq!(early.get("n_averaged").and_then(Value::as_i64), Some(0));

    // Resumed before averaging starts, right after it started, mid-epoch inside it, and at
    // the last epoch's end (only the batch-norm epoch left): the same end, bit for bit.
    for (i, file) in [
        "epoch=0-step=6.ckpt",
        "epoch=1-step=12.ckpt",
        "epoch=2-step=18.ckpt",
        "../steps/epoch=2-step=15.ckpt",
        "epoch=3-step=24.ckpt",
        "epoch=4-step=25.ckpt",
    ]
    .iter()
    .enumerate()
    {
        let resumed = fit(&dir.path().join(format!("r{i}")), None, Some(ck.join(file)));
        assert_eq!(resumed.n_averaged, 3, "resumed from {file}");
        assert_same(
            &resumed.module,
            &straight.module,
            &format!("module, resumed from {file}"),
        );
        assert_same(
            &resumed.average,
            &straight.average,
            &format!("average, resumed from {file}"),
        );
    }
}

#[test]
fn swa_refuses_what_lightning_refuses() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let run = |cb: StochasticWeightAveraging, max_epochs: Option<i64>| {
        let (mut m, _vs) = model();
        let mut b = Trainer::builder()
            .enable_progress_bar(false)
            .enable_model_summary(false)
            .logger(false)
            .enable_checkpointing(false)
            .default_root_dir(dir.path())
            .max_steps(3)
            .callback(cb);
        if let Some(e) = max_epochs {
            b = b.max_epochs(e);
        }
        b.build()
            .unwrap()
            .fit(&mut m, &data(), None)
            .unwrap_err()
            .to_string()
    };
    let e = run(
        StochasticWeightAveraging::new(-1.0).swa_epoch_start(SwaStart::Epoch(0)),
        Some(2),
    );
    assert!(e.contains("swa_epoch_start should be a >0 integer"), "{e}");
    assert!(e.contains("positive float"), "both problems at once: {e}");
    let e = run(StochasticWeightAveraging::new(0.1), Some(-1));
    assert!(e.contains("`max_epochs=-1`"), "{e}");
    let e = run(StochasticWeightAveraging::with_lrs(vec![0.1, 0.2]), Some(2));
    assert!(
        e.contains("2 swa_lrs for an optimizer with 1 param groups"),
        "{e}"
    );
}

/// Lightning 2.6 runs the same job (`argv[1]`: the data, `argv[2]`: the initial weights)
/// straight, and resumed from our epoch-1 checkpoint `argv[3]`, under `argv[4]`; prints
/// each run's module, average and count as JSON.
const PY_SWA: &str = r#"
import sys, json, warnings, torch, lightning.pytorch as pl
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.callbacks import StochasticWeightAveraging, ModelCheckpoint
warnings.filterwarnings("ignore")
data, init, ours, out = sys.argv[1:5]
d = torch.load(data, weights_only=True)
class BnNet(pl.LightningModule):
    def __init__(self, lr=0.1):
        super().__init__(); self.save_hyperparameters()
        self.fc1 = nn.Linear(4, 8); self.bn = nn.BatchNorm1d(8); self.fc2 = nn.Linear(8, 3)
    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))
    def training_step(self, b, i):
        loss = F.cross_entropy(self(b[0]), b[1]); self.log("train_loss", loss); return loss
    def validation_step(self, b, i):
        self.log("val_loss", F.cross_entropy(self(b[0]), b[1]))
    def configure_optimizers(self):
        o = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.7)}
def flat(sd):
    return {k: v.flatten().tolist() for k, v in sd.items()}
def run(root, ckpt_path):
    m = BnNet()
    m.load_state_dict(torch.load(init, weights_only=True))
    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)
    ck = ModelCheckpoint(dirpath=root + "/ck", save_top_k=-1, save_last=True)
    t = pl.Trainer(max_epochs=4, callbacks=[swa, ck], logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=root)
    t.fit(m, DataLoader(TensorDataset(d["xt"], d["yt"]), batch_size=8),
          DataLoader(TensorDataset(d["xv"], d["yv"]), batch_size=8), ckpt_path=ckpt_path)
    return {"module": flat(m.state_dict()), "average": flat(swa._average_model.state_dict()),
            "n": int(swa.n_averaged)}
print(json.dumps({"straight": run(out + "/straight", None), "resumed": run(out + "/resumed", ours)}))
"#;

fn from_json(j: &serde_json::Value, like: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    like.iter()
        .map(|(n, x)| {
            let v: Vec<f64> = j[n]
                .as_array()
                .unwrap_or_else(|| panic!("python has no {n}"))
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let t = Tensor::from_slice(&v).to_kind(x.kind()).reshape(x.size());
            (n.clone(), t)
        })
        .collect()
}

#[test]
fn lightning_runs_the_same_swa_and_each_resumes_the_others_checkpoint() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let [xt, yt, xv, yv] = tensors();
    let mut d = Value::dict();
    for (k, t) in [("xt", xt), ("yt", yt), ("xv", xv), ("yv", yv)] {
        d.insert(k, Value::Tensor(t));
    }
    let data_file = dir.path().join("data.pt");
    lightning_core::checkpoint::save(&data_file, &d).unwrap();
    let init = dir.path().join("init.pt");
    let (m, _vs) = model();
    lightning_core::checkpoint::save(
        &init,
        &lightning_core::traverse::state_dict_to_value(&m.state_dict()),
    )
    .unwrap();
    let root = dir.path().join("ours");
    let ours = fit(&root, None, None);
    let py_root = dir.path().join("py");
    let resume_from = root.join("ck/epoch=1-step=12.ckpt");
    let args = [
        data_file.to_str().unwrap(),
        init.to_str().unwrap(),
        resume_from.to_str().unwrap(),
        py_root.to_str().unwrap(),
    ];
    let Some(out) =
        lightning_testkit::run_python_within(PY_SWA, &args, std::time::Duration::from_secs(180))
    else {
        return;
    };
    let out = out.unwrap();
    let py: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    // Equal within a few float32 ulps (bit for bit when this test runs alone: alongside
    // other tests, the BLAS library may split a product over fewer threads)
    let tol = 1e-6;
    for run in ["straight", "resumed"] {
        let what = format!("Lightning {run} vs ours");
        assert_eq!(py[run]["n"].as_i64(), Some(ours.n_averaged), "{what}");
        let module = from_json(&py[run]["module"], &ours.module);
        assert_close(&module, &ours.module, tol, &format!("{what}: module"));
        let average = from_json(&py[run]["average"], &ours.average);
        assert_close(&average, &ours.average, tol, &format!("{what}: average"));
    }
    // SWALR's state as Lightning saves it (last_epoch from max_epochs + the batch-norm epoch)
    let theirs = py_root.join("straight/ck/last.ckpt");
    let sched = |p: &Path| state_of(p).get("scheduler_state").cloned();
    assert_eq!(sched(&theirs), sched(&root.join("ck/last.ckpt")));
    // We resume Lightning's epoch-1 checkpoint and end where both straight runs ended.
    let back = fit(
        &dir.path().join("back"),
        None,
        Some(py_root.join("straight/ck/epoch=1-step=12.ckpt")),
    );
    let what = "ours resumed from Lightning's";
    assert_close(&back.module, &ours.module, tol, &format!("{what}: module"));
    assert_close(
        &back.average,
        &ours.average,
        tol,
        &format!("{what}: average"),
    );
}
