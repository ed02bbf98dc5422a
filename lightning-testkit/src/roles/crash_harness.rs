//! The training process of tests/checkpoint/crash_harness.rs (shared with it: the test uses the
//! constants): trains with the `Trainer` API (the same `ModelCheckpoint` setup as
//! `examples/digits.rs`: top-k on a metric, `save_last`, `every_n_train_steps`), printing
//! `step N` after each step, from scratch or resumed from `last`, with 0 to 3 loader threads.

use crate::trainer_util::{data, Tiny, TinyHp};
use lightning_core::callbacks::{Callback, Mode, ModelCheckpoint, SaveLast, TrainerContext};
use lightning_core::data::DataModule;
use lightning_core::trainer::{CkptPath, Trainer};
use std::path::Path;

pub const ROOT: &str = "CRASH_HARNESS_ROOT";
pub const ASYNC: &str = "CRASH_HARNESS_ASYNC";
pub const RESUME: &str = "CRASH_HARNESS_RESUME";
/// Hidden width of the model: 8 * HIDDEN parameters (~1.5 MB per checkpoint with Adam).
pub const HIDDEN: i64 = 16_384;
/// 120 training rows in batches of 8: 15 steps per epoch.
pub const EPOCHS: i64 = 8;
pub const STEPS: i64 = 15 * EPOCHS;
/// Set for the reference run: keep every checkpoint (`save_top_k = -1`) so each kill's
/// `last.ckpt` can be compared with the uninterrupted run's file of the same step.
pub const KEEP_ALL: &str = "CRASH_HARNESS_KEEP_ALL";

/// Prints `step N` after each optimizer step, before the checkpoint callback saves.
struct Announce;
impl Callback for Announce {
    fn state_key(&self) -> String {
        "Announce".into()
    }
    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        println!("step {}", t.run.global_step);
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// One training process: fresh or resumed from `last`, sync or async saves, to `EPOCHS`.
/// On completion it writes `root/final.ckpt` (weights, optimizer, loops).
fn train_child(root: &Path, asynchronous: bool, resume: bool) -> lightning_core::Result<()> {
    let hp = TinyHp {
        hidden: HIDDEN,
        lr: 0.01,
        dropout: 0.1,
        ..TinyHp::default()
    };
    let (mut m, _vs) = Tiny::new(hp, 7);
    let ckpt = ModelCheckpoint::builder()
        .dirpath(root.join("ck"))
        .filename("{epoch}-{step}-{train_loss:.4f}")
        .monitor("train_loss")
        .mode(Mode::Min)
        .save_top_k(if std::env::var(KEEP_ALL).is_ok() {
            -1
        } else {
            2
        })
        .save_last(SaveLast::True)
        .every_n_train_steps(1)
        .build()?;
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .seed(11)
        .default_root_dir(root)
        .max_epochs(EPOCHS)
        .async_checkpointing(asynchronous)
        .callback(Announce)
        .callback(ckpt)
        .build()?;
    // Each process loads with its own number of loader threads (0 to 3, from its pid): the
    // batches, and so a resumed run's weights, must not depend on it.
    let workers = (std::process::id() % 4) as usize;
    let dm = data(160, 8, true);
    let train = dm
        .train_loader()
        .cloned()
        .map(|l| l.num_workers(workers).prefetch_factor(2));
    let dm = match (train, dm.val_loader().cloned()) {
        (Some(train), Some(val)) => DataModule::new().train(train).val(val),
        _ => dm,
    };
    println!("loader workers {workers}");
    t.fit(&mut m, &dm, resume.then_some(CkptPath::Last))?;
    if t.was_preempted() {
        println!("preempted step={}", t.global_step());
    } else {
        t.save_checkpoint(&m, root.join("final.ckpt"), false)?;
        println!("done step={}", t.global_step());
    }
    Ok(())
}

/// `test-child crash-harness` with `CRASH_HARNESS_ROOT` (and `_ASYNC`, `_RESUME`) set.
pub fn child() {
    let root = std::env::var(ROOT).expect("CRASH_HARNESS_ROOT is not set");
    let asynchronous = std::env::var(ASYNC).is_ok_and(|v| v == "1");
    let resume = std::env::var(RESUME).is_ok_and(|v| v == "1");
    tch::set_num_threads(1);
    if let Err(e) = train_child(Path::new(&root), asynchronous, resume) {
        eprintln!("error: {e}");
        std::process::exit(3);
    }
}
