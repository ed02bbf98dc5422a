//! Several optimizers and manual optimization, against Lightning 2.6.6:
//!
//! - a two-optimizer manual module's `loops` (epoch ends, mid-epoch saves, validation) equal
//!   what Lightning writes for the same run, key by key;
//! - a GAN checkpoint written by Lightning (two Adams, a StepLR) resumes here and ends where
//!   Lightning's own run ends; one of ours resumes in Lightning and ends where ours ends;
//! - the `gan` example's 4-epoch run equals 2 epochs + resume to 4, bit for bit, its steps are
//!   counted as Lightning counts them, and both optimizer states load into `torch.optim.Adam`.

use crate::loops_compare;
use lightning_testkit::trainer_util;

use lightning_rs::gan;

use clap::Parser;
use lightning_core::checkpoint;
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::hparams::NoHparams;
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig, Schedule, Scheduler};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, ClipAlgorithm, Trainer};
use std::path::Path;
use tch::{nn, Device, Kind, Reduction, Tensor};

const TRAIN_ROWS: i64 = 40;
const VAL_ROWS: i64 = 8;
const BATCH: i64 = 4;
/// Training batches per epoch.
const BATCHES: i64 = TRAIN_ROWS / BATCH;

/// A deterministic two-optimizer GAN-shaped module (no random noise: the "noise" is the batch
/// flipped), so Lightning and we compute the same thing from the same state; the generator's
/// gradients are clipped (`self.clip_gradients`) and its StepLR steps at each epoch's end.
#[lightning_module]
struct TinyGan {
    r#gen: nn::Linear,
    disc: nn::Linear,
}

fn bce(logits: &Tensor, target: f64) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(
        &logits.full_like(target),
        None,
        None,
        Reduction::Mean,
    )
}

impl TinyGan {
    fn new(seed: i64) -> (Self, nn::VarStore) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = TinyGan::build(&NoHparams, &vs.root()).unwrap();
        (m, vs)
    }
    fn generate(&self, z: &Tensor) -> Tensor {
        z.apply(&self.r#gen).sigmoid()
    }
}

impl LightningModule for TinyGan {
    fn build(_: &NoHparams, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(TinyGan {
            r#gen: nn::linear(vs / "gen", 4, 4, Default::default()),
            disc: nn::linear(vs / "disc", 4, 1, Default::default()),
        })
    }
    fn automatic_optimization(&self) -> bool {
        false
    }
    fn training_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let x = &b[0];
        let z = x.flip([1]) * 0.5;
        ctx.optimizers()?.toggle(0)?;
        let g_loss = bce(&self.generate(&z).apply(&self.disc), 1.0);
        ctx.optimizers()?.zero_grad(0)?;
        ctx.manual_backward(&g_loss)?;
        ctx.optimizers()?
            .clip_gradients(0, 0.5, ClipAlgorithm::Norm)?;
        ctx.optimizers()?.step(0)?;
        ctx.optimizers()?.untoggle(0)?;
        ctx.optimizers()?.toggle(1)?;
        let fake = self.generate(&z).detach();
        let d_loss = (bce(&x.apply(&self.disc), 1.0) + bce(&fake.apply(&self.disc), 0.0)) / 2.0;
        ctx.optimizers()?.zero_grad(1)?;
        ctx.manual_backward(&d_loss)?;
        ctx.optimizers()?.step(1)?;
        ctx.optimizers()?.untoggle(1)?;
        if i as i64 + 1 == BATCHES {
            ctx.lr_schedulers()?.step(0)?;
        }
        ctx.log("g_loss", &g_loss);
        Ok(g_loss.detach())
    }
    fn validation_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        ctx.log("val_loss", bce(&b[0].apply(&self.disc), 1.0));
        Ok(())
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let adam = |params: Vec<Tensor>| {
            let cfg = AdamConfig {
                lr: 0.01,
                betas: (0.5, 0.999),
                ..AdamConfig::default()
            };
            Adam::new(params, cfg)
        };
        let params =
            |l: &nn::Linear| vec![l.ws.shallow_clone(), l.bs.as_ref().unwrap().shallow_clone()];
        let mut g = adam(params(&self.r#gen))?;
        let step = Schedule::Step {
            step_size: 1,
            gamma: 0.5,
        };
        let sched = Scheduler::new(&mut g, step)?;
        let d = adam(params(&self.disc))?;
        Ok(OptimizerConfig::new(g)
            .scheduler(sched)
            .and(OptimizerConfig::new(d)))
    }
}

