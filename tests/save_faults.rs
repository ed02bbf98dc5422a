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
//! read-only for us) run in a child: this test binary re-run with `SAVE_FAULTS_ROOT` set.

mod trainer_util;

use lightning_core::callbacks::{Callback, Mode, ModelCheckpoint, SaveLast, TrainerContext};
use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use std::path::{Path, PathBuf};
use std::process::Command;
use trainer_util::{data, Tiny, TinyHp};

const ROOT: &str = "SAVE_FAULTS_ROOT";
const MODE: &str = "SAVE_FAULTS_MODE";
/// The fault hits right after the checkpoint of this step is durable.
const FAULT_AT: i64 = 6;
/// The file-size limit set at the fault: far below a checkpoint (~400 kB).
const FSIZE_LIMIT: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    ReadOnly,
    FileSizeLimit,
    DeleteDir,
}

/// Registered after `ModelCheckpoint`: at `FAULT_AT`, waits for the step's save, records the
/// checkpoints on disk (printed as `before-fault: a,b,c`) and applies the fault.
struct Inject {
    fault: Fault,
    dir: PathBuf,
}

impl Callback for Inject {
    fn state_key(&self) -> String {
        "Inject".into()
    }
    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        if t.run.global_step != FAULT_AT {
            return Ok(());
        }
        t.wait_for_saves()?;
        println!("before-fault: {}", ckpt_names(&self.dir).join(","));
        match self.fault {
            Fault::ReadOnly => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o555))
                    .expect("chmod");
            }
            Fault::FileSizeLimit => {
                let lim = libc::rlimit {
                    rlim_cur: FSIZE_LIMIT,
                    rlim_max: libc::RLIM_INFINITY,
                };
                // SAFETY: plain syscall; this process is a child made for this test.
                assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
            }
            Fault::DeleteDir => std::fs::remove_dir_all(&self.dir).expect("rm -r"),
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

fn ckpt_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Two epochs of 15 steps, a checkpoint every 2 steps, top-2 by train_loss plus last.ckpt.
fn train(root: &Path, fault: Fault, asynchronous: bool) -> lightning_core::Result<i64> {
    let hp = TinyHp {
        hidden: 4096,
        ..TinyHp::default()
    };
    let (mut m, _vs) = Tiny::new(hp, 5);
    let dir = root.join("ck");
    let mc = ModelCheckpoint::builder()
        .dirpath(&dir)
        .filename("{step}-{train_loss:.4f}")
        .monitor("train_loss")
        .mode(Mode::Min)
        .save_top_k(2)
        .save_last(SaveLast::True)
        .every_n_train_steps(2)
        .build()?;
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .seed(1)
        .default_root_dir(root)
        .max_epochs(2)
        .async_checkpointing(asynchronous)
        .callback(mc)
        .callback(Inject { fault, dir })
        .build()?;
    t.fit(&mut m, &data(160, 8, true), None)?;
    Ok(t.global_step())
}

#[test]
fn fault_child() {
    let Ok(root) = std::env::var(ROOT) else {
        return;
    };
    let mode = std::env::var(MODE).unwrap_or_default();
    let asynchronous = mode.ends_with("-async");
    let fault = if mode.starts_with("readonly") {
        // Root ignores permissions: drop to `nobody` (the parent made `root` writable for it).
        // SAFETY: plain syscalls in a child process made for this test.
        unsafe {
            if libc::geteuid() == 0 {
                assert_eq!(libc::setgid(65534), 0);
                assert_eq!(libc::setuid(65534), 0);
            }
        }
        Fault::ReadOnly
    } else {
        // Exceeding the limit must give EFBIG, not kill the process with SIGXFSZ.
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        Fault::FileSizeLimit
    };
    match train(Path::new(&root), fault, asynchronous) {
        Ok(step) => println!("fit ok step={step}"),
        Err(e) => {
            println!("fit error: {e}");
            std::process::exit(3);
        }
    }
}

/// Runs the child for `mode`; returns (exit code, stdout).
fn run_child(root: &Path, mode: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
        .env(ROOT, root)
        .env(MODE, mode)
        .output()
        .unwrap();
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
    if std::env::var(ROOT).is_ok() {
        return;
    }
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
    if std::env::var(ROOT).is_ok() {
        return;
    }
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
