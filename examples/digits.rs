//! The main example: a classifier for scikit-learn's handwritten digits (1797 8x8 images,
//! 10 classes; `data/digits.csv.gz`), trained with the Lightning-style trainer, checkpointed
//! by `ModelCheckpoint` on `val_acc`, resumed exactly, and reloaded with overridden hparams.
//!
//! ```text
//! cargo run --release --example digits -- demo            # train, stop, resume, load best
//! cargo run --release --example digits -- --max-epochs 10 --root runs/digits
//! cargo run --release --example digits -- --max-epochs 20 --resume last --root runs/digits
//! cargo run --release --example digits -- --load-best --set dropout=0.0 --root runs/digits
//! cargo run --release --example digits -- --logger tensorboard   # + TensorBoard event files
//! # checkpoints on S3 (or any S3 API server; see the README's object-storage section)
//! AWS_ENDPOINT=http://127.0.0.1:5000 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=testing \
//!   AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 \
//!   cargo run --release --example digits -- demo --root s3://bucket/digits
//! ```

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use lightning_core::callbacks::WeightAveraging;
use lightning_core::lightning_module::SchedulerConfig;
use lightning_core::optim::{OneCycle, PlateauConfig, ReduceLROnPlateau};
use lightning_core::prelude::*;
use lightning_core::trainer::{FsdpOptions, Strategy};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// The MLP's hyperparameters (saved in every checkpoint as `hyper_parameters`).
#[derive(Hyperparameters, Clone, Debug)]
pub struct MlpConfig {
    /// Input features (8x8 pixels).
    #[hparam(default = 64)]
    pub in_dim: i64,
    /// Hidden width.
    #[hparam(default = 128)]
    pub hidden: i64,
    /// Output classes.
    #[hparam(default = 10)]
    pub classes: i64,
    /// Dropout after each hidden layer.
    #[hparam(default = 0.1)]
    pub dropout: f64,
    /// Adam's learning rate.
    #[hparam(default = 2e-3)]
    pub lr: f64,
    /// StepLR: multiply the lr by `gamma` every `step_size` epochs.
    #[hparam(default = 5)]
    pub step_size: i64,
    /// StepLR's factor (ReduceLROnPlateau's too).
    #[hparam(default = 0.5)]
    pub gamma: f64,
    /// The LR schedule: `step` (StepLR), `plateau` (ReduceLROnPlateau on `val_loss`,
    /// patience 1, factor `gamma`), `cosine` (CosineAnnealingLR over `step_size` x 2 epochs)
    /// or `onecycle` (OneCycleLR to `lr` over `onecycle_steps` steps, stepped every batch).
    #[hparam(default = "step")]
    pub lr_scheduler: String,
    /// OneCycleLR's length in steps (45 batches x 12 epochs: the default run).
    #[hparam(default = 540)]
    pub onecycle_steps: i64,
}

/// 64 -> hidden -> hidden -> 10 with ReLU and dropout.
#[lightning_module]
pub struct Mlp {
    #[hparams]
    hp: MlpConfig,
    fc1: nn::Linear,
    fc2: nn::Linear,
    head: nn::Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.fc1).relu().dropout(self.hp.dropout, train);
        let h = h.apply(&self.fc2).relu().dropout(self.hp.dropout, train);
        h.apply(&self.head)
    }

    fn metrics(&self, batch: &Batch, train: bool) -> (Tensor, Tensor) {
        lightning_rs::loss_and_accuracy(&self.forward(&batch[0], train), &batch[1])
    }
}

impl LightningModule for Mlp {
    fn build(hp: &MlpConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(Mlp {
            hp: hp.clone(),
            fc1: nn::linear(vs / "fc1", hp.in_dim, hp.hidden, Default::default()),
            fc2: nn::linear(vs / "fc2", hp.hidden, hp.hidden, Default::default()),
            head: nn::linear(vs / "head", hp.hidden, hp.classes, Default::default()),
        })
    }

