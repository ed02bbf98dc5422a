//! Sharded checkpoint save and load with 2 FSDP ranks on the CPU (Gloo), against anchors
//! measured in the same run:
//!
//! 1. ours, `state_dict_type="sharded"`: `Trainer::save_checkpoint` (synchronous: until the
//!    directory is published), each rank writing its half into its own `.distcp` file;
//! 2. ours, `state_dict_type="full"`: the state gathered, global rank 0 writes one `.ckpt`
//!    (what a rank-0 save costs);
//! 3. PyTorch's `torch.distributed.checkpoint.save` of FSDP2's state (`get_state_dict`,
//!    `fully_shard` on the root) under torchrun, and `dcp.load` of it back into the shards.
//!
//! Load: each rank reads its rows of every weight and moment from the directory (what an
//! FSDP resume reads), `dcp.load` reads each rank's blocks into its shards.
//! The state is an MLP's weights and Adam's two moments (about 1 GiB with `--bench`); each
//! figure is the median of `--repeats` saves (or loads) on rank 0, files in the page cache of
//! one local disk.
//!
//! ```text
//! cargo bench --bench fsdp_ckpt -- --bench
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) a smoke run saves and loads a
//! tiny model once on 2 ranks, without Python.

use clap::Parser;
use lightning_core::checkpoint::dcp;
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig};
use lightning_core::prelude::*;
use lightning_core::trainer::{FsdpOptions, StateDictType, Strategy, Trainer};
use lightning_testkit::bench::{positive, CargoArgs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tch::{nn, Kind, Tensor};

/// Rank 0 names the shared scratch directory here before the first `fit` launches rank 1.
const DIR_VAR: &str = "LIGHTNING_RS_FSDP_CKPT_BENCH_DIR";
const WORLD: usize = 2;

/// The MLP's sizes.
#[derive(Hyperparameters, Clone, Debug)]
pub struct WideConfig {
    /// Width of every layer.
    #[hparam(default = 4096)]
    pub width: i64,
}

/// Five `width x width` layers (ReLU), a sum of squares as the loss.
#[lightning_module]
pub struct Wide {
    #[hparams]
    hp: WideConfig,
    l0: nn::Linear,
    l1: nn::Linear,
    l2: nn::Linear,
    l3: nn::Linear,
    l4: nn::Linear,
}

impl LightningModule for Wide {
    fn build(hp: &WideConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let w = hp.width;
        let lin = |n: &str| nn::linear(vs / n, w, w, Default::default());
        Ok(Wide {
            hp: hp.clone(),
            l0: lin("l0"),
            l1: lin("l1"),
            l2: lin("l2"),
            l3: lin("l3"),
            l4: lin("l4"),
        })
    }

    fn training_step(
        &mut self,
        b: &Batch,
        _: usize,
        _: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let h = [&self.l0, &self.l1, &self.l2, &self.l3, &self.l4]
            .iter()
            .fold(b[0].shallow_clone(), |x, l| x.apply(*l).relu());
        Ok(h.square().mean(Kind::Float))
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        Ok(OptimizerConfig::new(Adam::new(
            self.parameters(),
            AdamConfig::default(),
        )?))
    }
}

#[derive(Parser, Debug)]
#[command(about = "FSDP sharded checkpoint save/load, 2 ranks: ours vs rank-0 full and DCP")]
struct Cli {
    #[command(flatten)]
    cargo: CargoArgs,
    /// Saves (and loads) timed per contender (default 3; smoke 1).
    #[arg(long, value_parser = positive::<usize>())]
    repeats: Option<usize>,
}

struct Opts {
    full: bool,
    width: i64,
    repeats: usize,
}

impl Opts {
    /// Bytes of the state: weights and Adam's two moments, f32.
    fn state_bytes(&self) -> i64 {
        5 * (self.width * self.width + self.width) * 4 * 3
    }
}

/// Trains one step under FSDP with `kind` checkpoints, then times `repeats` saves into
/// `dir/name` (the same path: each replaces the last). Both ranks run it.
fn saves(
    o: &Opts,
    dir: &Path,
    kind: StateDictType,
    name: &str,
) -> lightning_core::Result<Vec<f64>> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mut m = Wide::build(&WideConfig { width: o.width }, &vs.root())?;
    let x = Tensor::randn([WORLD as i64 * 4, o.width], (Kind::Float, tch::Device::Cpu));
    let data = DataModule::new().train(DataLoader::new(TensorDataset::new(vec![x])?, 4));
    let mut t = Trainer::builder()
        .max_steps(1)
        .seed(0)
        .default_root_dir(dir.join(format!("root-{name}")))
        .logger(false)
        .enable_checkpointing(false)
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .num_sanity_val_steps(0)
        .strategy(Strategy::Fsdp(FsdpOptions {
            state_dict_type: kind,
            timeout: Duration::from_secs(600),
            ..FsdpOptions::default()
        }))
        .devices(WORLD)
        .accelerator("cpu")
        .build()?;
    t.fit(&mut m, &data, None)?;
    let path = dir.join(name);
    let mut times = Vec::with_capacity(o.repeats);
    for _ in 0..o.repeats {
        let start = Instant::now();
        t.save_checkpoint(&m, &path, false)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

const PY: &str = include_str!("fsdp_ckpt_anchor.py");

/// PyTorch FSDP2 + DCP under torchrun: medians of its save and load seconds, or why not.
fn python_run(py: &Path, o: &Opts, dir: &Path) -> Result<(f64, f64), String> {
    let script = dir.join("fsdp_ckpt_bench.py");
    std::fs::write(&script, PY).map_err(|e| format!("writing {}: {e}", script.display()))?;
    let out = dir.join("dcp.json");
    let mut cmd = Command::new(py);
    cmd.args([
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
    ])
    .arg(&script)
    .arg(&out)
    .arg(dir.join("dcp-ckpt"))
    .args([o.width, o.repeats as i64].map(|v| v.to_string()))
    .env_remove(DIR_VAR);
    lightning_testkit::bench::run_anchor(&mut cmd, Duration::from_secs(600))?;
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&out).map_err(|e| format!("reading {}: {e}", out.display()))?,
    )
    .map_err(|e| format!("bad JSON: {e}"))?;
    let secs = |k: &str| -> Result<f64, String> {
        let xs: Vec<f64> = v[k]
            .as_array()
            .ok_or(format!("no {k}"))?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        Ok(median(&xs))
    };
    Ok((secs("save")?, secs("load")?))
}

