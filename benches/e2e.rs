//! End-to-end training speed: a small decoder-only transformer trained through our `Trainer`,
//! against the same model as a plain PyTorch loop and as a Lightning module, in one run.
//!
//! The model: token + learned position embeddings, `--layers` pre-norm blocks (causal
//! self-attention through `scaled_dot_product_attention`, a GELU MLP of 4x width), a final
//! LayerNorm and an untied head; dropout off. AdamW (lr 3e-4, betas (0.9, 0.95), weight decay
//! 0.1), gradient clipping at norm 1.0, a linear warmup then cosine schedule stepped every
//! optimizer step, random tokens. Python gets our initial weights and the same batches in a
//! checkpoint file this bench writes, so all three start equal and see the same data; after
//! training each reports the loss of the first batch under its final weights, and the bench
//! checks the three agree (an honest comparison trains the same thing).
//!
//! ```text
//! cargo bench --bench e2e -- --bench                                    # CPU, fp32
//! target/release/deps/e2e-<hash> --bench --device cuda --precision 32-true
//! target/release/deps/e2e-<hash> --bench --device cuda --precision bf16-mixed
//! ```
//!
//! On CUDA our AdamW is the fused kernel and Python's is `torch.optim.AdamW(fused=True)`;
//! on the CPU both run torch's single-tensor AdamW ops. Options: `--steps N` (timed after
//! `--warmup-steps`), `--batch`, `--ctx`, `--width`, `--heads`, `--layers`, `--vocab`,
//! `--threads` (intra-op threads for all three; default: every core), `--rounds` (default 2).
//! Without `--bench` (as `cargo test --all-targets` runs it) a tiny model trains 3 steps
//! through the Trainer only.
//!
//! The three run one after another, so a machine whose speed drifts favours whichever runs in
//! its fast phase. Rounds alternate the order (ours, plain, Lightning, then Lightning, plain,
//! ours, ...) and each side's figure is its best round, so drift cannot favour one side.

use clap::Parser;
use lightning_core::callbacks::{Callback, TrainerContext};
use lightning_core::checkpoint;
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{
    Batch, Interval, OptimizerConfig, SchedulerConfig, StepContext,
};
use lightning_core::optim::{Adam, AdamConfig, Schedule, Scheduler};
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use lightning_core::traverse::state_dict_to_value;
use lightning_testkit::bench::{positive, CargoArgs};
use lightning_testkit::Supervised;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Tensor};

/// The transformer's shape.
#[derive(Hyperparameters, Clone, Debug)]
pub struct GptConfig {
    /// Vocabulary size.
    #[hparam(default = 512)]
    pub vocab: i64,
    /// Context length (tokens per sequence).
    #[hparam(default = 256)]
    pub ctx: i64,
    /// Model width.
    #[hparam(default = 384)]
    pub width: i64,
    /// Attention heads.
    #[hparam(default = 6)]
    pub heads: i64,
    /// Transformer blocks.
    #[hparam(default = 6)]
    pub layers: i64,
    /// Optimizer steps (for the cosine schedule's length).
    #[hparam(default = 12)]
    pub steps: i64,
}

/// One pre-norm block: causal self-attention and a GELU MLP, each with a residual.
#[lightning_module]
pub struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc: nn::Linear,
    out: nn::Linear,
}

impl Block {
    fn new(vs: &nn::Path, c: i64) -> Block {
        let lin = |name: &str, a, b| nn::linear(vs / name, a, b, Default::default());
        Block {
            ln1: nn::layer_norm(vs / "ln1", vec![c], Default::default()),
            qkv: lin("qkv", c, 3 * c),
            proj: lin("proj", c, c),
            ln2: nn::layer_norm(vs / "ln2", vec![c], Default::default()),
            fc: lin("fc", c, 4 * c),
            out: lin("out", 4 * c, c),
        }
    }