/// The Python twin of [`TinyGan`] and its data; defines `TinyGan`, `data()`, `trainer()`.
const PY_TINY_GAN: &str = r#"
import json, os, sys, warnings
import torch, lightning as L
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
warnings.filterwarnings("ignore")
BATCHES = 10
def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
class TinyGan(L.LightningModule):
    def __init__(self):
        super().__init__(); self.automatic_optimization = False
        self.gen = nn.Linear(4, 4); self.disc = nn.Linear(4, 1)
    def training_step(self, b, i):
        x = b[0]; z = x.flip(1) * 0.5; g, d = self.optimizers()
        self.toggle_optimizer(g)
        gl = bce(self.disc(torch.sigmoid(self.gen(z))), 1.0)
        g.zero_grad(); self.manual_backward(gl)
        self.clip_gradients(g, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
        g.step(); self.untoggle_optimizer(g)
        self.toggle_optimizer(d)
        fake = torch.sigmoid(self.gen(z)).detach()
        dl = (bce(self.disc(x), 1.0) + bce(self.disc(fake), 0.0)) / 2.0
        d.zero_grad(); self.manual_backward(dl); d.step(); self.untoggle_optimizer(d)
        if i + 1 == BATCHES:
            self.lr_schedulers().step()
        self.log("g_loss", gl)
    def validation_step(self, b, i):
        self.log("val_loss", bce(self.disc(b[0]), 1.0))
    def configure_optimizers(self):
        g = torch.optim.Adam(self.gen.parameters(), lr=0.01, betas=(0.5, 0.999))
        d = torch.optim.Adam(self.disc.parameters(), lr=0.01, betas=(0.5, 0.999))
        return [g, d], [torch.optim.lr_scheduler.StepLR(g, 1, 0.5)]
def data():
    x = torch.sin(torch.arange(48 * 4, dtype=torch.float32) * 0.37).view(48, 4)
    return (DataLoader(TensorDataset(x[:40]), batch_size=4),
            DataLoader(TensorDataset(x[40:]), batch_size=4))
def trainer(dirpath, max_epochs, every=0):
    cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=dirpath, save_top_k=-1, save_last=True,
                                             every_n_train_steps=every or None)
    return L.Trainer(max_epochs=max_epochs, callbacks=[cb], logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=dirpath, num_sanity_val_steps=0)
"#;