    fn training_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let (loss, acc) = self.metrics(batch, ctx.training());
        ctx.log("train_loss", &loss).prog_bar(true);
        ctx.log("train_acc", &acc).on_step(false).on_epoch(true);
        Ok(loss)
    }

    fn validation_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        let (loss, acc) = self.metrics(batch, false);
        ctx.log("val_loss", &loss);
        ctx.log("val_acc", &acc).prog_bar(true);
        Ok(())
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let cfg = AdamConfig {
            lr: self.hp.lr,
            ..AdamConfig::default()
        };
        let mut opt = Adam::new(self.parameters(), cfg)?;
        let schedule = match self.hp.lr_scheduler.as_str() {
            "step" => Schedule::Step {
                step_size: self.hp.step_size,
                gamma: self.hp.gamma,
            },
            "cosine" => Schedule::CosineAnnealing {
                t_max: 2 * self.hp.step_size,
                eta_min: 0.0,
            },
            "plateau" => {
                let cfg = PlateauConfig {
                    factor: self.hp.gamma,
                    patience: 1,
                    ..PlateauConfig::default()
                };
                let plateau = ReduceLROnPlateau::new(&opt, cfg)?;
                let sched = SchedulerConfig::new(plateau).monitor("val_loss");
                return Ok(OptimizerConfig::new(opt).scheduler_config(sched));
            }
            "onecycle" => {
                let cycle = Schedule::OneCycle(OneCycle::new(self.hp.lr, self.hp.onecycle_steps));
                let sched = Scheduler::new(&mut opt, cycle)?;
                let sched = SchedulerConfig::new(sched).interval(Interval::Step);
                return Ok(OptimizerConfig::new(opt).scheduler_config(sched));
            }
            other => {
                return Err(lightning_core::Error::Config(format!(
                    "lr_scheduler={other:?}: expected \"step\", \"plateau\", \"cosine\" or \"onecycle\""
                )))
            }
        };
        let sched = Scheduler::new(&mut opt, schedule)?;
        Ok(OptimizerConfig::new(opt).scheduler(sched))
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Train an MLP on scikit-learn's digits with checkpoints and exact resume")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Epochs to train to (a resumed run continues up to this epoch).
    #[arg(long, global = true, default_value_t = 12)]
    max_epochs: i64,
    /// Root directory for logs (`lightning_logs/version_N`) and `checkpoints/`; or an
    /// object-storage URL (`s3://bucket/prefix`, `gs://`, `az://`; the logs are uploaded there
    /// too), with credentials and endpoint from the environment
    /// (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`).
    #[arg(long, global = true, default_value = "runs/digits")]
    root: PathBuf,
    /// Resume from a checkpoint: a path, `last` or `best`.
    #[arg(long, global = true)]
    resume: Option<String>,
    /// Seed for weights, shuffling and dropout.
    #[arg(long, global = true, default_value_t = 42)]
    seed: u64,
    /// `cpu` or `cuda`.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// Also checkpoint every N optimizer steps (0: at epoch ends only).
    #[arg(long, global = true, default_value_t = 0)]
    every_n_train_steps: i64,
    /// The LR schedule (sets the `lr_scheduler` hparam): step, plateau, cosine, onecycle.
    #[arg(long, global = true, value_parser = ["step", "plateau", "cosine", "onecycle"])]
    lr_scheduler: Option<String>,
    /// Keep an exponential moving average of the weights with this decay (Lightning's
    /// `EMAWeightAveraging`): validation and the saved `state_dict` use the average.
    #[arg(long, global = true)]
    ema: Option<f64>,
    /// How many best checkpoints (by val_acc) to keep; -1 keeps all.
    #[arg(long, global = true, default_value_t = 2)]
    save_top_k: i64,
    /// Trainer precision (`32-true`).
    #[arg(long, global = true, default_value = "32-true")]
    precision: String,
    /// Hyperparameter override `key=value` (repeatable), for training and for --load-best.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Load the best checkpoint (with the --set overrides) and report its accuracy.
    #[arg(long, global = true)]
    load_best: bool,
    /// libtorch intra-op threads (0: libtorch's default). One is fastest for this tiny MLP,
    /// and avoids oversubscribing shared machines.
    #[arg(long, global = true, default_value_t = 1)]
    threads: i32,
    /// Write checkpoints in the background.
    #[arg(long, global = true)]
    async_checkpointing: bool,
    /// `auto` (one process), `ddp` or `fsdp` (one process per device; this process is rank 0
    /// and starts the others, unless torchrun or SLURM started them; `fsdp` shards weights,
    /// gradients and optimizer state over them).
    #[arg(long, global = true, default_value = "auto")]
    strategy: String,
    /// With `--strategy fsdp`: `full` (one `.ckpt` file per save, written by rank 0) or
    /// `sharded` (a directory per save, each rank writing its own file).
    #[arg(long, global = true, default_value = "full")]
    state_dict_type: String,
    /// Processes per node with `--strategy ddp`.
    #[arg(long, global = true, default_value_t = 1)]
    devices: usize,
    /// Nodes with `--strategy ddp`.
    #[arg(long, global = true, default_value_t = 1)]
    num_nodes: usize,
    /// Where metrics go, in `<root>/lightning_logs/version_N`: `csv` (`metrics.csv`) or
    /// `tensorboard` (TensorBoard event files and `metrics.csv`, in the same version_N;
    /// watch with `tensorboard --logdir <root>/lightning_logs`).
    #[arg(long, global = true, value_enum, default_value_t = LoggerKind::Csv)]
    logger: LoggerKind,
}