    fn forward(&self, h: &Tensor, heads: i64) -> Tensor {
        let (b, t, c) = h.size3().expect("[batch, time, width]");
        let qkv = h.apply(&self.ln1).apply(&self.qkv).split(c, -1);
        let split = |x: &Tensor| x.view([b, t, heads, c / heads]).transpose(1, 2);
        let y = Tensor::scaled_dot_product_attention(
            &split(&qkv[0]),
            &split(&qkv[1]),
            &split(&qkv[2]),
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        );
        let h = h + y
            .transpose(1, 2)
            .contiguous()
            .view([b, t, c])
            .apply(&self.proj);
        let m = h
            .apply(&self.ln2)
            .apply(&self.fc)
            .gelu("none")
            .apply(&self.out);
        h + m
    }
}

/// The model trained through our `Trainer`.
#[lightning_module]
pub struct Gpt {
    #[hparams]
    hp: GptConfig,
    tok: nn::Embedding,
    pos: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    head: nn::Linear,
}

impl Gpt {
    /// Logits `[batch, time, vocab]` of tokens `[batch, time]`.
    fn logits(&self, x: &Tensor) -> Tensor {
        let t = x.size()[1];
        let pos = Tensor::arange(t, (Kind::Int64, x.device()));
        let mut h = x.apply(&self.tok) + pos.apply(&self.pos);
        for b in &self.blocks {
            h = b.forward(&h, self.hp.heads);
        }
        h.apply(&self.ln_f).apply(&self.head)
    }

    /// Next-token cross-entropy of a batch of `ctx + 1` tokens.
    fn loss(&self, seq: &Tensor) -> Tensor {
        let t = seq.size()[1] - 1;
        let (x, y) = (seq.narrow(1, 0, t), seq.narrow(1, 1, t));
        let logits = self.logits(&x).to_kind(Kind::Float);
        logits
            .view([-1, self.hp.vocab])
            .cross_entropy_for_logits(&y.reshape([-1]))
    }
}

impl LightningModule for Gpt {
    fn build(hp: &GptConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let emb = |name: &str, n| nn::embedding(vs / name, n, hp.width, Default::default());
        Ok(Gpt {
            hp: hp.clone(),
            tok: emb("tok", hp.vocab),
            pos: emb("pos", hp.ctx),
            blocks: (0..hp.layers)
                .map(|i| Block::new(&(vs / "blocks" / i), hp.width))
                .collect(),
            ln_f: nn::layer_norm(vs / "ln_f", vec![hp.width], Default::default()),
            head: nn::linear(vs / "head", hp.width, hp.vocab, Default::default()),
        })
    }

    fn training_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let loss = self.loss(&batch[0]);
        ctx.log("train_loss", &loss);
        Ok(loss)
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let mut opt = Adam::adamw(
            self.parameters(),
            AdamConfig {
                lr: 3e-4,
                betas: (0.9, 0.95),
                weight_decay: 0.1,
                ..AdamConfig::adamw()
            },
        )?;
        let warmup = warmup_steps(self.hp.steps);
        let schedule = Schedule::warmup_then(
            warmup,
            0.1,
            Schedule::CosineAnnealing {
                t_max: (self.hp.steps - warmup).max(1),
                eta_min: 0.0,
            },
        );
        let s = Scheduler::new(&mut opt, schedule)?;
        Ok(OptimizerConfig::new(opt)
            .scheduler_config(SchedulerConfig::new(s).interval(Interval::Step)))
    }
}

/// Warm-up length of the LR schedule: a tenth of the run, at least one step.
fn warmup_steps(steps: i64) -> i64 {
    (steps / 10).max(1)
}

/// Time stamps after every training batch (the step loop's own pace; on CUDA after a
/// synchronize, so the stamp includes the step's kernels).
struct Stamps(Arc<Mutex<Vec<Instant>>>, Device);

