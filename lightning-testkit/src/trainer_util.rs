//! A tiny model and data shared by the trainer tests (hand-written Traverse/Hyperparameters
//! so the trainer tests depend only on the runtime traits).

use lightning_core::callbacks::{Callback, TrainerContext};
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::hparams::{HparamError, HparamField, Hyperparameters};
use lightning_core::lightning_module::{
    Batch, Interval, OptimizerConfig, SchedulerConfig, StepContext,
};
use lightning_core::optim::{Adam, AdamConfig, Optimizer, Schedule, Scheduler, Sgd, SgdConfig};
use lightning_core::prelude::*;
use lightning_core::TensorKind;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tch::{nn, nn::Module, Device, Kind, Tensor};

pub use crate::serial;

/// Config of [`Tiny`].
#[derive(Clone, Debug, PartialEq)]
pub struct TinyHp {
    pub hidden: i64,
    pub lr: f64,
    pub dropout: f64,
    /// "adam" or "sgd".
    pub optimizer: String,
    /// StepLR every epoch (0: none).
    pub step_lr: i64,
}

impl Default for TinyHp {
    fn default() -> Self {
        TinyHp {
            hidden: 8,
            lr: 0.05,
            dropout: 0.2,
            optimizer: "adam".into(),
            step_lr: 1,
        }
    }
}

impl Hyperparameters for TinyHp {
    fn to_value(&self) -> Value {
        let mut v = Value::dict();
        v.insert("hidden", self.hidden);
        v.insert("lr", self.lr);
        v.insert("dropout", self.dropout);
        v.insert("optimizer", self.optimizer.as_str());
        v.insert("step_lr", self.step_lr);
        v
    }
    fn from_value(v: &Value) -> Result<Self, HparamError> {
        let d = TinyHp::default();
        Ok(TinyHp {
            hidden: v.get("hidden").and_then(Value::as_i64).unwrap_or(d.hidden),
            lr: v.get("lr").and_then(Value::as_f64).unwrap_or(d.lr),
            dropout: v
                .get("dropout")
                .and_then(Value::as_f64)
                .unwrap_or(d.dropout),
            optimizer: v
                .get("optimizer")
                .and_then(Value::as_str)
                .map_or(d.optimizer, str::to_owned),
            step_lr: v
                .get("step_lr")
                .and_then(Value::as_i64)
                .unwrap_or(d.step_lr),
        })
    }
    fn set_str(&mut self, key: &str, _value: &str) -> Result<(), HparamError> {
        Err(HparamError::Unknown {
            field: key.into(),
            valid: vec![],
        })
    }
    fn fields() -> Vec<HparamField> {
        vec![]
    }
}

/// A 4 -> hidden -> 3 MLP with dropout.
pub struct Tiny {
    pub hp: TinyHp,
    pub fc1: nn::Linear,
    pub fc2: nn::Linear,
    /// Validation runs seen (for hook-order tests).
    pub val_runs: Arc<AtomicUsize>,
    /// Fail in training_step at this global step.
    pub fail_at: Option<i64>,
    /// Log `train_loss` with `sync_dist` (averaged over DDP ranks).
    pub sync_dist: bool,
    /// Step the StepLR (step_size 1) every this many batches (`interval="step"`) instead of
    /// every `step_lr` epochs; 0: per epoch.
    pub sched_every_step: usize,
    /// Log `val_loss` with `on_step=True` too.
    pub val_on_step: bool,
    last_val_batch: usize,
}

impl Traverse for Tiny {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (n, l) in [("fc1", &self.fc1), ("fc2", &self.fc2)] {
            let p = if prefix.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}.{n}")
            };
            f(&format!("{p}.weight"), &l.ws, TensorKind::Parameter);
            if let Some(b) = &l.bs {
                f(&format!("{p}.bias"), b, TensorKind::Parameter);
            }
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        for (n, l) in [("fc1", &mut self.fc1), ("fc2", &mut self.fc2)] {
            let p = if prefix.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}.{n}")
            };
            f(&format!("{p}.weight"), &mut l.ws, TensorKind::Parameter);
            if let Some(b) = &mut l.bs {
                f(&format!("{p}.bias"), b, TensorKind::Parameter);
            }
        }
    }
}

impl HasHparams for Tiny {
    type Hparams = TinyHp;
    fn hparams(&self) -> &TinyHp {
        &self.hp
    }
}

