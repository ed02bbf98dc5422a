//! Save faults at the Trainer level (the file-level ENOSPC/EFBIG/read-only cases are in
//! `ckpt_robustness.rs`): a training run whose checkpoint directory turns read-only, whose
//! file-size limit drops below a checkpoint's size (`RLIMIT_FSIZE`, i.e. EFBIG), or whose
//! checkpoint directory is deleted mid-run, with synchronous and async saves.
//!
//! The trainer's policy (documented on `Trainer::fit`/the saver): a failed save stops `fit`
//! with an error naming the file (and, for a full disk or size limit, the bytes needed);
//! there is no warn-and-continue option. These tests check that policy and that nothing
//! saved before the fault is lost: every checkpoint that existed when the fault hit still
//! exists and reads back completely (so top-k deletions waited for the replacement), no
//! temporary file is left, and `last.ckpt` is the last good save.
//!
//! Faults that change process-wide state (rlimit, dropping root to make a directory
//! read-only for us) run in a child, under a time limit: `test-child save-faults`
//! (src/bin/test-child.rs; the role, `lightning_testkit::roles::save_faults`, shared with this
//! test, has the training).

use lightning_testkit::trainer_util;

use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_testkit::roles::save_faults::{ckpt_names, train, Fault, FAULT_AT, MODE, ROOT};
use lightning_testkit::Supervised;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the child for `mode`; returns (exit code, stdout).
fn run_child(root: &Path, mode: &str) -> (Option<i32>, String) {
    let out = Supervised::spawn(
        Command::new(env!("CARGO_BIN_EXE_test-child"))
            .arg("save-faults")
            .env(ROOT, root)
            .env(MODE, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(120),
    )
    .wait_with_output();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The checks shared by every fault: what existed before it is intact, every `.ckpt` loads,
/// no temporary file is left, `last.ckpt` is the save of `FAULT_AT`.
fn assert_nothing_lost(dir: &Path, out: &str, what: &str) {
    let before: Vec<&str> = out
        .lines()
        .find_map(|l| l.split_once("before-fault: ").map(|(_, names)| names))
        .unwrap_or_else(|| panic!("{what}: the fault never hit: {out}"))
        .split(',')
        .collect();
    assert!(
        before.contains(&"last.ckpt") && before.len() >= 3,
        "{what}: {before:?}"
    );
    let after = ckpt_names(dir);
    // A file on disk before the fault may only have gone as a top-2 eviction that a durable,
    // better save justified (with async saves, `ModelCheckpoint` defers that deletion until
    // the replacing write is durable, which can be after the fault was injected): it must be
    // worse than both top-k files still there.
    let loss = |n: &str| -> Option<f64> {
        n.strip_suffix(".ckpt")?
            .split_once("train_loss=")?
            .1
            .parse()
            .ok()
    };
    let kept: Vec<f64> = after.iter().filter_map(|n| loss(n)).collect();
    for name in &before {
        if after.iter().any(|a| a == name) {
            continue;
        }
        let evicted = loss(name).is_some_and(|l| kept.len() == 2 && kept.iter().all(|k| *k <= l));
        assert!(evicted, "{what}: {name} was lost ({before:?} -> {after:?})");
    }
    for name in &after {
        assert!(
            name.ends_with(".ckpt") && !name.starts_with('.'),
            "{what}: left {name} behind ({after:?})"
        );
        let p = dir.join(name);
        checkpoint::verify(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let last = checkpoint::load(&dir.join("last.ckpt")).unwrap();
    assert_eq!(
        last.get("global_step").and_then(Value::as_i64),
        Some(FAULT_AT),
        "{what}: last.ckpt is not the last good save"
    );
}

fn fault_in_child(mode: &str) {
    let root = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // the read-only child runs as `nobody` and must create `ck` here
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let dir = root.path().join("ck");
    let (code, out) = run_child(root.path(), mode);
    assert_eq!(code, Some(3), "{mode}: fit must stop with an error: {out}");
    let err = out
        .lines()
        .find(|l| l.contains("fit error: "))
        .unwrap_or_else(|| panic!("{mode}: {out}"));
    assert!(
        err.contains(&*dir.to_string_lossy()),
        "{mode}: the error does not name the checkpoint path: {err}"
    );
    if mode.starts_with("fsize") {
        assert!(
            err.contains("bytes needed") && err.contains("not enough space"),
            "{mode}: no size in {err}"
        );
    } else {
        assert!(err.contains("Permission denied"), "{mode}: {err}");
    }
    assert!(!out.contains("fit ok"), "{out}");
    assert_nothing_lost(&dir, &out, mode);
}

#[test]
fn read_only_checkpoint_dir_stops_with_the_path_and_keeps_saved_files_sync() {
    fault_in_child("readonly-sync");
}

#[test]
fn read_only_checkpoint_dir_stops_with_the_path_and_keeps_saved_files_async() {
    fault_in_child("readonly-async");
}

#[test]
fn file_size_limit_stops_with_path_and_bytes_and_keeps_saved_files_sync() {
    fault_in_child("fsize-sync");
}

#[test]
fn file_size_limit_stops_with_path_and_bytes_and_keeps_saved_files_async() {
    fault_in_child("fsize-async");
}

/// A checkpoint directory deleted mid-run: `ModelCheckpoint` recreates it at the next save
/// and training finishes; the files written after the deletion are complete, and the run
/// resumes from them. (The deleted files are gone: nothing can keep them.)
#[test]
fn deleted_checkpoint_dir_is_recreated_and_training_finishes() {
    let _serial = trainer_util::serial();
    for asynchronous in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ck");
        let step = train(root.path(), Fault::DeleteDir, asynchronous)
            .unwrap_or_else(|e| panic!("async={asynchronous}: {e}"));
        assert_eq!(step, 30);
        let names = ckpt_names(&dir);
        assert!(names.contains(&"last.ckpt".to_owned()), "{names:?}");
        for n in &names {
            assert!(!n.starts_with('.'), "temp file left: {names:?}");
            checkpoint::verify(&dir.join(n)).unwrap();
        }
        let last = checkpoint::load(&dir.join("last.ckpt")).unwrap();
        assert_eq!(last.get("global_step").and_then(Value::as_i64), Some(30));
    }
}
