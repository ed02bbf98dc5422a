//! Training on files: the shipped digits written as a real image folder (PNG files, one
//! sub-folder per class), read by `ImageFolder` with random resized crops on loader worker
//! threads, a small CNN trained with checkpoints and exact resume.
//!
//! ```text
//! cargo run --release --example images -- prepare --out runs/digit-images
//! cargo run --release --example images -- --data runs/digit-images --num-workers 4
//! cargo run --release --example images -- --data runs/digit-images --max-epochs 8 --resume last
//! cargo run --release --example images -- --data runs/digit-images --strategy ddp --devices 2
//! ```

use anyhow::Context;
use clap::{Parser, Subcommand};
use lightning_core::prelude::*;
use lightning_rs::images::{prepare, train_set, val_set, Cnn, CnnConfig};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device};

#[derive(Parser, Debug, Clone)]
#[command(about = "Train a CNN on an image folder with loader worker threads")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The image folder (`train/` and `val/`, one sub-folder per class), as `prepare` writes.
    #[arg(long, global = true, default_value = "runs/digit-images")]
    data: PathBuf,
    /// Loader worker threads (0: load on the training thread).
    #[arg(long, global = true, default_value_t = 2)]
    num_workers: usize,
    /// Batch size.
    #[arg(long, global = true, default_value_t = 64)]
    batch_size: i64,
    /// Epochs to train to (a resumed run continues up to this epoch).
    #[arg(long, global = true, default_value_t = 6)]
    max_epochs: i64,
    /// Stop after this many optimizer steps (-1: no limit).
    #[arg(long, global = true, default_value_t = -1)]
    max_steps: i64,
    /// Root directory for logs and `checkpoints/`.
    #[arg(long, global = true, default_value = "runs/images")]
    root: PathBuf,
    /// Resume from a checkpoint: a path, `last` or `best`.
    #[arg(long, global = true)]
    resume: Option<String>,
    /// Seed for weights, shuffling and augmentations.
    #[arg(long, global = true, default_value_t = 42)]
    seed: u64,
    /// Also checkpoint every N optimizer steps (0: at epoch ends only).
    #[arg(long, global = true, default_value_t = 0)]
    every_n_train_steps: i64,
    /// How many best checkpoints (by val_acc) to keep; -1 keeps all.
    #[arg(long, global = true, default_value_t = 2)]
    save_top_k: i64,
    /// `auto` (one process) or `ddp` (one process per device).
    #[arg(long, global = true, default_value = "auto")]
    strategy: String,
    /// Processes with `--strategy ddp`.
    #[arg(long, global = true, default_value_t = 1)]
    devices: usize,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long, global = true, default_value_t = 1)]
    threads: i32,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Write the shipped digits as an image folder (upscaled PNG files).
    Prepare {
        /// Where to write `train/` and `val/`.
        #[arg(long)]
        out: PathBuf,
    },
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    if let Some(Cmd::Prepare { out }) = &args.cmd {
        let (train, val) = prepare(out, args.seed)?;
        println!(
            "wrote {train} training and {val} validation images under {}",
            out.display()
        );
        return Ok(());
    }
    let data = DataModule::new()
        .train(
            DataLoader::new(train_set(&args.data)?, args.batch_size)
                .shuffle(true)
                .num_workers(args.num_workers),
        )
        .val(DataLoader::new(val_set(&args.data)?, 256).num_workers(args.num_workers));
    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Cnn::build(&CnnConfig::from_value(&Value::dict())?, &vs.root())?;
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
    let mut trainer = Trainer::builder()
        .max_epochs(args.max_epochs)
        .max_steps(args.max_steps)
        .default_root_dir(&args.root)
        .seed(args.seed)
        .strategy(args.strategy.as_str())
        .devices(args.devices)
        .callback(ckpt.build()?)
        .build()?;
    let start = Instant::now();
    trainer.fit(
        &mut model,
        &data,
        args.resume.as_deref().map(CkptPath::parse),
    )?;
    lightning_core::trainer::finish_distributed()?;
    if trainer.is_global_zero() {
        let acc = trainer
            .callback_metrics()
            .get("val_acc")
            .copied()
            .context("no validation ran")?;
        let wait = trainer.data_wait();
        println!(
            "trained to epoch {} (global step {}) in {:.2}s with {} loader workers; val_acc \
             {acc:.4}; waiting for data: {:.1}% of the training time",
            trainer.current_epoch(),
            trainer.global_step(),
            start.elapsed().as_secs_f64(),
            args.num_workers,
            100.0 * wait.as_secs_f64() / start.elapsed().as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
