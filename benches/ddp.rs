//! DDP (or, with `--strategy fsdp`, FSDP) step time on the CPU with 2 ranks (Gloo), against
//! anchors measured in the same run:
//!
//! 1. ours: the `Trainer` with `strategy("ddp")`, `devices(2)`: this binary is rank 0 and
//!    the Trainer re-runs it (same arguments) as rank 1;
//! 2. a plain loop of ours on the same two ranks: forward, backward, then one all-reduce of
//!    the flattened gradients (`ProcessGroup::all_reduce`, average), Adam; no Reducer, so no
//!    overlap of communication with the backward;
//! 3. PyTorch's own DDP, a plain loop under `torchrun --standalone --nproc-per-node=2`
//!    (the venv's `python -m torch.distributed.run`), gloo;
//! 4. Lightning's `Trainer(accelerator="cpu", devices=2, strategy="ddp")`.
//!
//! With `--strategy fsdp`, ours is `strategy("fsdp")` and the anchor is PyTorch's FSDP2 in a
//! plain loop under torchrun (`fully_shard` on the root module: one unit, as ours), and the
//! tensor bytes each rank holds are measured: parameters and gradients at rest (after `fit`)
//! and the parameters a `training_step` sees (gathered), against DDP's full replica.
//!
//! Same model everywhere (an MLP 512 -> 2048 -> 2048 -> 10, 5.3 M parameters), batch 64 per
//! rank, Adam, one intra-op thread per rank. Each run takes a time stamp after every step;
//! after the warm-up steps the stamps are cut into windows of `--window` steps, and a run's
//! figure is the median window (ms/step, rank 0), pooled over `--rounds` rounds. Each round
//! runs ours (a fresh `Trainer`, Reducer and optimizer), the plain loop, then the two Python
//! runs (a fresh process pair each, same steps; our rank 1 waits meanwhile in the next
//! round's rendezvous), so drift in the machine's load hits all four; the per-round ratios
//! are printed too. Each Python rank 0 writes its stamps as JSON to a temp file this bench
//! reads. The plain loops also report their per-step phases (forward + backward, all-reduce,
//! Adam).
//!
//! ```text
//! cargo bench --bench ddp -- --bench                 # the measurement
//! cargo bench --bench ddp -- --bench --rounds 5      # more windows
//! cargo bench --bench ddp -- --bench --strategy fsdp # FSDP vs PyTorch FSDP2
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) a smoke run trains a tiny MLP
//! for 2 timed steps on 2 ranks, ours and the plain loop, without Python. Every child has a
//! time limit: the Python runs are killed past theirs ([`lightning_testkit::Supervised`]); our
//! rank 1 fails with its collectives' timeout when rank 0 is gone, and rank 0 waits for it
//! at most that long.

use clap::Parser;
use lightning_core::callbacks::{Callback, TrainerContext};
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig, Optimizer};
use lightning_core::prelude::*;
use lightning_core::trainer::{DdpOptions, FsdpOptions, Strategy, Trainer};
use lightning_dist::{ProcessGroup, ReduceOp, Store};
use lightning_testkit::bench::{positive, CargoArgs};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Tensor};

/// Rank 0 puts the plain loop's rendezvous port here before the first `fit` launches rank 1,
/// which inherits it: its presence also tells rank 1 that it is rank 1.
const PLAIN_PORT: &str = "LIGHTNING_RS_DDP_BENCH_PLAIN_PORT";
const WORLD: usize = 2;

/// The MLP's sizes.
#[derive(Hyperparameters, Clone, Debug)]
pub struct MlpConfig {
    /// Input features.
    #[hparam(default = 512)]
    pub d_in: i64,
    /// Width of the two hidden layers.
    #[hparam(default = 2048)]
    pub hidden: i64,
}

/// The most parameter bytes a `training_step` of this process saw.
static STEP_PARAM_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// d_in -> hidden -> hidden -> 10, ReLU, cross-entropy.
#[lightning_module]
pub struct Mlp {
    #[hparams]
    hp: MlpConfig,
    fc1: nn::Linear,
    fc2: nn::Linear,
    head: nn::Linear,
}

impl Mlp {
    fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
        x.apply(&self.fc1)
            .relu()
            .apply(&self.fc2)
            .relu()
            .apply(&self.head)
            .cross_entropy_for_logits(y)
    }
}