/// The same data as `data()` in [`PY_TINY_GAN`].
fn data() -> DataModule {
    let x = (Tensor::arange((TRAIN_ROWS + VAL_ROWS) * 4, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([TRAIN_ROWS + VAL_ROWS, 4]);
    let train = TensorDataset::new(vec![x.narrow(0, 0, TRAIN_ROWS)]).unwrap();
    let val = TensorDataset::new(vec![x.narrow(0, TRAIN_ROWS, VAL_ROWS)]).unwrap();
    DataModule::new()
        .train(DataLoader::new(train, BATCH))
        .val(DataLoader::new(val, BATCH))
}

fn trainer(dir: &Path, max_epochs: i64, every: i64) -> Trainer {
    loops_compare::checkpointing_trainer(dir, every)
        .max_epochs(max_epochs)
        .num_sanity_val_steps(0)
        .build()
        .unwrap()
}

fn python(script: &str, args: &[&str]) -> Option<serde_json::Value> {
    let full = format!("{PY_TINY_GAN}{}{script}", loops_compare::PY_COMPARE_LOOPS);
    let out = lightning_testkit::run_python(&full, args)?.unwrap_or_else(|e| panic!("{e}"));
    Some(serde_json::from_str(out.lines().last().unwrap()).unwrap())
}

/// Compares the `loops`, `epoch` and `global_step` of every file of the same name.
const COMPARE_LOOPS: &str = r#"
theirs, ours, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
tr, va = data()
trainer(theirs, 4, every).fit(TinyGan(), tr, va)
compare_loops(theirs, ours)
"#;

fn compare_loops(every: i64) {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let (mut m, _vs) = TinyGan::new(3);
    trainer(&ours, 4, every).fit(&mut m, &data(), None).unwrap();
    let theirs = dir.path().join("theirs");
    let args = [
        theirs.to_str().unwrap(),
        ours.to_str().unwrap(),
        &every.to_string(),
    ];
    let script = format!(
        "{PY_TINY_GAN}{}{COMPARE_LOOPS}",
        loops_compare::PY_COMPARE_LOOPS
    );
    let Some(out) = lightning_testkit::run_python(&script, &args) else {
        return;
    };
    loops_compare::assert_same_loops(&out.unwrap_or_else(|e| panic!("{e}")));
}

#[test]
fn manual_optimization_epoch_end_loops_equal_lightnings() {
    compare_loops(0);
}

#[test]
fn manual_optimization_mid_epoch_loops_equal_lightnings() {
    // 2 optimizer steps per batch: a save every 7 batches, validation in between
    compare_loops(14);
}

fn load(p: &Path) -> Value {
    checkpoint::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn field<'a>(ckpt: &'a Value, key: &str) -> &'a Value {
    ckpt.get(key)
        .unwrap_or_else(|| panic!("no {key} in the checkpoint"))
}

/// Largest absolute difference between two value trees' tensors (None if their shapes or
/// non-tensor values differ).
fn max_diff(a: &Value, b: &Value) -> Option<f64> {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => {
            if x.size() != y.size() {
                return None;
            }
            let d = (x.to_kind(Kind::Double) - y.to_kind(Kind::Double)).abs();
            Some(if d.numel() == 0 {
                0.0
            } else {
                d.max().double_value(&[])
            })
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            if x.len() != y.len() {
                return None;
            }
            x.iter()
                .zip(y)
                .try_fold(0.0f64, |m, (p, q)| Some(m.max(max_diff(p, q)?)))
        }
        (Value::Dict(x), Value::Dict(y))
        | (Value::OrderedDict(x), Value::OrderedDict(y))
        | (Value::Dict(x), Value::OrderedDict(y))
        | (Value::OrderedDict(x), Value::Dict(y)) => {
            if x.len() != y.len() {
                return None;
            }
            x.iter()
                .try_fold(0.0f64, |m, (k, p)| Some(m.max(max_diff(p, y.get(k)?)?)))
        }
        (Value::Float(x), Value::Float(y)) => Some((x - y).abs()),
        (Value::Float(x), Value::Int(y)) | (Value::Int(y), Value::Float(x)) => {
            Some((x - *y as f64).abs())
        }
        _ => (a == b).then_some(0.0),
    }
}

const LIGHTNING_RUN: &str = r#"
theirs = sys.argv[1]
torch.manual_seed(1)
tr, va = data()
trainer(theirs, 4).fit(TinyGan(), tr, va)
print(json.dumps({"files": sorted(os.listdir(theirs))}))
"#;

/// Lightning trains 4 epochs; we resume its epoch-2 checkpoint (two optimizers, a scheduler)
/// and train to 4: weights, both optimizers, the scheduler and `loops` end where Lightning's
/// own run ends.
#[test]
fn a_lightning_gan_checkpoint_resumes_here() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    let Some(got) = python(LIGHTNING_RUN, &[theirs.to_str().unwrap()]) else {
        return;
    };
    let two = format!("epoch=1-step={}.ckpt", 2 * 2 * BATCHES);
    let four = format!("epoch=3-step={}.ckpt", 4 * 2 * BATCHES);
    let files = got["files"].to_string();
    assert!(files.contains(&two) && files.contains(&four), "{files}");
    let ours = dir.path().join("ours");
    let (mut m, _vs) = TinyGan::new(99);
    let mut t = trainer(&ours, 4, 0);
    t.fit(&mut m, &data(), Some(CkptPath::from(theirs.join(&two))))
        .unwrap();
    assert_eq!((t.current_epoch(), t.global_step()), (4, 4 * 2 * BATCHES));
    let (a, b) = (load(&ours.join(&four)), load(&theirs.join(&four)));
    for key in ["state_dict", "optimizer_states", "lr_schedulers"] {
        let d = max_diff(field(&a, key), field(&b, key))
            .unwrap_or_else(|| panic!("{key}: different shapes"));
        eprintln!("{key}: max |ours - Lightning| = {d:e}");
        assert!(d <= 1e-6, "{key}: max difference {d}");
    }
    assert_eq!(
        field(&a, "optimizer_states").as_seq().map(<[Value]>::len),
        Some(2)
    );
    assert_eq!(field(&a, "loops"), field(&b, "loops"), "loops");
    assert_eq!(field(&a, "global_step"), field(&b, "global_step"));
}