impl Tiny {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.fc1
            .forward(x)
            .relu()
            .dropout(self.hp.dropout, train)
            .apply(&self.fc2)
    }
    /// A fresh model with weights from `init_seed`.
    pub fn new(hp: TinyHp, init_seed: i64) -> (Tiny, nn::VarStore) {
        tch::manual_seed(init_seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Tiny::build(&hp, &vs.root()).expect("build");
        (m, vs)
    }
    pub fn params(&self) -> Vec<Tensor> {
        let mut out = vec![];
        self.visit("", &mut |_, t, _| out.push(t.shallow_clone()));
        out
    }
    /// name -> values, for bitwise comparisons.
    pub fn weights(&self) -> Vec<(String, Vec<f32>)> {
        let mut out = vec![];
        self.visit("", &mut |n, t, _| {
            out.push((
                n.to_owned(),
                Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap(),
            ))
        });
        out
    }
}

impl LightningModule for Tiny {
    fn build(hp: &TinyHp, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(Tiny {
            hp: hp.clone(),
            fc1: nn::linear(vs / "fc1", 4, hp.hidden, Default::default()),
            fc2: nn::linear(vs / "fc2", hp.hidden, 3, Default::default()),
            val_runs: Arc::new(AtomicUsize::new(0)),
            fail_at: None,
            sync_dist: false,
            sched_every_step: 0,
            val_on_step: false,
            last_val_batch: usize::MAX,
        })
    }
    fn training_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        if self.fail_at == Some(ctx.global_step()) {
            return Err(lightning_core::Error::Msg("planned failure".into()));
        }
        let loss = self
            .forward(&b[0], ctx.training())
            .cross_entropy_for_logits(&b[1]);
        ctx.log("train_loss", &loss)
            .prog_bar(true)
            .sync_dist(self.sync_dist);
        Ok(loss)
    }
    fn validation_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        if i == 0 {
            self.val_runs.fetch_add(1, Ordering::SeqCst);
        }
        self.last_val_batch = i;
        let out = self.forward(&b[0], ctx.training());
        ctx.log("val_loss", out.cross_entropy_for_logits(&b[1]))
            .on_step(self.val_on_step);
        ctx.log(
            "val_acc",
            out.argmax(-1, false)
                .eq_tensor(&b[1])
                .to_kind(Kind::Float)
                .mean(Kind::Float),
        );
        Ok(())
    }
    fn test_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        let out = self.forward(&b[0], false);
        ctx.log("test_loss", out.cross_entropy_for_logits(&b[1]));
        Ok(())
    }
    fn predict_step(
        &mut self,
        b: &Batch,
        _i: usize,
        _ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        Ok(self.forward(&b[0], false).argmax(-1, false))
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let step_lr = self.hp.step_lr;
        if self.hp.optimizer == "sgd" {
            let cfg = SgdConfig {
                lr: self.hp.lr,
                momentum: 0.9,
                ..Default::default()
            };
            with_step_lr(
                Sgd::new(self.params(), cfg)?,
                step_lr,
                self.sched_every_step,
            )
        } else {
            let cfg = AdamConfig {
                lr: self.hp.lr,
                ..Default::default()
            };
            with_step_lr(
                Adam::new(self.params(), cfg)?,
                step_lr,
                self.sched_every_step,
            )
        }
    }
}

/// `opt` with StepLR(`step_lr`, 0.7) per epoch (none when `step_lr` is 0).
/// `opt` with StepLR(gamma 0.7): every `every_step` optimizer steps (step interval with that
/// frequency) when set, else every `step_lr` epochs when set, else no scheduler.
fn with_step_lr<O: Optimizer + 'static>(
    mut opt: O,
    step_lr: i64,
    every_step: usize,
) -> lightning_core::Result<OptimizerConfig> {
    let (step_size, interval) = if every_step > 0 {
        (1, Interval::Step)
    } else if step_lr > 0 {
        (step_lr, Interval::Epoch)
    } else {
        return Ok(OptimizerConfig::new(opt));
    };
    let s = Scheduler::new(
        &mut opt,
        Schedule::Step {
            step_size,
            gamma: 0.7,
        },
    )?;
    let mut sc = SchedulerConfig::new(s).interval(interval);
    if every_step > 0 {
        sc = sc.frequency(every_step);
    }
    Ok(OptimizerConfig::new(opt).scheduler_config(sc))
}

/// The Python Lightning twin of [`Tiny`] (same parameter names, hyperparameters, Adam and
/// StepLR(`step_lr`, 0.7) per epoch), for the interop tests; defines `torch`, `pl` and `Tiny`.
pub const PY_TINY: &str = r#"
import torch, lightning.pytorch as pl
class Tiny(pl.LightningModule):
    def __init__(self, hidden=8, lr=0.05, dropout=0.2, optimizer="adam", step_lr=1):
        super().__init__(); self.save_hyperparameters()
        self.fc1 = torch.nn.Linear(4, hidden); self.fc2 = torch.nn.Linear(hidden, 3)
    def forward(self, x):
        return self.fc2(torch.nn.functional.dropout(torch.relu(self.fc1(x)), self.hparams.dropout, self.training))
    def training_step(self, b, i):
        return torch.nn.functional.cross_entropy(self(b[0]), b[1])
    def configure_optimizers(self):
        o = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, self.hparams.step_lr, gamma=0.7)}
