//! The training of tests/distributed/fsdp.rs: `child` is rank 0 of a `strategy="fsdp"` job
//! on the CPU (it launches the other ranks), or the one process of the single-process
//! reference (`devices` 0: no FSDP, both ranks' batches together).

use crate::roles::ddp::{data, reference_data, Slow, BATCH, SLOW};
use crate::trainer_util::{Tiny, TinyHp};
use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::trainer::{CkptPath, FsdpOptions, StateDictType, Strategy, Trainer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `root`, `devices` (0: the single-process reference), `max_epochs`, `resume` (a path, or
/// `last`, or `-`), `state_dict_type`, then optionally `async` (async checkpointing).
pub struct Args {
    pub root: PathBuf,
    pub devices: usize,
    pub max_epochs: i64,
    pub resume: Option<CkptPath>,
    pub state_dict_type: StateDictType,
    pub asynchronous: bool,
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