impl Callback for Stamps {
    fn state_key(&self) -> String {
        "Stamps".into()
    }
    fn on_train_batch_end(&mut self, _: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        if let Device::Cuda(i) = self.1 {
            tch::Cuda::synchronize(i as i64);
        }
        if let Ok(mut v) = self.0.lock() {
            v.push(Instant::now());
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
    full: bool,
    hp: GptConfig,
    batch: i64,
    warmup: usize,
    device: Device,
    precision: String,
    threads: i32,
    rounds: usize,
}

/// The command line; the model's sizes default to the measurement's GPT with `--bench`, to
/// the smoke run's tiny one without it.
#[derive(Parser, Debug)]
#[command(about = "End-to-end step time of a small GPT: the Trainer vs PyTorch and Lightning")]
struct Cli {
    #[command(flatten)]
    cargo: CargoArgs,
    /// Training steps per run.
    #[arg(long, value_parser = positive::<i64>())]
    steps: Option<i64>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 2, value_parser = positive::<i64>())]
    batch: i64,
    /// Context length.
    #[arg(long, value_parser = positive::<i64>())]
    ctx: Option<i64>,
    /// Model width (a multiple of `--heads`).
    #[arg(long, value_parser = positive::<i64>())]
    width: Option<i64>,
    /// Attention heads.
    #[arg(long, value_parser = positive::<i64>())]
    heads: Option<i64>,
    /// Transformer blocks.
    #[arg(long, value_parser = positive::<i64>())]
    layers: Option<i64>,
    /// Vocabulary size.
    #[arg(long, value_parser = positive::<i64>())]
    vocab: Option<i64>,
    /// Steps left out of the timing (fewer than `--steps`).
    #[arg(long = "warmup-steps", default_value_t = 2, value_parser = positive::<usize>())]
    warmup: usize,
    /// libtorch intra-op threads (default: the machine's cores).
    #[arg(long, value_parser = positive::<i32>())]
    threads: Option<i32>,
    /// Rounds, each running every contender once.
    #[arg(long, default_value_t = 2, value_parser = positive::<usize>())]
    rounds: usize,
    /// Trainer precision (`32-true`, `16-mixed`, `bf16-mixed`).
    #[arg(long, default_value = "32-true")]
    precision: String,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn parse() -> Result<Opts, String> {
    let cli = Cli::parse();
    let full = cli.cargo.bench;
    let mut hp = if full {
        GptConfig::default()
    } else {
        GptConfig {
            vocab: 32,
            ctx: 8,
            width: 16,
            heads: 2,
            layers: 1,
            steps: 3,
        }
    };
    hp.steps = cli.steps.unwrap_or(hp.steps);
    hp.ctx = cli.ctx.unwrap_or(hp.ctx);
    hp.width = cli.width.unwrap_or(hp.width);
    hp.heads = cli.heads.unwrap_or(hp.heads);
    hp.layers = cli.layers.unwrap_or(hp.layers);
    hp.vocab = cli.vocab.unwrap_or(hp.vocab);
    let o = Opts {
        full,
        hp,
        batch: cli.batch,
        warmup: cli.warmup,
        device: lightning_rs::digits::device(&cli.device).map_err(|e| e.to_string())?,
        precision: cli.precision,
        threads: cli
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32)),
        rounds: cli.rounds,
    };
    if o.hp.width % o.hp.heads != 0 {
        return Err(format!(
            "--width {} is not a multiple of --heads {}",
            o.hp.width, o.hp.heads
        ));
    }
    if o.warmup as i64 >= o.hp.steps {
        return Err(format!(
            "--steps {} must exceed --warmup-steps {}",
            o.hp.steps, o.warmup
        ));
    }
    Ok(o)
}

/// Random tokens, `steps * batch` sequences of `ctx + 1`.
fn tokens(o: &Opts) -> Tensor {
    tch::manual_seed(0);
    Tensor::randint(
        o.hp.vocab,
        [o.hp.steps * o.batch, o.hp.ctx + 1],
        (Kind::Int64, Device::Cpu),
    )
}