"#;

/// A learnable 3-class problem with 4 features: `n` rows from `seed`.
pub fn data(n: i64, batch: i64, shuffle: bool) -> DataModule {
    tch::manual_seed(1234);
    let x = Tensor::randn([n, 4], (Kind::Float, Device::Cpu));
    let y = (x.narrow(1, 0, 1).squeeze_dim(1) + x.narrow(1, 1, 1).squeeze_dim(1) * 0.5)
        .gt(0.3)
        .to_kind(Kind::Int64)
        + x.narrow(1, 2, 1)
            .squeeze_dim(1)
            .gt(1.0)
            .to_kind(Kind::Int64);
    let ds = TensorDataset::new(vec![x, y]).unwrap();
    let [train, val] = ds.random_split([n - n / 4, n / 4], 3).unwrap();
    DataModule::new()
        .train(DataLoader::new(train.clone(), batch).shuffle(shuffle))
        .val(DataLoader::new(val.clone(), batch))
        .test(DataLoader::new(val.clone(), batch))
        .predict(DataLoader::new(val, batch))
}

/// A callback that saves `dir/<name>` at given global steps (from `on_train_batch_end`)
/// and reports `dir` as its checkpoint directory (for `CkptPath::Last`) and the last file
/// as its best path (for `CkptPath::Best`).
pub struct SaveAt {
    pub dir: PathBuf,
    pub steps: Vec<i64>,
    pub name: String,
    pub saved: Vec<PathBuf>,
    pub weights_only: bool,
}

impl SaveAt {
    pub fn new(dir: &Path, steps: &[i64], name: &str) -> Self {
        SaveAt {
            dir: dir.to_owned(),
            steps: steps.to_vec(),
            name: name.into(),
            saved: vec![],
            weights_only: false,
        }
    }
}

impl Callback for SaveAt {
    fn state_key(&self) -> String {
        "SaveAt".into()
    }
    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        if self.steps.contains(&t.run.global_step) {
            let _ = std::fs::create_dir_all(&self.dir);
            let name = self.name.replace("{step}", &t.run.global_step.to_string());
            let p = self.dir.join(name);
            t.save_checkpoint(&p, self.weights_only, self)?;
            self.saved.push(p);
        }
        Ok(())
    }
    fn state_dict(&self) -> Value {
        let mut v = Value::dict();
        v.insert("saved", self.saved.len());
        v
    }
    fn checkpoint_dirpath(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }
    fn best_model_path(&self) -> Option<PathBuf> {
        self.saved.last().cloned()
    }
    fn is_checkpoint_callback(&self) -> bool {
        true
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A trainer for the resume tests: seeded, quiet, no logger, under `root`.
pub fn quiet_builder(root: &Path) -> lightning_core::trainer::TrainerBuilder {
    lightning_core::trainer::Trainer::builder()
        .enable_progress_bar(false)
        .seed(11)
        .default_root_dir(root)
        .logger(false)
}

/// The weights and the optimizer/scheduler state of a finished run, as saved (without
/// `loops`, our resume entry and the callbacks, which differ between a straight and a
/// resumed run by design).
pub fn final_state<M: LightningModule>(
    m: &M,
    t: &mut lightning_core::trainer::Trainer,
    dir: &Path,
) -> Value {
    let p = dir.join("final.ckpt");
    t.save_checkpoint(m, &p, false).unwrap();
    let mut v = lightning_core::checkpoint::load(&p).unwrap();
    for k in ["loops", lightning_core::trainer::RESUME_KEY, "callbacks"] {
        v.as_dict_mut()
            .unwrap()
            .shift_remove(&lightning_core::Key::from(k));
    }
    v
}

/// Implements `Traverse` and `HasHparams` for a test module wrapping a [`Tiny`] in its field
/// `$field`, by delegating to it (the wrapper then adds or changes `LightningModule` hooks).
#[macro_export]
macro_rules! wraps_tiny {
    ($ty:ty, $field:ident) => {
        impl lightning_core::traverse::Traverse for $ty {
            fn visit(
                &self,
                p: &str,
                f: &mut dyn FnMut(&str, &tch::Tensor, lightning_core::TensorKind),
            ) {
                self.$field.visit(p, f)
            }
            fn visit_mut(
                &mut self,
                p: &str,
                f: &mut dyn FnMut(&str, &mut tch::Tensor, lightning_core::TensorKind),
            ) {
                self.$field.visit_mut(p, f)
            }
        }
        impl lightning_core::HasHparams for $ty {
            type Hparams = $crate::trainer_util::TinyHp;
            fn hparams(&self) -> &$crate::trainer_util::TinyHp {
                &self.$field.hp
            }
        }
    };
}
