//! Kill -9 harness: a training process saving a checkpoint every step (sync and async, in
//! turns) is killed with SIGKILL at random points 30 times, each time resumed with `last`.
//! After every kill, every `*.ckpt` in the directory must read back completely; at the end
//! the run finishes with the same weights as one that was never interrupted.
//!
//! The child is this test binary re-run with `TRAINER_KILL9_CHILD` set.

mod trainer_util;

use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::checkpoint;
use lightning_core::trainer::{CkptPath, Trainer};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trainer_util::{data, Tiny, TinyHp};

const CHILD: &str = "TRAINER_KILL9_CHILD";
const EPOCHS: i64 = 4;

fn train(root: &Path, asynchronous: bool, checkpoints: bool) -> Tiny {
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mc = ModelCheckpoint::builder()
        .dirpath(root.join("ck"))
        .every_n_train_steps(1)
        .save_last(SaveLast::True)
        .build()
        .unwrap();
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .seed(3)
        .default_root_dir(root)
        .logger(false)
        .max_epochs(EPOCHS)
        .async_checkpointing(asynchronous)
        .enable_checkpointing(checkpoints)
        .boxed_callback(if checkpoints {
            Box::new(mc)
        } else {
            Box::new(trainer_util::SaveAt::new(root, &[], "unused"))
        })
        .callback(Announce(std::env::var(CHILD).is_ok()))
        .build()
        .unwrap();
    let resume = root.join("ck/last.ckpt").exists().then_some(CkptPath::Last);
    t.fit(&mut m, &data(480, 8, true), resume).unwrap();
    m
}

/// In the child: prints "step N" after every step so the parent kills it mid-training.
struct Announce(bool);
impl lightning_core::callbacks::Callback for Announce {
    fn state_key(&self) -> String {
        "Announce".into()
    }
    fn on_train_batch_end(
        &mut self,
        t: &mut dyn lightning_core::callbacks::TrainerContext,
    ) -> lightning_core::Result<()> {
        if self.0 {
            println!("step {}", t.global_step());
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
    let Ok(root) = std::env::var(CHILD) else {
        return;
    };
    let asynchronous = std::env::var("TRAINER_KILL9_ASYNC").is_ok();
    train(Path::new(&root), asynchronous, true);
}

/// A small deterministic generator for kill delays (seed printed for reruns).
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn check_all_checkpoints_load(dir: &Path, round: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "ckpt") {
            if let Err(err) = checkpoint::verify(&p) {
                panic!("round {round}: {} does not read back: {err}", p.display());
            }
        }
    }
}

#[test]
fn killed_runs_keep_loadable_checkpoints_and_resume_to_the_same_weights() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill-9 harness seed {seed}");
    let exe = std::env::current_exe().unwrap();
    let ck = dir.path().join("ck");
    let start = Instant::now();
    let mut kills = 0;
    for round in 0..30 {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if round % 2 == 1 {
            cmd.env("TRAINER_KILL9_ASYNC", "1");
        }
        let mut child = cmd.spawn().unwrap();
        // Wait until it trains (libtorch start-up takes a while), then kill it at a random point.
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("step") && tx.send(()).is_err() {
                    break;
                }
            }
        });
        // Kill after the first or second announced step plus a few random milliseconds, so
        // each round advances only a few of the run's 180 steps and every round is killed
        // mid-training, in whatever save phase the delay lands on.
        for _ in 0..=(next(&mut seed) % 2) {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(next(&mut seed) % 8));
        if child.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
            kills += 1;
        }
        child.wait().unwrap();
        check_all_checkpoints_load(&ck, round);
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "harness took too long"
        );
    }
    eprintln!("{kills} kills in {:.1}s", start.elapsed().as_secs_f64());
    assert!(
        kills >= 20,
        "only {kills} of 30 runs were still training when killed"
    );
    let reached = checkpoint::load(&ck.join("last.ckpt")).unwrap();
    let step = reached
        .get("global_step")
        .and_then(lightning_core::Value::as_i64)
        .unwrap();
    eprintln!("the killed runs got to step {step}");
    assert!(step > 10, "the children barely trained (step {step})");
    // Finish the interrupted run, then compare with an uninterrupted one.
    let resumed = train(dir.path(), false, true);
    let other = tempfile::tempdir().unwrap();
    let straight = train(other.path(), false, false);
    assert_eq!(resumed.weights(), straight.weights());
}