impl LightningModule for Mlp {
    fn build(hp: &MlpConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let lin = |name: &str, i, o| nn::linear(vs / name, i, o, Default::default());
        Ok(Mlp {
            hp: hp.clone(),
            fc1: lin("fc1", hp.d_in, hp.hidden),
            fc2: lin("fc2", hp.hidden, hp.hidden),
            head: lin("head", hp.hidden, 10),
        })
    }

    fn training_step(
        &mut self,
        b: &Batch,
        _: usize,
        _: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        // What the step sees: under FSDP the gathered parameters.
        let bytes: i64 = self
            .parameters()
            .iter()
            .map(|p| p.numel() as i64 * p.kind().elt_size_in_bytes() as i64)
            .sum();
        STEP_PARAM_BYTES.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(self.loss(&b[0], &b[1]))
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let opt = Adam::new(self.parameters(), AdamConfig::default())
            .map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
        Ok(OptimizerConfig::new(opt))
    }
}

struct Opts {
    full: bool,
    hp: MlpConfig,
    batch: i64,
    warmup: usize,
    window: usize,
    windows: usize,
    rounds: usize,
    timeout: Duration,
    /// `--strategy fsdp`.
    fsdp: bool,
}

impl Opts {
    /// Steps per run: the warm-up, then the timed windows.
    fn steps(&self) -> usize {
        self.warmup + self.window * self.windows
    }
    fn params(&self) -> i64 {
        let (d, h) = (self.hp.d_in, self.hp.hidden);
        d * h + h + h * h + h + h * 10 + 10
    }
}

/// The command line; the counts default to the measurement's with `--bench`, to the smoke
/// run's without it.
#[derive(Parser, Debug)]
#[command(about = "DDP step time on the CPU, 2 ranks: ours vs PyTorch DDP and Lightning")]
struct Cli {
    #[command(flatten)]
    cargo: CargoArgs,
    /// Rounds, each running every contender once (default 3; smoke 1).
    #[arg(long, value_parser = positive::<usize>())]
    rounds: Option<usize>,
    /// Timed windows per run (default 5; smoke 2).
    #[arg(long, value_parser = positive::<usize>())]
    windows: Option<usize>,
    /// Steps per window (default 10; smoke 1).
    #[arg(long, value_parser = positive::<usize>())]
    window: Option<usize>,
    /// Warm-up steps before the first window (default 10; smoke 1).
    #[arg(long, value_parser = positive::<usize>())]
    warmup: Option<usize>,
    /// `ddp` (anchors: PyTorch DDP, Lightning) or `fsdp` (anchor: PyTorch FSDP2).
    #[arg(long, default_value = "ddp", value_parser = ["ddp", "fsdp"])]
    strategy: String,
}

/// Both ranks parse the same argv (rank 1 is this binary re-run with it), so they agree.
fn parse() -> Result<Opts, String> {
    let cli = Cli::parse();
    let full = cli.cargo.bench;
    let mut o = if full {
        Opts {
            full,
            hp: MlpConfig {
                d_in: 512,
                hidden: 2048,
            },
            batch: 64,
            warmup: 10,
            window: 10,
            windows: 5,
            rounds: 3,
            timeout: Duration::from_secs(300),
            fsdp: cli.strategy == "fsdp",
        }
    } else {
        Opts {
            full,
            hp: MlpConfig {
                d_in: 32,
                hidden: 64,
            },
            batch: 8,
            warmup: 1,
            window: 1,
            windows: 2,
            rounds: 1,
            timeout: Duration::from_secs(30),
            fsdp: cli.strategy == "fsdp",
        }
    };
    o.rounds = cli.rounds.unwrap_or(o.rounds);
    o.windows = cli.windows.unwrap_or(o.windows);
    o.window = cli.window.unwrap_or(o.window);
    o.warmup = cli.warmup.unwrap_or(o.warmup);
    Ok(o)
}

/// The same data on every rank: `WORLD * batch` rows per step (the Trainer's sampler gives
/// each rank its half; the plain loop takes rank r's `batch` rows of each step).
fn dataset(o: &Opts) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let n = WORLD as i64 * o.batch * o.steps() as i64;
    let x = Tensor::randn([n, o.hp.d_in], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    (x, y)
}

fn model(o: &Opts) -> (Mlp, nn::VarStore) {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Mlp::build(&o.hp, &vs.root()).expect("build");
    (m, vs)
}

/// A time stamp after every training step.
#[derive(Clone)]
struct Stamps {
    origin: Instant,
    at: Arc<Mutex<Vec<f64>>>,
}

