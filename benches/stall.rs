//! Training stall per checkpoint, synchronous vs async saving.
//!
//! The stall is the time the step loop is blocked by a save: two timing callbacks sit right
//! before and right after `ModelCheckpoint` (which saves from `on_train_batch_end` every
//! `--every` steps), and the gap between them on a saving step is the stall. The model is the
//! digits MLP scaled up (64 -> hidden -> 6 x (hidden -> hidden) -> 10; `--hidden 4096` gives
//! ~101 M parameters, a ~1.2 GB checkpoint with AdamW's two moments). In the same run the
//! snapshot copy of the same checkpoint tree is timed on its own (CPU: a copy of every
//! tensor; CUDA: device -> pinned host, as the async saver does): the anchor the async stall
//! should approach.
//!
//! ```text
//! cargo bench --bench stall                                   # CPU, ~100 M params
//! cargo bench --bench stall -- --device cuda --hidden 3400    # GPU, ~67 M params (0.8 GB)
//! target/release/deps/stall-<hash> --bench --device cuda      # the built binary, standalone
//! ```
//!
//! Options: `--device cpu|cuda`, `--hidden N`, `--batch N`, `--every N` (steps between saves),
//! `--saves N` (per mode), `--top-k K` (`ModelCheckpoint.save_top_k`, default -1: keep every
//! file; with a k >= 1 each save queues the removal of an older file, which `ModelCheckpoint`
//! defers while the async write is in flight instead of waiting for it),
//! `--dir PATH` (where checkpoints go; default a temp dir). Without
//! `--bench` (as `cargo test --all-targets` runs it) a tiny smoke configuration runs.

use clap::Parser;
use lightning_core::callbacks::{Callback, ModelCheckpoint, TrainerContext};
use lightning_core::checkpoint;
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig};
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use lightning_testkit::bench::{positive, CargoArgs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// The scaled-up digits MLP's hyperparameters.
#[derive(Hyperparameters, Clone, Debug)]
pub struct BigConfig {
    /// Hidden width (6 hidden layers of hidden x hidden).
    #[hparam(default = 4096)]
    pub hidden: i64,
}

/// 64 -> hidden -> 6 x (hidden -> hidden) -> 10, ReLU.
#[lightning_module]
pub struct BigMlp {
    #[hparams]
    hp: BigConfig,
    fc_in: nn::Linear,
    h1: nn::Linear,
    h2: nn::Linear,
    h3: nn::Linear,
    h4: nn::Linear,
    h5: nn::Linear,
    h6: nn::Linear,
    head: nn::Linear,
}

impl LightningModule for BigMlp {
    fn build(hp: &BigConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let h = hp.hidden;
        let lin = |name: &str, i, o| nn::linear(vs / name, i, o, Default::default());
        Ok(BigMlp {
            hp: hp.clone(),
            fc_in: lin("fc_in", 64, h),
            h1: lin("h1", h, h),
            h2: lin("h2", h, h),
            h3: lin("h3", h, h),
            h4: lin("h4", h, h),
            h5: lin("h5", h, h),
            h6: lin("h6", h, h),
            head: lin("head", h, 10),
        })
    }

    fn training_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        _ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let mut x = batch[0].apply(&self.fc_in).relu();
        for l in [&self.h1, &self.h2, &self.h3, &self.h4, &self.h5, &self.h6] {
            x = x.apply(l).relu();
        }
        Ok(x.apply(&self.head).cross_entropy_for_logits(&batch[1]))
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let opt = Adam::adamw(self.parameters(), AdamConfig::adamw())
            .map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
        Ok(OptimizerConfig::new(opt))
    }
}

/// (global step, hook before `ModelCheckpoint` ran, hook after it ran).
type Tick3 = (i64, Instant, Option<Instant>);

/// Records when the hooks before and after `ModelCheckpoint` run on each step.
#[derive(Clone, Default)]
struct Clock(Arc<Mutex<Vec<Tick3>>>);

struct Tick {
    clock: Clock,
    after: bool,
}