/// Median of the step times after the warm-up steps, in ms.
fn median_step_ms(stamps: &[f64], warmup: usize) -> f64 {
    let mut d: Vec<f64> = stamps
        .windows(2)
        .skip(warmup.saturating_sub(1))
        .map(|w| (w[1] - w[0]) * 1e3)
        .collect();
    d.sort_by(f64::total_cmp);
    d.get(d.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Ours: the Trainer. Returns (ms/step, final loss on batch 0, the initial weights).
fn ours(o: &Opts, data: &Tensor) -> lightning_core::Result<(f64, f64, Value)> {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(o.device);
    let mut m = Gpt::build(&o.hp, &vs.root())?;
    // A copy: the state dict's tensors are the live parameters, which training updates.
    let init: lightning_core::StateDict = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.to_device(Device::Cpu).copy()))
        .collect();
    let init = state_dict_to_value(&init);
    let dm = DataModule::new().train(DataLoader::new(
        TensorDataset::new(vec![data.shallow_clone()])?,
        o.batch,
    ));
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let dir = tempfile::tempdir().map_err(|e| lightning_core::Error::Config(e.to_string()))?;
    let mut t = Trainer::builder()
        .max_steps(o.hp.steps)
        .device(o.device)
        .precision(o.precision.as_str())
        .gradient_clip_val(1.0)
        .seed(0)
        .default_root_dir(dir.path())
        .logger(false)
        .enable_checkpointing(false)
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .callback(Stamps(stamps.clone(), o.device))
        .build()?;
    let start = Instant::now();
    t.fit(&mut m, &dm, None)?;
    let secs: Vec<f64> = stamps
        .lock()
        .map(|v| v.iter().map(|s| (*s - start).as_secs_f64()).collect())
        .unwrap_or_default();
    let first = data.narrow(0, 0, o.batch).to_device(o.device);
    let loss = tch::no_grad(|| m.loss(&first)).double_value(&[]);
    Ok((median_step_ms(&secs, o.warmup), loss, init))
}

const PY: &str = include_str!("e2e_anchor.py");