impl Callback for Stamps {
    fn state_key(&self) -> String {
        "Stamps".into()
    }
    fn on_train_batch_end(&mut self, _: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        let t = self.origin.elapsed().as_secs_f64();
        self.at.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Ours: `Trainer::fit` with `strategy("ddp")` on 2 CPU ranks; the step stamps.
/// Tensor bytes this rank held: parameters and gradients after `fit` (at rest), and the
/// parameters a step saw.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    params_at_rest: i64,
    grads_at_rest: i64,
    params_in_step: i64,
}

fn trainer_run(o: &Opts) -> lightning_core::Result<(Vec<f64>, Held)> {
    let (mut m, _vs) = model(o);
    let (x, y) = dataset(o);
    let data = DataModule::new().train(DataLoader::new(TensorDataset::new(vec![x, y])?, o.batch));
    let stamps = Stamps {
        origin: Instant::now(),
        at: Arc::default(),
    };
    let dir = tempfile::tempdir().map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
    let mut t = Trainer::builder()
        .max_steps(o.steps() as i64)
        .seed(0)
        .default_root_dir(dir.path())
        .logger(false)
        .enable_checkpointing(false)
        .enable_progress_bar(false)
        .num_sanity_val_steps(0)
        .strategy(if o.fsdp {
            Strategy::Fsdp(FsdpOptions {
                timeout: o.timeout,
                ..FsdpOptions::default()
            })
        } else {
            Strategy::Ddp(DdpOptions {
                timeout: o.timeout,
                ..DdpOptions::default()
            })
        })
        .devices(WORLD)
        .accelerator("cpu")
        .callback(stamps.clone())
        .build()?;
    t.fit(&mut m, &data, None)?;
    let at = stamps.at.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let bytes = |t: &Tensor| {
        if t.defined() {
            t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
        } else {
            0
        }
    };
    let params = m.parameters();
    let held = Held {
        params_at_rest: params.iter().map(bytes).sum(),
        grads_at_rest: params.iter().map(|p| bytes(&p.grad())).sum(),
        params_in_step: STEP_PARAM_BYTES.load(std::sync::atomic::Ordering::Relaxed),
    };
    Ok((at, held))
}

/// Milliseconds each step of a plain loop spent in forward + backward, in the gradients'
/// all-reduce (with the flattening and the copy back) and in the optimizer.
#[derive(Default)]
struct Phases {
    fwd_bwd: Vec<f64>,
    comm: Vec<f64>,
    opt: Vec<f64>,
}

impl Phases {
    fn extend(&mut self, other: Phases, warmup: usize) {
        self.fwd_bwd.extend(other.fwd_bwd.into_iter().skip(warmup));
        self.comm.extend(other.comm.into_iter().skip(warmup));
        self.opt.extend(other.opt.into_iter().skip(warmup));
    }
    fn show(&self) -> String {
        format!(
            "forward+backward {:.2}, all-reduce {:.2}, Adam + zero_grad {:.2} ms (medians)",
            median(&self.fwd_bwd),
            median(&self.comm),
            median(&self.opt)
        )
    }
}

/// The plain loop: forward, backward, one all-reduce (average) of the flattened gradients
/// after the backward, copy back, Adam. The step stamps and the phases of each step.
fn plain_run(o: &Opts, pg: &ProcessGroup) -> (Vec<f64>, Phases) {
    let (m, _vs) = model(o);
    let (x, y) = dataset(o);
    let params = m.parameters();
    let mut opt = Adam::new(m.parameters(), AdamConfig::default()).expect("adam");
    let rank = pg.rank() as i64;
    let origin = Instant::now();
    let mut at = Vec::with_capacity(o.steps());
    let mut phases = Phases::default();
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
    for i in 0..o.steps() as i64 {
        let t0 = Instant::now();
        let start = (i * WORLD as i64 + rank) * o.batch;
        let loss = m.loss(&x.narrow(0, start, o.batch), &y.narrow(0, start, o.batch));
        loss.backward();
        let t1 = Instant::now();
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        let flat = Tensor::cat(&grads.iter().map(|g| g.view(-1)).collect::<Vec<_>>(), 0);
        pg.all_reduce(&mut [flat.shallow_clone()], ReduceOp::Avg)
            .expect("all_reduce");
        tch::no_grad(|| {
            let mut off = 0;
            for g in &grads {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                g.copy_(&flat.narrow(0, off, n).view_as(&g));
                off += n;
            }
        });
        let t2 = Instant::now();
        opt.step().expect("step");
        opt.zero_grad();
        let t3 = Instant::now();
        at.push(t3.duration_since(origin).as_secs_f64());
        phases.fwd_bwd.push(ms(t0, t1));
        phases.comm.push(ms(t1, t2));
        phases.opt.push(ms(t2, t3));
    }
    (at, phases)
}

/// ms/step of each timed window: the stamps after the warm-up, `window` steps apart.
fn windows(stamps: &[f64], warmup: usize, window: usize) -> Vec<f64> {
    let mut v = Vec::new();
    if warmup == 0 {
        return v; // no stamp before the first step
    }
    let mut k = warmup - 1;
    while k + window < stamps.len() {
        v.push((stamps[k + window] - stamps[k]) / window as f64 * 1e3);
        k += window;
    }
    v
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// The Python side: `ddp` (PyTorch's DDP in a plain loop, under torchrun) or `lightning`
/// (Lightning's Trainer with strategy="ddp", which launches its rank 1 itself). Rank 0 writes
/// {"stamps": [...], "threads": n, "world": n} to the output path (the plain DDP loop adds
/// each step's milliseconds in forward + backward, "fwd_bwd", and in Adam, "opt").
const PY: &str = include_str!("ddp_anchor.py");

/// A Python run's windows (ms/step) and, for the plain DDP loop, the medians of its steps'
/// forward + backward (with DDP's overlapped all-reduce) and Adam + zero_grad, in ms.
type PyResult = (Vec<f64>, Option<(f64, f64)>);

/// Runs the Python side in `mode` under a time limit; its rank 0's figures, or why not.
fn python_run(py: &Path, mode: &str, o: &Opts, dir: &Path) -> Result<PyResult, String> {
    let script = dir.join("ddp_bench.py");
    std::fs::write(&script, PY).map_err(|e| format!("writing {}: {e}", script.display()))?;
    let out = dir.join(format!("{mode}.json"));
    let mut cmd = Command::new(py);
    if mode == "ddp" || mode == "fsdp2" {
        cmd.args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
        ]);
    }
    let steps = o.steps();
    cmd.arg(&script)
        .args([mode, out.to_str().ok_or("temp path is not UTF-8")?])
        .args([o.hp.d_in, o.hp.hidden, o.batch, steps as i64].map(|v| v.to_string()))
        .env_remove(PLAIN_PORT);
    lightning_testkit::bench::run_anchor(&mut cmd, Duration::from_secs(300))
        .map_err(|e| format!("{mode}: {e}"))?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{mode}: reading JSON: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{mode}: bad JSON: {e}"))?;
    if v["threads"] != 1 || v["world"] != 2 {
        return Err(format!(
            "{mode}: ran with {} threads, world {} (expected 1 and 2)",
            v["threads"], v["world"]
        ));
    }
    let stamps: Vec<f64> = v["stamps"]
        .as_array()
        .ok_or(format!("{mode}: no stamps"))?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    if stamps.len() != steps {
        return Err(format!("{mode}: {} stamps for {steps} steps", stamps.len()));
    }
    let phase = |k: &str| -> Option<f64> {
        let v: Vec<f64> = v[k]
            .as_array()?
            .iter()
            .skip(o.warmup)
            .filter_map(serde_json::Value::as_f64)
            .collect();
        Some(median(&v))
    };
    let phases = phase("fwd_bwd").zip(phase("opt"));
    Ok((windows(&stamps, o.warmup, o.window), phases))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{nproc} CPUs ({model})")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Rank 0's figures: windows (ms/step) of each run kind, pooled over the rounds.
#[derive(Default)]
struct Figures {
    ours: Vec<f64>,
    plain: Vec<f64>,
    plain_phases: Phases,
    torch: Vec<f64>,
    torch_phases: Vec<(f64, f64)>,
    lightning: Vec<f64>,
    /// Per round: ours / PyTorch DDP and ours / Lightning, each run's median against the
    /// other's in the same round (paired, so drift in the machine's load cancels more).
    paired_torch: Vec<f64>,
    paired_lightning: Vec<f64>,
    /// Why a Python run gave no figure (the first reason of each kind).
    missing: Vec<String>,
    /// Tensor bytes our rank 0 held (last round).
    held: Held,
}

/// What both ranks do: `rounds` times ours then the plain loop; between them rank 0 runs the
/// Python anchors (`python`), while rank 1 waits for the next round's rendezvous.
fn rounds(o: &Opts, rank1: bool, python: Option<&Path>) -> lightning_core::Result<Figures> {
    let port: u16 = std::env::var(PLAIN_PORT)
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| lightning_core::Error::Msg(format!("{PLAIN_PORT} is not a port")))?;
    let mut plain_pg: Option<(ProcessGroup, Store)> = None;
    let mut f = Figures::default();
    let dist = |e: lightning_dist::DistError| lightning_core::Error::Msg(e.to_string());
    let dir = tempfile::tempdir().map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
    for round in 0..o.rounds {
        let (t, held) = trainer_run(o)?;
        f.held = held;
        if t.len() != o.steps() {
            return Err(lightning_core::Error::Msg(format!(
                "ours: {} stamps for {} steps",
                t.len(),
                o.steps()
            )));
        }
        let ours_round = median(&windows(&t, o.warmup, o.window));
        f.ours.extend(windows(&t, o.warmup, o.window));
        if plain_pg.is_none() {
            // rank 1 exists now (the first fit launched it)
            let store = if rank1 {
                Store::client("127.0.0.1", port, o.timeout)
            } else {
                Store::server("127.0.0.1", port, WORLD, o.timeout)
            }
            .map_err(dist)?;
            let pg =
                ProcessGroup::gloo(&store, usize::from(rank1), WORLD, o.timeout).map_err(dist)?;
            plain_pg = Some((pg, store));
        }
        let (pg, _) = plain_pg.as_ref().expect("set above");
        let (stamps, phases) = plain_run(o, pg);
        f.plain.extend(windows(&stamps, o.warmup, o.window));
        f.plain_phases.extend(phases, o.warmup);
        if rank1 {
            continue;
        }
        let mut line = format!(
            "  round {}/{}: ours {:.2}, plain all-reduce {:.2}",
            round + 1,
            o.rounds,
            median(&f.ours),
            median(&f.plain)
        );
        if let Some(py) = python {
            let modes: &[&str] = if o.fsdp {
                &["fsdp2"]
            } else {
                &["ddp", "lightning"]
            };
            for &mode in modes {
                match python_run(py, mode, o, dir.path()) {
                    Ok((w, phases)) => {
                        let (all, name) = if mode != "lightning" {
                            f.torch_phases.extend(phases);
                            f.paired_torch.push(ours_round / median(&w));
                            (&mut f.torch, anchor_name(o))
                        } else {
                            f.paired_lightning.push(ours_round / median(&w));
                            (&mut f.lightning, "Lightning")
                        };
                        all.extend(w);
                        line += &format!(", {name} {:.2}", median(all));
                    }
                    Err(e) => {
                        if !f.missing.iter().any(|m| m.starts_with(mode)) {
                            f.missing.push(e);
                        }
                    }
                }
            }
        }
        eprintln!(
            "{line} ms/step (medians so far; load average {})",
            loadavg()
        );
    }
    Ok(f)
}