/// `--logger`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LoggerKind {
    /// Lightning's `CSVLogger`.
    Csv,
    /// Lightning's `TensorBoardLogger`, plus the `CSVLogger`.
    Tensorboard,
}

impl LoggerKind {
    fn loggers(self) -> Loggers {
        match self {
            LoggerKind::Csv => Loggers::Default,
            LoggerKind::Tensorboard => {
                Loggers::from((TensorBoardLogger::default(), CsvLogger::default()))
            }
        }
    }
}

/// Whether this process is a rank other than 0 of a `--strategy ddp` job (it then prints
/// nothing and leaves the demo directory alone).
fn other_rank() -> bool {
    std::env::var("RANK").is_ok_and(|r| r != "0")
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Train 4 epochs, stop, resume with `last` to the end, load the best with an override.
    Demo,
}

fn datamodule(seed: u64) -> anyhow::Result<DataModule> {
    let (x, y) = lightning_rs::digits::load()?;
    let n = y.size()[0];
    let ds = TensorDataset::new(vec![x, y])?;
    let val = n / 5;
    let [train, val] = ds.random_split([n - val, val], seed)?;
    Ok(DataModule::new()
        .train(DataLoader::new(train, 32).shuffle(true))
        .val(DataLoader::new(val, 256)))
}

fn config(sets: &[String]) -> anyhow::Result<MlpConfig> {
    let mut hp = MlpConfig::from_value(&Value::dict())?;
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: expected key=value"))?;
        hp.set_str(k, v)?;
    }
    Ok(hp)
}

/// Trains (or resumes) up to `max_epochs`; returns the best checkpoint path and score.
fn train(args: &Args, max_epochs: i64, resume: Option<&str>) -> anyhow::Result<(PathBuf, f64)> {
    let mut hp = config(&args.sets)?;
    if let Some(s) = &args.lr_scheduler {
        hp.set_str("lr_scheduler", s)?;
    }
    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Mlp::build(&hp, &vs.root())?;
    let mut ckpt = ModelCheckpoint::builder()
        .dirpath(args.root.join("checkpoints"))
        .filename("{epoch:02d}-{val_acc:.4f}")
        .monitor("val_acc")
        .mode(Mode::Max)
        .save_top_k(args.save_top_k)
        .save_last(SaveLast::True);
    if args.every_n_train_steps > 0 {
        ckpt = ckpt.every_n_train_steps(args.every_n_train_steps);
    }
    let mut builder = Trainer::builder()
        .max_epochs(max_epochs)
        .default_root_dir(&args.root)
        .seed(args.seed)
        .device(lightning_rs::digits::device(&args.device)?)
        .precision(args.precision.as_str())
        .async_checkpointing(args.async_checkpointing)
        .strategy(match args.strategy.as_str() {
            "fsdp" => Strategy::Fsdp(FsdpOptions {
                state_dict_type: args.state_dict_type.parse()?,
                ..FsdpOptions::default()
            }),
            other => other.parse()?,
        })
        .accelerator(if args.device == "cuda" { "cuda" } else { "cpu" })
        .devices(args.devices)
        .num_nodes(args.num_nodes)
        .logger(args.logger.loggers())
        .callback(ckpt.build()?);
    if let Some(decay) = args.ema {
        builder = builder.callback(WeightAveraging::ema(decay));
    }
    let mut trainer = builder.build()?;
    let data = datamodule(args.seed)?;
    let start = Instant::now();
    trainer.fit(&mut model, &data, resume.map(CkptPath::parse))?;
    let mc = trainer
        .callback::<ModelCheckpoint>()
        .context("ModelCheckpoint is registered")?;
    let best = mc
        .best_model_path()
        .context("no checkpoint was saved")?
        .to_owned();
    let score = mc.best_model_score().unwrap_or(f64::NAN);
    if !trainer.is_global_zero() {
        return Ok((best, score));
    }
    println!(
        "trained to epoch {} (global step {}) in {:.2}s{}; best val_acc {score:.4} at {}",
        trainer.current_epoch(),
        trainer.global_step(),
        start.elapsed().as_secs_f64(),
        if trainer.was_preempted() {
            " (preempted: resume with --resume last)"
        } else {
            ""
        },
        best.display()
    );
    Ok((best, score))
}

