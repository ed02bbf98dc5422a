//! The child of tests/checkpoint/robustness.rs's failing-disk cases: one checkpoint save under a
//! lowered limit (shared with the test for the env var's name).

use lightning_core::checkpoint::{self, CheckpointError};
use lightning_core::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `<mode>:<dir>` for the child.
pub const CHILD_ENV: &str = "LIGHTNING_RS_CKPT_CHILD";

fn big_tree() -> Value {
    let mut v = Value::dict();
    v.insert("w", Tensor::ones([1 << 18], (Kind::Float, Device::Cpu))); // 1 MiB
    v
}

/// `test-child failing-save` with `LIGHTNING_RS_CKPT_CHILD=<fsize|readonly>:<dir>`: lowers the
/// limits (file size, or user for a read-only directory), tries to save over `old.ckpt`, and
/// prints the error.
pub fn child() {
    let spec = std::env::var(CHILD_ENV).expect("LIGHTNING_RS_CKPT_CHILD is not set");
    let (mode, dir) = spec.split_once(':').unwrap();
    let dir = Path::new(dir);
    // SAFETY: plain syscalls in a single-threaded child process.
    unsafe {
        match mode {
            "fsize" => {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: 256 << 10,
                    rlim_max: 256 << 10,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
            _ => {
                if libc::geteuid() == 0 {
                    assert_eq!(libc::setgid(65534), 0);
                    assert_eq!(libc::setuid(65534), 0);
                }
            }
        }
    }
    let e = checkpoint::save(&dir.join("old.ckpt"), &big_tree()).unwrap_err();
    println!("CHILD-ERROR {e}");
    if let CheckpointError::NoSpace { needed, .. } = e {
        println!("CHILD-NEEDED {needed}");
    }
}
