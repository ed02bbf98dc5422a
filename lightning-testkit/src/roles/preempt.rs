//! The training of tests/trainer/preempt.rs (shared with it): `child` is the process the test
//! stops with SIGTERM; the test runs `train` itself to resume and to compare.

use crate::trainer_util::{data, SaveAt, Tiny, TinyHp};
use lightning_core::trainer::{CkptPath, Trainer};
use std::path::Path;
use std::time::Duration;

/// The child's root directory (it checkpoints under `<root>/ck`).
pub const CHILD: &str = "TRAINER_PREEMPT_CHILD";

pub fn train(root: &Path, max_epochs: i64, resume: bool, announce: bool) -> (Tiny, Trainer) {
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let ck = root.join("ck");
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .seed(3)
        .default_root_dir(root)
        .logger(false)
        .max_epochs(max_epochs)
        .callback(SaveAt::new(&ck, &[], "unused.ckpt"))
        .callback(Announce(announce))
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), resume.then_some(CkptPath::Last))
        .unwrap();
    (m, t)
}

/// Prints "step N" after every step (so the parent knows training runs) and slows steps.
struct Announce(bool);
impl lightning_core::callbacks::Callback for Announce {
    fn state_key(&self) -> String {
        "Announce".into()
    }
    fn on_train_batch_end(
        &mut self,
        t: &mut lightning_core::callbacks::TrainerContext<'_>,
    ) -> lightning_core::Result<()> {
        if self.0 {
            println!("step {}", t.run.global_step);
            std::thread::sleep(Duration::from_millis(20));
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

/// `test-child preempt` with `TRAINER_PREEMPT_CHILD=<root>`: trains (1000 epochs, i.e. until
/// stopped) and prints `preempted=<bool> step=<n>`.
pub fn child() {
    let root = std::env::var(CHILD).expect("TRAINER_PREEMPT_CHILD is not set");
    let (_, t) = train(Path::new(&root), 1000, false, true);
    println!("preempted={} step={}", t.was_preempted(), t.global_step());
}
