//! Preemption: SIGTERM to a training process makes it finish the step, save `last.ckpt`
//! and exit cleanly; resuming from it continues (to the same weights as an uninterrupted run).
//!
//! The child is this test binary re-run with `TRAINER_PREEMPT_CHILD` set (only the
//! `child_process` test then trains).

mod trainer_util;

use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trainer_util::{data, SaveAt, Tiny, TinyHp};

const CHILD: &str = "TRAINER_PREEMPT_CHILD";

fn train(root: &Path, max_epochs: i64, resume: bool, announce: bool) -> (Tiny, Trainer) {
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

#[test]
fn child_process() {
    let _serial = trainer_util::serial();
    let Ok(root) = std::env::var(CHILD) else {
        return;
    };
    let (_, t) = train(Path::new(&root), 1000, false, true);
    println!("preempted={} step={}", t.was_preempted(), t.global_step());
}

#[test]
fn sigterm_saves_last_and_resume_continues() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let start = Instant::now();
    // Wait for some training steps, then ask it to stop.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "step 10" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child never trained"
        );
    }
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "child exited with {status}; output {rest:?}"
    );
    let summary = rest
        .iter()
        .find(|l| l.starts_with("preempted="))
        .unwrap_or_else(|| panic!("{rest:?}"));
    assert!(summary.starts_with("preempted=true"), "{summary}");
    let step: i64 = summary.rsplit('=').next().unwrap().parse().unwrap();
    assert!((10..=20).contains(&step), "stopped at step {step}");
    let last = dir.path().join("ck/last.ckpt");
    let c = checkpoint::load(&last).unwrap();
    assert_eq!(c.get("global_step").and_then(Value::as_i64), Some(step));
    // Resume with `last` to 5 epochs: the same weights as a run that was never stopped.
    let (m, t) = train(dir.path(), 5, true, false);
    assert_eq!(t.global_step(), 40);
    let other = tempfile::tempdir().unwrap();
    let (m2, _) = train(other.path(), 5, false, false);
    assert_eq!(m.weights(), m2.weights());
}
