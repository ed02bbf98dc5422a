//! The training of tests/distributed/fsdp.rs: `child` is rank 0 of a `strategy="fsdp"` job
//! on the CPU (it launches the other ranks), or the one process of the single-process
//! reference (`devices` 0: no FSDP, both ranks' batches together).

use crate::roles::ddp::{data, reference_data, Slow, BATCH, SLOW};
use crate::trainer_util::{Tiny, TinyHp};
use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::layers::FsdpUnit;
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, FsdpOptions, StateDictType, Strategy, Trainer};
use lightning_core::traverse::join_name;
use lightning_core::TensorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// `root`, `devices` (0: the single-process reference), `max_epochs`, `resume` (a path, or
/// `last`, or `-`), `state_dict_type`, then optionally `async` (async checkpointing) or a
/// [`Stack`] model: `stack` (plain layers) or `units` (its hidden layers `FsdpUnit`s).
pub struct Args {
    pub root: PathBuf,
    pub devices: usize,
    pub max_epochs: i64,
    pub resume: Option<CkptPath>,
    pub state_dict_type: StateDictType,
    pub asynchronous: bool,
    /// Train a [`Stack`] (with `FsdpUnit`s when `Some(true)`) instead of `Tiny`.
    pub stack: Option<bool>,
}

/// Linear 4 -> 32 -> 32 -> 32 -> 3 with ReLUs; the three hidden layers are `FsdpUnit`s or
/// plain layers, the same computation either way.
pub struct Stack {
    hp: TinyHp,
    layers: Vec<StackLayer>,
    head: nn::Linear,
}

enum StackLayer {
    Unit(FsdpUnit<nn::Linear>),
    Plain(nn::Linear),
}

impl Stack {
    pub fn new(units: bool) -> (Stack, nn::VarStore) {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let dims = [(4, 32), (32, 32), (32, 32)];
        let layers = dims
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| {
                let l = nn::linear(&root / "layers" / i, a, b, Default::default());
                match units {
                    true => StackLayer::Unit(FsdpUnit::new(l)),
                    false => StackLayer::Plain(l),
                }
            })
            .collect();
        let head = nn::linear(&root / "head", 32, 3, Default::default());
        let hp = TinyHp {
            dropout: 0.0,
            ..TinyHp::default()
        };
        (Stack { hp, layers, head }, vs)
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for l in &self.layers {
            h = match l {
                StackLayer::Unit(u) => u.forward_t(&h, true),
                StackLayer::Plain(p) => p.forward(&h),
            }
            .relu();
        }
        self.head.forward(&h)
    }
}

impl Traverse for Stack {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (i, l) in self.layers.iter().enumerate() {
            let p = join_name(prefix, &format!("layers.{i}"));
            match l {
                StackLayer::Unit(u) => u.visit(&p, f),
                StackLayer::Plain(l) => l.visit(&p, f),
            }
        }
        self.head.visit(&join_name(prefix, "head"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = join_name(prefix, &format!("layers.{i}"));
            match l {
                StackLayer::Unit(u) => u.visit_mut(&p, f),
                StackLayer::Plain(l) => l.visit_mut(&p, f),
            }
        }
        self.head.visit_mut(&join_name(prefix, "head"), f);
    }
}

impl HasHparams for Stack {
    type Hparams = TinyHp;
    fn hparams(&self) -> &TinyHp {
        &self.hp
    }
}

