//! The digits example (`examples/digits.rs`: `cargo build --example digits`, which
//! `scripts/test.sh` runs before the tests) with each LR
//! schedule and with EMA weight averaging: 2 epochs, then `--resume last` to 4, ends with the
//! checkpoint of 4 straight epochs, bit for bit (weights, averaged weights, optimizer,
//! scheduler, loops; not the ModelCheckpoint paths or the wall time).

use lightning_core::checkpoint;
use lightning_core::{Key, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The example binary beside this test's own (`target/<profile>/examples/digits`).
fn digits() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join("digits"))
        .unwrap();
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --example digits` first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn run(root: &Path, epochs: i64, flags: &[&str], resume: bool) {
    let mut cmd = Command::new(digits());
    cmd.args([
        "--root",
        root.to_str().unwrap(),
        "--max-epochs",
        &epochs.to_string(),
    ])
    .args(flags)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    if resume {
        cmd.args(["--resume", "last"]);
    }
    let out =
        lightning_testkit::Supervised::spawn(&mut cmd, Duration::from_secs(120)).wait_with_output();
    assert!(
        out.status.success(),
        "digits {flags:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `last.ckpt` without what differs by construction between two runs.
fn last(root: &Path) -> Value {
    let mut v = checkpoint::load(&root.join("checkpoints/last.ckpt")).unwrap();
    if let Some(Value::Dict(cbs)) = v.get_mut("callbacks") {
        cbs.retain(|k, _| !k.to_string().starts_with("ModelCheckpoint"));
    }
    if let Some(Value::Dict(r)) = v.get_mut("lightning_rs") {
        r.shift_remove(&Key::from("train_time_s"));
    }
    v
}

#[test]
fn each_schedule_and_ema_resume_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let configs: [&[&str]; 5] = [
        &["--lr-scheduler", "step"],
        &["--lr-scheduler", "plateau"],
        &["--lr-scheduler", "cosine", "--ema", "0.9"],
        &["--lr-scheduler", "onecycle"],
        &["--lr-scheduler", "plateau", "--ema", "0.95"],
    ];
    std::thread::scope(|s| {
        for (i, flags) in configs.iter().enumerate() {
            let dir = dir.path();
            s.spawn(move || {
                let straight = dir.join(format!("{i}-straight"));
                let resumed = dir.join(format!("{i}-resumed"));
                run(&straight, 4, flags, false);
                run(&resumed, 2, flags, false);
                run(&resumed, 4, flags, true);
                let (a, b) = (last(&straight), last(&resumed));
                assert_eq!(a.get("global_step"), Some(&Value::Int(180)), "{flags:?}");
                assert!(a == b, "{flags:?}: resumed differs from straight");
                if flags.contains(&"--ema") {
                    assert!(
                        a.get("current_model_state").is_some(),
                        "{flags:?}: EMA layout"
                    );
                }
            });
        }
    });
}