impl Callback for Tick {
    fn state_key(&self) -> String {
        format!("Tick{}", self.after)
    }
    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        let now = Instant::now();
        let mut v = self.clock.0.lock().unwrap_or_else(|e| e.into_inner());
        if self.after {
            if let Some(last) = v.last_mut() {
                last.2 = Some(now);
            }
        } else {
            v.push((t.run.global_step, now, None));
        }
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

struct Opts {
    device: Device,
    hidden: i64,
    batch: i64,
    every: i64,
    saves: i64,
    top_k: i64,
    dir: Option<PathBuf>,
    full: bool,
}

/// The command line; sizes default to the measurement's with `--bench`, to the smoke run's
/// without it.
#[derive(Parser, Debug)]
#[command(about = "Training stall per checkpoint save, async vs sync")]
struct Cli {
    #[command(flatten)]
    cargo: CargoArgs,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Hidden width of the model (default 4096; smoke 32).
    #[arg(long, value_parser = positive::<i64>())]
    hidden: Option<i64>,
    /// Rows per batch.
    #[arg(long, default_value_t = 16, value_parser = positive::<i64>())]
    batch: i64,
    /// Save every this many steps (default 4; smoke 2).
    #[arg(long, value_parser = positive::<i64>())]
    every: Option<i64>,
    /// Saves per run (default 3; smoke 2).
    #[arg(long, value_parser = positive::<i64>())]
    saves: Option<i64>,
    /// `save_top_k` of the checkpoint callback (-1 keeps every file).
    #[arg(long = "top-k", default_value_t = -1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..))]
    top_k: i64,
    /// Directory for the checkpoints (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse() -> Result<Opts, String> {
    let cli = Cli::parse();
    let full = cli.cargo.bench;
    Ok(Opts {
        device: lightning_rs::digits::device(&cli.device).map_err(|e| e.to_string())?,
        hidden: cli.hidden.unwrap_or(if full { 4096 } else { 32 }),
        batch: cli.batch,
        every: cli.every.unwrap_or(if full { 4 } else { 2 }),
        saves: cli.saves.unwrap_or(if full { 3 } else { 2 }),
        top_k: cli.top_k,
        dir: cli.dir,
        full,
    })
}

/// Trains `every * saves` steps saving every `every` steps; returns the stall of each save
/// and the median blocked time of the steps that did not save.
fn measure(o: &Opts, dir: &Path, asynchronous: bool) -> lightning_core::Result<(Vec<f64>, f64)> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = BigMlp::build(&BigConfig { hidden: o.hidden }, &vs.root())?;
    let steps = o.every * o.saves;
    let n = o.batch * (steps + 1);
    let x = Tensor::randn([n, 64], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let data = DataModule::new().train(DataLoader::new(TensorDataset::new(vec![x, y])?, o.batch));
    let clock = Clock::default();
    let ckpt = ModelCheckpoint::builder()
        .dirpath(dir)
        .filename("stall-{step}")
        .every_n_train_steps(o.every)
        .save_top_k(o.top_k)
        .build()?;
    let mut trainer = Trainer::builder()
        .max_steps(steps)
        .enable_progress_bar(false)
        .logger(false)
        .seed(0)
        .device(o.device)
        .async_checkpointing(asynchronous)
        .callback(Tick {
            clock: clock.clone(),
            after: false,
        })
        .callback(ckpt)
        .callback(Tick {
            clock: clock.clone(),
            after: true,
        })
        .build()?;
    trainer.fit(&mut model, &data, None)?;
    let ticks = clock.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (mut saves, mut others) = (Vec::new(), Vec::new());
    for (step, before, after) in ticks {
        let blocked = after.map_or(f64::NAN, |a| a.duration_since(before).as_secs_f64());
        if step % o.every == 0 {
            saves.push(blocked);
        } else {
            others.push(blocked);
        }
    }
    others.sort_by(f64::total_cmp);
    let base = others.get(others.len() / 2).copied().unwrap_or(0.0);
    Ok((saves, base))
}

/// Times the snapshot the async saver takes of the same tree: each tensor copied to host
/// (pinned when it is on a GPU). Returns (seconds, bytes); best of three.
fn snapshot_time(ckpt: &Path, device: Device) -> lightning_core::Result<(f64, u64)> {
    let tree = checkpoint::load(ckpt).map_err(|e| lightning_core::Error::Msg(format!("{e}")))?;
    let mut tensors = Vec::new();
    tree.visit_tensors("", &mut |_, t| tensors.push(t.to_device(device)));
    let bytes: u64 = tensors
        .iter()
        .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
        .sum();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(0);
        }
        let t0 = Instant::now();
        let copies: Vec<Tensor> = tensors
            .iter()
            .map(|t| match device {
                Device::Cpu => t.copy(),
                _ => {
                    // Allocated as the saver's snapshot is.
                    let mut dst = lightning_core::cuda::pinned_host(&t.size(), t.kind())
                        .unwrap_or_else(|| Tensor::empty(t.size(), (t.kind(), Device::Cpu)));
                    dst.copy_(t);
                    dst
                }
            })
            .collect();
        best = best.min(t0.elapsed().as_secs_f64());
        drop(copies);
    }
    Ok((best, bytes))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn run(o: &Opts) -> lightning_core::Result<()> {
    let tmp;
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| lightning_core::Error::Io {
                context: "creating a temporary directory".into(),
                source: e,
            })?;
            tmp.path().to_owned()
        }
    };
    let params = 64 * o.hidden + 6 * o.hidden * o.hidden + 10 * o.hidden + 7 * o.hidden + 10;
    println!(
        "stall bench: {:.1} M params (+AdamW state), device {:?}, batch {}, a save every {} \
         steps, {} saves per mode, save_top_k {}{}",
        params as f64 / 1e6,
        o.device,
        o.batch,
        o.every,
        o.saves,
        o.top_k,
        if o.full {
            ""
        } else {
            " (smoke run; pass --bench)"
        }
    );
    let mut rows = Vec::new();
    for asynchronous in [false, true] {
        let sub = dir.join(if asynchronous { "async" } else { "sync" });
        let (saves, base) = measure(o, &sub, asynchronous)?;
        if saves.len() as i64 != o.saves || saves.iter().any(|s| !s.is_finite()) {
            return Err(lightning_core::Error::Msg(format!(
                "expected {} timed saves, got {saves:?}",
                o.saves
            )));
        }
        let name = if asynchronous { "async" } else { "sync" };
        println!(
            "  {name:5}: stall per save {:?} s (mean {:.4} s); a step without a save blocks {:.6} s there",
            saves.iter().map(|s| (s * 1e4).round() / 1e4).collect::<Vec<_>>(),
            mean(&saves),
            base
        );
        if saves.len() > 1 {
            // On a GPU the first save also allocates its pinned host blocks (cudaHostAlloc),
            // which the caching host allocator then reuses: the steady state is what a long
            // run sees.
            println!(
                "  {name:5}: stall after the first save (mean of saves 2..{}): {:.4} s",
                saves.len(),
                mean(&saves[1..])
            );
        }
        rows.push((mean(&saves), sub));
    }
    let last = std::fs::read_dir(&rows[0].1)
        .map_err(|e| lightning_core::Error::Io {
            context: format!("listing {}", rows[0].1.display()),
            source: e,
        })?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .ok_or_else(|| lightning_core::Error::Msg("no checkpoint was written".into()))?;
    let size = std::fs::metadata(&last).map_or(0, |m| m.len());
    let (snap, bytes) = snapshot_time(&last, o.device)?;
    let (sync, asy) = (rows[0].0, rows[1].0);
    println!(
        "  checkpoint {:.3} GB; snapshot copy of its {:.3} GB of tensors: {:.4} s ({:.2} GB/s)",
        size as f64 / 1e9,
        bytes as f64 / 1e9,
        snap,
        bytes as f64 / 1e9 / snap
    );
    println!("| device | params | sync stall | async stall | async/sync | snapshot copy | async/snapshot |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {:?} | {:.1} M | {:.3} s | {:.3} s | {:.3} | {:.3} s | {:.2} |",
        o.device,
        params as f64 / 1e6,
        sync,
        asy,
        asy / sync,
        snap,
        asy / snap
    );
    Ok(())
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&o) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