impl LightningModule for Stack {
    fn build(_hp: &TinyHp, _vs: &nn::Path) -> lightning_core::Result<Self> {
        Err(lightning_core::Error::Msg("Stack::new builds it".into()))
    }
    fn training_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let loss = self.forward(&b[0]).cross_entropy_for_logits(&b[1]);
        ctx.log("train_loss", &loss).sync_dist(true);
        Ok(loss)
    }
    fn validation_step(
        &mut self,
        b: &Batch,
        _i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        let loss = self.forward(&b[0]).cross_entropy_for_logits(&b[1]);
        ctx.log("val_loss", loss).sync_dist(true);
        Ok(())
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let cfg = AdamConfig {
            lr: 0.01,
            ..Default::default()
        };
        Ok(OptimizerConfig::new(Adam::new(self.parameters(), cfg)?))
    }
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let get = |i: usize| args.get(i).cloned().unwrap_or_default();
        Ok(Args {
            root: PathBuf::from(get(0)),
            devices: get(1).parse().map_err(|_| "DEVICES")?,
            max_epochs: get(2).parse().map_err(|_| "MAX_EPOCHS")?,
            resume: match get(3).as_str() {
                "-" | "" => None,
                "last" => Some(CkptPath::Last),
                p => Some(CkptPath::Path(p.into())),
            },
            state_dict_type: get(4).parse().map_err(|e| format!("{e}"))?,
            asynchronous: get(5) == "async",
            stack: match get(5).as_str() {
                "stack" => Some(false),
                "units" => Some(true),
                _ => None,
            },
        })
    }
}

/// The full weights a run ends with, written by `save_checkpoint` (weights only) to `path`:
/// a `.ckpt` file, or a sharded directory.
pub fn final_weights_path(root: &Path) -> PathBuf {
    root.join("final.ckpt")
}

/// Trains; every rank returns after `fit` and the final save.
pub fn train(a: &Args) -> lightning_core::Result<()> {
    let hp = TinyHp {
        dropout: 0.0,
        ..TinyHp::default()
    };
    let (mut m, _vs) = Tiny::new(hp, 5);
    m.sync_dist = true;
    let ckpt = ModelCheckpoint::builder()
        .dirpath(a.root.join("ck"))
        .monitor("val_loss")
        .save_top_k(2)
        .save_last(SaveLast::True)
        .build()?;
    let mut b = Trainer::builder()
        .enable_progress_bar(false)
        .seed(13)
        .default_root_dir(&a.root)
        .max_epochs(a.max_epochs)
        .num_sanity_val_steps(1)
        .async_checkpointing(a.asynchronous)
        .callback(ckpt);
    // Slow steps, rank 0 printing `step N` (for the preemption test).
    if let Some(ms) = std::env::var(SLOW).ok().and_then(|s| s.parse::<u64>().ok()) {
        b = b.callback(Slow(ms));
    }
    let data = if a.devices > 0 {
        b = b
            .strategy(Strategy::Fsdp(FsdpOptions {
                state_dict_type: a.state_dict_type,
                timeout: Duration::from_secs(60),
                ..FsdpOptions::default()
            }))
            .devices(a.devices)
            .accelerator("cpu");
        data(BATCH)
    } else {
        reference_data()?
    };
    let mut t = b.build()?;
    if let Some(units) = a.stack {
        let (mut s, _vs) = Stack::new(units);
        t.fit(&mut s, &data, a.resume.clone())?;
        if t.is_global_zero() {
            let peak = t.fsdp_peak_gathered_bytes().unwrap_or(0);
            println!("peak_gathered_bytes {peak}");
        }
        return t.save_checkpoint(&s, final_weights_path(&a.root), true);
    }
    t.fit(&mut m, &data, a.resume.clone())?;
    if t.was_preempted() && t.is_global_zero() {
        println!("preempted at step {}", t.global_step());
    }
    t.save_checkpoint(&m, final_weights_path(&a.root), true)
}

/// The child process.
pub fn child(args: &[String]) {
    let r = Args::parse(args)
        .map_err(|e| {
            lightning_core::Error::Msg(format!(
                "usage: fsdp ROOT DEVICES MAX_EPOCHS RESUME full|sharded [async]: {e}"
            ))
        })
        .and_then(|a| train(&a))
        .and_then(|()| lightning_core::trainer::finish_distributed());
    if let Err(e) = r {
        eprintln!("fsdp child failed: {e}");
        std::process::exit(1);
    }
    println!("fsdp child ok");
}