/// Loads `ckpt` with the overrides and returns its validation accuracy.
fn evaluate(args: &Args, ckpt: &Path, sets: &[String]) -> anyhow::Result<f64> {
    let mut loader = Mlp::loader(ckpt);
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: expected key=value"))?;
        loader = loader.set(k, v);
    }
    let mut model: Mlp = loader.load()?;
    let mut trainer = Trainer::builder()
        .logger(false)
        .enable_progress_bar(false)
        .device(lightning_rs::digits::device(&args.device)?)
        .build()?;
    let metrics = trainer.validate(&mut model, &datamodule(args.seed)?, None)?;
    if other_rank() {
        return Ok(metrics["val_acc"]);
    }
    println!(
        "loaded {} with hparams {:?}: val_acc {:.4}",
        ckpt.display(),
        model.hparams(),
        metrics["val_acc"]
    );
    Ok(metrics["val_acc"])
}

/// Marks a directory the demo made, so a later demo may clear it.
const DEMO_MARKER: &str = ".digits-demo";

/// The demo starts from an empty `root`: it clears a directory an earlier demo made, creates a
/// missing one, and refuses to touch any other non-empty directory (it may hold real runs).
fn clear_demo_root(root: &Path) -> anyhow::Result<()> {
    if lightning_core::storage::is_url(root) {
        use lightning_core::storage::{CheckpointIO, DefaultCheckpointIO};
        let ck = root.join("checkpoints");
        if DefaultCheckpointIO.dir_has_files(&ck) {
            bail!(
                "refusing to run the demo in {}: it already holds checkpoints (the demo starts \
                 from an empty prefix; pick a new one)",
                ck.display()
            );
        }
        return Ok(());
    }
    let occupied = std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        if !root.join(DEMO_MARKER).exists() {
            bail!(
                "refusing to clear --root {}: it is not empty and was not made by the demo \
                 (no {DEMO_MARKER} file); pass an empty or new directory",
                root.display()
            );
        }
        std::fs::remove_dir_all(root)
            .with_context(|| format!("clearing the demo directory {}", root.display()))?;
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(
        root.join(DEMO_MARKER),
        b"made by `digits demo`; it clears this directory\n",
    )
    .with_context(|| format!("marking {}", root.display()))?;
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    run_job(&args)?;
    // rank 0 of a `--strategy ddp` job: wait for the ranks it started (an error if one failed)
    lightning_core::trainer::finish_distributed()?;
    Ok(())
}

fn say(line: &str) {
    if !other_rank() {
        println!("{line}");
    }
}

fn run_job(args: &Args) -> anyhow::Result<()> {
    let args = args.clone();
    if let Some(Cmd::Demo) = args.cmd {
        if !other_rank() {
            clear_demo_root(&args.root)?;
        }
        let stop_at = (args.max_epochs / 3).max(1);
        say(&format!(
            "== 1. train {stop_at} of {} epochs, then stop",
            args.max_epochs
        ));
        train(&args, stop_at, None)?;
        say(&format!(
            "== 2. resume from `last` and train to epoch {}",
            args.max_epochs
        ));
        let (best, score) = train(&args, args.max_epochs, Some("last"))?;
        say("== 3. load the best checkpoint with an override (dropout=0.0)");
        let acc = evaluate(&args, &best, &["dropout=0.0".to_owned()])?;
        if (acc - score).abs() > 1e-6 {
            bail!("the reloaded model's val_acc {acc} differs from the checkpoint's score {score}");
        }
        if acc < 0.95 {
            bail!("validation accuracy {acc:.4} is below the 0.95 goal");
        }
        say(&format!("demo OK: val_acc {acc:.4} >= 0.95"));
        return Ok(());
    }
    if args.load_best {
        // The best path is in ModelCheckpoint's state inside `last.ckpt`, as in Lightning.
        let last = args.root.join("checkpoints/last.ckpt");
        let ckpt = lightning_core::checkpoint::load(&last)
            .with_context(|| format!("--load-best: reading {}", last.display()))?;
        let best = ckpt
            .get("callbacks")
            .and_then(Value::as_dict)
            .and_then(|d| {
                d.iter()
                    .find(|(k, _)| k.to_string().starts_with("ModelCheckpoint"))
            })
            .and_then(|(_, state)| state.get("best_model_path")?.as_str())
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "--load-best: {} has no ModelCheckpoint best_model_path",
                    last.display()
                )
            })?;
        evaluate(&args, &best, &args.sets)?;
        return Ok(());
    }
    train(&args, args.max_epochs, args.resume.as_deref())?;
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