const LIGHTNING_RESUMES: &str = r#"
ours2, ours4, out = sys.argv[1], sys.argv[2], sys.argv[3]
tr, va = data()
t = trainer(out, 4)
t.fit(TinyGan(), tr, va, ckpt_path=ours2)
a = torch.load(os.path.join(out, "last.ckpt"), weights_only=True)
b = torch.load(ours4, weights_only=True)
def maxdiff(x, y):
    if isinstance(x, torch.Tensor):
        return (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
    if isinstance(x, dict):
        assert x.keys() == y.keys(), (x.keys(), y.keys())
        return max([maxdiff(x[k], y[k]) for k in x] + [0.0])
    if isinstance(x, (list, tuple)):
        assert len(x) == len(y)
        return max([maxdiff(p, q) for p, q in zip(x, y)] + [0.0])
    if isinstance(x, float):
        return abs(x - y)
    assert x == y, (x, y)
    return 0.0
fa, fb = flat(a["loops"]), flat(b["loops"])
diffs = [f"loops {k}: Lightning {fa.get(k)!r}, ours {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
print(json.dumps({"global_step": t.global_step, "epoch": t.current_epoch, "diffs": diffs,
                  **{k: maxdiff(a[k], b[k]) for k in ["state_dict", "optimizer_states", "lr_schedulers"]}}))
"#;

/// We train 2 epochs; Lightning resumes from our `last.ckpt` to 4 and ends where our own
/// 4-epoch run ends (weights, both optimizers, scheduler, `loops`).
#[test]
fn our_gan_checkpoint_resumes_in_lightning() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (two, four) = (dir.path().join("two"), dir.path().join("four"));
    let (mut m, _vs) = TinyGan::new(4);
    trainer(&two, 2, 0).fit(&mut m, &data(), None).unwrap();
    let (mut m, _vs) = TinyGan::new(4);
    trainer(&four, 4, 0).fit(&mut m, &data(), None).unwrap();
    let out = dir.path().join("lightning");
    let args = [two.join("last.ckpt"), four.join("last.ckpt"), out.clone()];
    let args: Vec<&str> = args.iter().map(|p| p.to_str().unwrap()).collect();
    let Some(got) = python(LIGHTNING_RESUMES, &args) else {
        return;
    };
    eprintln!("{got}");
    assert_eq!(got["global_step"], 4 * 2 * BATCHES);
    assert_eq!(got["epoch"], 4);
    for key in ["state_dict", "optimizer_states", "lr_schedulers"] {
        let d = got[key].as_f64().unwrap();
        assert!(d <= 1e-6, "{key}: max difference {d}");
    }
    loops_compare::assert_no_diffs(&got);
}

/// A manual-optimization run with the trainer's automatic clipping or accumulation is refused
/// as Lightning refuses it; automatic optimization with two optimizers too.
#[test]
fn manual_optimization_refuses_what_lightning_refuses() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = TinyGan::new(0);
    let build = |b: lightning_core::trainer::TrainerBuilder| {
        b.max_epochs(1)
            .logger(false)
            .enable_checkpointing(false)
            .enable_progress_bar(false)
            .default_root_dir(dir.path())
            .build()
            .unwrap()
    };
    let err = build(Trainer::builder().gradient_clip_val(1.0))
        .fit(&mut m, &data(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Automatic gradient clipping is not supported"),
        "{err}"
    );
    let err = build(Trainer::builder().accumulate_grad_batches(2))
        .fit(&mut m, &data(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Automatic gradient accumulation"), "{err}");
}

const LOAD_INTO_ADAM: &str = r#"
import json, sys, torch
ck = torch.load(sys.argv[1], weights_only=True)
sd = ck["state_dict"]
out = {"global_step": ck["global_step"],
       "manual": ck["loops"]["fit_loop"]["epoch_loop.manual_optimization.optim_step_progress"],
       "auto": ck["loops"]["fit_loop"]["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"],
       "batches_that_stepped": ck["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"],
       "steps": []}
for i, net in enumerate(["gen", "disc"]):
    params = [torch.nn.Parameter(sd[f"{net}_fc{j}.{w}"].clone()) for j in (1, 2) for w in ("weight", "bias")]
    opt = torch.optim.Adam(params, lr=1.0, betas=(0.1, 0.2))
    opt.load_state_dict(ck["optimizer_states"][i])
    g = opt.param_groups[0]
    assert g["betas"] == (0.5, 0.999), g["betas"]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    out["steps"].append([int(opt.state[p]["step"].item()) for p in params])
print(json.dumps(out))
"#;

/// The `gan` example: 4 epochs straight equal 2 epochs then `--resume last` to 4, bit for bit
/// (weights, both optimizers, loops), and Lightning's manual step counters; both optimizer
/// states load into `torch.optim.Adam`.
#[test]
fn gan_example_four_epochs_equal_two_plus_resume() {
    let (four, _dir) = gan_four_equals_two_plus_resume("32-true");
    let last = four.checkpoints.join("last.ckpt");
    let Some(got) = lightning_testkit::run_python(LOAD_INTO_ADAM, &[last.to_str().unwrap()]) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_str(
        got.unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let steps = 4 * 29 * 2;
    assert_eq!(got["global_step"], steps);
    assert_eq!(got["manual"]["total"]["completed"], steps);
    assert_eq!(got["manual"]["current"]["ready"], steps);
    assert_eq!(got["auto"]["total"]["completed"], 0);
    assert_eq!(got["batches_that_stepped"], 4 * 29);
    // each Adam had taken one step per batch (116), and takes one more here
    assert_eq!(
        got["steps"],
        serde_json::json!([[117, 117, 117, 117], [117, 117, 117, 117]])
    );
}

/// The same under 16-mixed (on the CPU: the grad scaler without autocast): manual_backward
/// scales, each step unscales and updates the scaler, whose state resumes exactly.
#[test]
fn gan_example_resumes_exactly_under_16_mixed() {
    let (four, _dir) = gan_four_equals_two_plus_resume("16-mixed");
    let last = load(&four.checkpoints.join("last.ckpt"));
    let scale = field(&last, "MixedPrecision")
        .get("scale")
        .and_then(Value::as_f64);
    assert!(scale.is_some_and(|s| s > 0.0), "{scale:?}");
}

/// Trains the gan example 4 epochs, and 2 then `--resume last` to 4, and checks both end
/// with the same file bit for bit; returns the 4-epoch run.
fn gan_four_equals_two_plus_resume(precision: &str) -> (gan::Outcome, tempfile::TempDir) {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let args = |root: &Path, epochs: &str, resume: bool| {
        let mut a = vec![
            "gan",
            "--max-epochs",
            epochs,
            "--root",
            root.to_str().unwrap(),
            "--seed",
            "7",
            "--precision",
            precision,
        ];
        if resume {
            a.extend(["--resume", "last"]);
        }
        gan::Args::parse_from(a)
    };
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    let start = std::time::Instant::now();
    let four = gan::train(&args(&straight, "4", false)).unwrap();
    let two = gan::train(&args(&resumed, "2", false)).unwrap();
    let again = gan::train(&args(&resumed, "4", true)).unwrap();
    eprintln!("3 gan runs in {:.2}s", start.elapsed().as_secs_f64());
    // 1797 images in batches of 64: 29 batches an epoch, 2 optimizer steps each
    assert_eq!((two.epoch, two.global_step), (2, 2 * 29 * 2));
    assert_eq!((four.epoch, four.global_step), (4, 4 * 29 * 2));
    assert_eq!((again.epoch, again.global_step), (4, 4 * 29 * 2));
    let (a, b) = (
        load(&four.checkpoints.join("last.ckpt")),
        load(&again.checkpoints.join("last.ckpt")),
    );
    assert_eq!(a.get("MixedPrecision"), b.get("MixedPrecision"), "scaler");
    for key in [
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "loops",
        "global_step",
        "epoch",
    ] {
        assert_eq!(field(&a, key), field(&b, key), "{key}");
    }
    let mut names = trainer_util::files_under(&straight.join("checkpoints"));
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    (four, dir)
}
