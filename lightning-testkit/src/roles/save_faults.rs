//! The training of tests/checkpoint/save_faults.rs (shared with it): `child` runs the faults that change
//! process-wide state (rlimit, dropping root to make a directory read-only for us); the test
//! runs `train` itself for the deleted-directory case.

use crate::trainer_util::{data, Tiny, TinyHp};
use lightning_core::callbacks::{Callback, Mode, ModelCheckpoint, SaveLast, TrainerContext};
use lightning_core::trainer::Trainer;
use std::path::{Path, PathBuf};

pub const ROOT: &str = "SAVE_FAULTS_ROOT";
pub const MODE: &str = "SAVE_FAULTS_MODE";
/// The fault hits right after the checkpoint of this step is durable.
pub const FAULT_AT: i64 = 6;
/// The file-size limit set at the fault: far below a checkpoint (~400 kB).
pub const FSIZE_LIMIT: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    ReadOnly,
    FileSizeLimit,
    DeleteDir,
}

/// Registered after `ModelCheckpoint`: at `FAULT_AT`, waits for the step's save, records the
/// checkpoints on disk (printed as `before-fault: a,b,c`) and applies the fault.
pub struct Inject {
    pub fault: Fault,
    pub dir: PathBuf,
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

pub fn ckpt_names(dir: &Path) -> Vec<String> {
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
pub fn train(root: &Path, fault: Fault, asynchronous: bool) -> lightning_core::Result<i64> {
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

/// `test-child save-faults` with `SAVE_FAULTS_ROOT` and `SAVE_FAULTS_MODE`
/// (`readonly|fsize` + `-sync|-async`): trains until the fault stops `fit`; prints
/// `fit error: ...` and exits 3 (or `fit ok step=N`).
pub fn child() {
    let root = std::env::var(ROOT).expect("SAVE_FAULTS_ROOT is not set");
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