/// The PyTorch anchor's name.
fn anchor_name(o: &Opts) -> &'static str {
    if o.fsdp {
        "PyTorch FSDP2"
    } else {
        "PyTorch DDP"
    }
}

fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "no figure".into();
    }
    format!(
        "{:.2} ms/step (median of {} windows of the rounds; min {:.2}, max {:.2})",
        median(v),
        v.len(),
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(0.0, f64::max)
    )
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2} ms"))
}

fn ratio(a: f64, b: Option<f64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.3}", a / b))
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    tch::set_num_threads(1);
    let rank1 = std::env::var_os(PLAIN_PORT).is_some();
    let mut python = None;
    if !rank1 {
        let port = lightning_core::distributed::free_port("127.0.0.1").expect("a free port");
        // Before the first fit launches rank 1, which inherits it (one thread runs so far).
        // SAFETY: no other thread reads or writes the environment yet (see above).
        unsafe { std::env::set_var(PLAIN_PORT, port.to_string()) };
        println!(
            "{} bench: MLP {} -> {} -> {} -> 10 ({:.2} M params), batch {} per rank, Adam, \
             CPU, {WORLD} ranks (Gloo), 1 intra-op thread per rank; {} rounds, each run {} \
             warm-up steps then {} windows of {} steps{}",
            if o.fsdp { "fsdp" } else { "ddp" },
            o.hp.d_in,
            o.hp.hidden,
            o.hp.hidden,
            o.params() as f64 / 1e6,
            o.batch,
            o.rounds,
            o.warmup,
            o.windows,
            o.window,
            if o.full {
                ""
            } else {
                " (smoke run without Python; pass --bench)"
            }
        );
        println!("machine: {}; load average {}", machine(), loadavg());
        if o.full {
            python = lightning_testkit::python();
            if python.is_none() {
                println!("no Python (the reason is above): only ours is reported");
            }
        }
    }
    let result = rounds(&o, rank1, python.as_deref());
    let finished = lightning_core::trainer::finish_distributed();
    let f = match (result, finished) {
        (Ok(r), Ok(())) => r,
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ddp bench (rank {}) failed: {e}", usize::from(rank1));
            std::process::exit(1);
        }
    };
    if rank1 {
        return;
    }
    let some = |v: &[f64]| (!v.is_empty()).then(|| median(v));
    let (ours_ms, plain_ms) = (median(&f.ours), median(&f.plain));
    let (torch_ms, lightning_ms) = (some(&f.torch), some(&f.lightning));
    let ours_name = if o.fsdp {
        "ours (Trainer, fsdp)"
    } else {
        "ours (Trainer, ddp)"
    };
    println!("  {ours_name}: {}", spread(&f.ours));
    println!("  plain all-reduce (ours): {}", spread(&f.plain));
    println!("    per step: {}", f.plain_phases.show());
    if python.is_some() {
        println!("  {} (torchrun):  {}", anchor_name(&o), spread(&f.torch));
        if !f.torch_phases.is_empty() {
            let (fb, op): (Vec<f64>, Vec<f64>) = f.torch_phases.iter().copied().unzip();
            println!(
                "    per step: forward+backward (all-reduce overlapped) {:.2}, Adam + zero_grad \
                 {:.2} ms (medians of the runs' medians)",
                median(&fb),
                median(&op)
            );
        }
        if !o.fsdp {
            println!("  Lightning ddp:           {}", spread(&f.lightning));
        }
        let rounds = |v: &[f64]| {
            let shown: Vec<String> = v.iter().map(|r| format!("{r:.3}")).collect();
            format!("median {:.3} of [{}]", median(v), shown.join(", "))
        };
        if !f.paired_torch.is_empty() {
            println!(
                "  per round, ours / {}: {}",
                anchor_name(&o),
                rounds(&f.paired_torch)
            );
        }
        if !f.paired_lightning.is_empty() {
            println!(
                "  per round, ours / Lightning:   {}",
                rounds(&f.paired_lightning)
            );
        }
        for m in &f.missing {
            println!("  missing: {m}");
        }
    }
    println!(
        "machine: {}; load average {} at the end",
        machine(),
        loadavg()
    );
    if o.fsdp {
        let mb = |b: i64| b as f64 / (1 << 20) as f64;
        let replica = o.params() * 4;
        let h = f.held;
        println!(
            "  tensor bytes on rank 0: parameters at rest {:.2} MiB (DDP's replica: {:.2} MiB; \
             ratio {:.3}); gradients left after fit {:.2} MiB (zero_grad frees them); \
             parameters seen by a step (gathered) {:.2} MiB; Adam's state, built over the \
             shards, follows the parameters",
            mb(h.params_at_rest),
            mb(replica),
            h.params_at_rest as f64 / replica as f64,
            mb(h.grads_at_rest),
            mb(h.params_in_step)
        );
        println!(
            "| ours (Trainer, fsdp) | PyTorch FSDP2 | ours / PyTorch FSDP2 | params at rest / replica |"
        );
        println!("|---|---|---|---|");
        println!(
            "| {ours_ms:.2} ms | {} | {} | {:.3} |",
            fmt_ms(torch_ms),
            ratio(ours_ms, torch_ms),
            h.params_at_rest as f64 / replica as f64
        );
        if let Some(t) = torch_ms {
            println!(
                "goal (no slower than PyTorch FSDP2): {}",
                if ours_ms <= t { "met" } else { "not met" }
            );
        }
        return;
    }
    println!(
        "| ours (Trainer, ddp) | plain all-reduce (ours) | PyTorch DDP | Lightning ddp | \
         ours / PyTorch DDP | ours / Lightning | reducer / plain |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {ours_ms:.2} ms | {plain_ms:.2} ms | {} | {} | {} | {} | {:.3} |",
        fmt_ms(torch_ms),
        fmt_ms(lightning_ms),
        ratio(ours_ms, torch_ms),
        ratio(ours_ms, lightning_ms),
        ours_ms / plain_ms
    );
    if let Some(t) = torch_ms {
        println!(
            "goal (no slower than PyTorch DDP): {}",
            if ours_ms <= t { "met" } else { "not met" }
        );
    }
    if !o.full {
        println!("(smoke run under `cargo test`; `cargo bench --bench ddp -- --bench` measures)");
    }
}