/// Runs the Python twin (`plain` or `lightning`): (ms/step, final loss).
fn python(py: &Path, mode: &str, o: &Opts, blob: &Path) -> Result<(f64, f64), String> {
    let out = blob.with_extension(format!("{mode}.json"));
    let cfg = serde_json::json!({
        "vocab": o.hp.vocab, "ctx": o.hp.ctx, "width": o.hp.width, "heads": o.hp.heads,
        "layers": o.hp.layers, "steps": o.hp.steps, "batch": o.batch, "threads": o.threads,
        "device": if o.device == Device::Cpu { "cpu" } else { "cuda" },
        "precision": o.precision,
    });
    let mut cmd = std::process::Command::new(py);
    cmd.args(["-c", PY, mode])
        .arg(blob)
        .arg(&out)
        .arg(cfg.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let limit = Duration::from_secs(900);
    let child = Supervised::spawn(&mut cmd, limit);
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child.wait_with_output()))
        .map_err(|_| format!("{mode}: killed after {limit:?}"))?;
    if !res.status.success() {
        let err = String::from_utf8_lossy(&res.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{mode}: python failed ({}):\n{}",
            res.status,
            tail.join("\n")
        ));
    }
    let v: serde_json::Value = std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{mode}: no result in {}", out.display()))?;
    let stamps: Vec<f64> = v["stamps"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    let loss = v["loss"].as_f64().ok_or(format!("{mode}: no loss"))?;
    Ok((median_step_ms(&stamps, o.warmup), loss))
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e bench: {e}");
            std::process::exit(2);
        }
    };
    tch::set_num_threads(o.threads);
    let data = tokens(&o);
    let (ms, loss, init) = match ours(&o, &data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("e2e bench: our run failed: {e}");
            std::process::exit(1);
        }
    };
    if !o.full {
        println!(
            "e2e bench (smoke): {} steps through the Trainer, loss {loss:.4}; run with --bench",
            o.hp.steps
        );
        assert!(loss.is_finite(), "the smoke run's loss is not finite");
        return;
    }
    let params: i64 = {
        let mut n = 0;
        init.visit_tensors("", &mut |_, t| n += t.numel() as i64);
        n
    };
    println!(
        "e2e bench: GPT {} layers, width {}, {} heads, ctx {}, vocab {} ({:.1} M params), batch {}, \
         {} steps ({} timed), AdamW + clip 1.0 + warmup/cosine, {:?}, {}, {} threads{}",
        o.hp.layers,
        o.hp.width,
        o.hp.heads,
        o.hp.ctx,
        o.hp.vocab,
        params as f64 / 1e6,
        o.batch,
        o.hp.steps,
        o.hp.steps as usize - o.warmup,
        o.device,
        o.precision,
        o.threads,
        match o.device {
            // Whether our AdamW ran as the fused kernel or fell back to tch ops.
            Device::Cuda(_) if lightning_core::cuda::available() => ", fused kernels",
            Device::Cuda(_) => ", tch-ops optimizer (fused kernels unavailable)",
            _ => "",
        }
    );
    let Some(py) = std::env::var_os("LIGHTNING_RS_PYTHON").map(std::path::PathBuf::from) else {
        println!("  ours (Trainer):        {ms:9.2} ms/step, final loss {loss:.6}");
        println!("  (LIGHTNING_RS_PYTHON not set: the PyTorch and Lightning anchors were not run)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let blob = dir.path().join("e2e.ckpt");
    let mut v = Value::dict();
    v.insert("tokens", data.shallow_clone());
    v.insert("state_dict", init);
    checkpoint::save(&blob, &v).expect("writing the data for Python");
    // Each side's (ms/step, final loss) per round; the first round's "ours" is the run above.
    let sides = [
        ("ours", "ours (Trainer)"),
        ("plain", "plain PyTorch loop"),
        ("lightning", "Lightning Trainer"),
    ];
    let mut runs: Vec<Vec<(f64, f64)>> = vec![vec![(ms, loss)], Vec::new(), Vec::new()];
    let mut failed = false;
    for round in 0..o.rounds.max(1) {
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for i in order {
            if i == 0 && round == 0 {
                continue;
            }
            let (mode, name) = sides[i];
            let r = if i == 0 {
                ours(&o, &data)
                    .map(|(ms, loss, _)| (ms, loss))
                    .map_err(|e| e.to_string())
            } else {
                python(&py, mode, &o, &blob)
            };
            match r {
                Ok(r) => runs[i].push(r),
                Err(e) => {
                    println!("  {name}: failed: {e}");
                    failed = true;
                }
            }
        }
    }
    let best = |rs: &[(f64, f64)]| rs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let rounds = |rs: &[(f64, f64)]| {
        rs.iter()
            .map(|r| format!("{:.2}", r.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ours_best = best(&runs[0]);
    println!(
        "  ours (Trainer):        {ours_best:9.2} ms/step (best of rounds: {}), final loss {loss:.6}",
        rounds(&runs[0])
    );
    // Every run of every side must have trained the same thing as our first run.
    for (i, (mode, name)) in sides.iter().enumerate() {
        for &(_, l) in &runs[i] {
            let rel = (loss - l).abs() / l.abs().max(1e-12);
            if rel > 1e-3 {
                println!(
                    "  ! {name}: a final loss of {l:.6} differs from ours by {rel:.1e} (over \
                     1e-3): not the same training"
                );
                failed = true;
            }
        }
        if i == 0 || runs[i].is_empty() {
            continue;
        }
        let (pms, ploss) = (best(&runs[i]), runs[i][0].1);
        let rel = (loss - ploss).abs() / ploss.abs().max(1e-12);
        println!(
            "  {name:<22} {pms:9.2} ms/step (best of rounds: {}), final loss {ploss:.6}; \
             ratio ours / {mode} = {:.3} (loss rel. diff {rel:.1e})",
            rounds(&runs[i]),
            ours_best / pms
        );
    }
    if failed {
        std::process::exit(1);
    }
}
