//! Preemption: SIGTERM to a training process makes it finish the step, save `last.ckpt`
//! and exit cleanly; resuming from it continues (to the same weights as an uninterrupted run).
//!
//! The child is `test-child preempt` (src/bin/test-child.rs; the role,
//! `lightning_testkit::roles::preempt`, shared with this test, has the training setup), run under a time limit.

use lightning_testkit::trainer_util;

use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_testkit::roles::preempt::{train, CHILD};
use lightning_testkit::Supervised;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_saves_last_and_resume_continues() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Supervised::spawn(
        Command::new(env!("CARGO_BIN_EXE_test-child"))
            .arg("preempt")
            .env(CHILD, dir.path())
            .stdout(Stdio::piped()),
        Duration::from_secs(120),
    );
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
    assert!(
        child.signal(libc::SIGTERM),
        "the child exited before SIGTERM"
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait();
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