fn run(o: &Opts, dir: &Path, rank1: bool) -> lightning_core::Result<(f64, f64, f64)> {
    let sharded = saves(o, dir, StateDictType::Sharded, "sharded.ckpt")?;
    let full = saves(o, dir, StateDictType::Full, "full.ckpt")?;
    // Every rank reads its rows of the weights and moments, as an FSDP resume does.
    let rank = usize::from(rank1);
    let rows = |key: &str, size: &[i64]| {
        (key.starts_with("model.") || key.starts_with("optimizer_0.state."))
            .then(|| dcp::shard_rows(size[0], rank, WORLD))
    };
    let mut loads = Vec::with_capacity(o.repeats);
    for _ in 0..o.repeats {
        let start = Instant::now();
        let v = dcp::lightning::load_rows(&dir.join("sharded.ckpt"), &rows)
            .map_err(lightning_core::Error::Load)?;
        loads.push(start.elapsed().as_secs_f64());
        drop(v);
    }
    Ok((median(&sharded), median(&full), median(&loads)))
}

fn main() {
    let cli = Cli::parse();
    let o = Opts {
        full: cli.cargo.bench,
        width: if cli.cargo.bench { 4096 } else { 64 },
        repeats: cli.repeats.unwrap_or(if cli.cargo.bench { 3 } else { 1 }),
    };
    tch::set_num_threads(1);
    let rank1 = std::env::var_os(DIR_VAR).is_some();
    let keep =
        if rank1 {
            None
        } else {
            let d = tempfile::tempdir().expect("a temp dir");
            // Before the first fit launches rank 1, which inherits it (one thread runs so far).
            // SAFETY: no other thread reads or writes the environment yet.
            unsafe { std::env::set_var(DIR_VAR, d.path()) };
            println!(
            "fsdp_ckpt bench: 5 layers {w} x {w}, weights + Adam moments {:.2} GiB, {WORLD} ranks \
             (Gloo), CPU; median of {} saves/loads each{}",
            o.state_bytes() as f64 / (1u64 << 30) as f64,
            o.repeats,
            if o.full { "" } else { " (smoke run without Python; pass --bench)" },
            w = o.width,
        );
            Some(d)
        };
    let dir = PathBuf::from(std::env::var_os(DIR_VAR).expect("set above or inherited"));
    let result = run(&o, &dir, rank1);
    let finished = lightning_core::trainer::finish_distributed();
    let (sharded, full, load) = match (result, finished) {
        (Ok(r), Ok(())) => r,
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fsdp_ckpt bench (rank {}) failed: {e}", usize::from(rank1));
            std::process::exit(1);
        }
    };
    if rank1 {
        return;
    }
    println!("  ours, sharded (each rank its file):  save {sharded:.3} s");
    println!("  ours, full (gather, rank 0 writes):  save {full:.3} s");
    println!("  ours, each rank reading its rows of the sharded directory: load {load:.3} s");
    let anchor = if o.full {
        lightning_testkit::python().map(|py| python_run(&py, &o, &dir))
    } else {
        None
    };
    let (dcp_save, dcp_load) = match &anchor {
        Some(Ok((s, l))) => {
            println!("  PyTorch FSDP2 + dcp.save: {s:.3} s; dcp.load: {l:.3} s");
            (Some(*s), Some(*l))
        }
        Some(Err(e)) => {
            println!("  missing: PyTorch anchor: {e}");
            (None, None)
        }
        None => (None, None),
    };
    let ratio = |a: f64, b: Option<f64>| b.map_or("n/a".into(), |b| format!("{:.3}", a / b));
    println!("| sharded save | full save | sharded / full | dcp.save | sharded / dcp.save | load | dcp.load | load / dcp.load |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {sharded:.3} s | {full:.3} s | {:.3} | {} | {} | {load:.3} s | {} | {} |",
        sharded / full,
        dcp_save.map_or("n/a".into(), |s| format!("{s:.3} s")),
        ratio(sharded, dcp_save),
        dcp_load.map_or("n/a".into(), |s| format!("{s:.3} s")),
        ratio(load, dcp_load),
    );
    println!(
        "goals: sharded / full <= 0.6: {}; sharded <= dcp.save: {}",
        if sharded / full <= 0.6 {
            "met"
        } else {
            "not met"
        },
        dcp_save.map_or("n/a", |d| if sharded <= d { "met" } else { "not met" })
    );
    drop(keep);
}
