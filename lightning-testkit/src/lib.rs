//! Test support of the workspace (not published, not a public API): the one rule for tests
//! that need Python (`python`), a local S3 API server (`moto`), child processes under a time
//! limit (`Supervised`), the command line cargo gives bench binaries (`bench`), a lock for tests that touch libtorch's process-global RNG (`serial`),
//! and the code that the integration tests share with their child processes: the tiny model
//! and data of the trainer tests (`trainer_util`) and what each role of the root package's
//! `test-child` binary runs (`roles`), so both sides use the same constants and setup.

pub mod bench;
mod child;
pub mod moto;
mod python;
pub mod roles;
pub mod trainer_util;

pub use child::Supervised;
pub use python::{python, run_python, run_python_within, skip_or_fail, PYTHON_ENV, REQUIRE_ENV};

/// Serializes the tests of one binary that touch libtorch's process-global state: its RNG
/// (model init, per-step reseeding) and its thread count. A test holding the guard does not
/// interleave with another holding it; every test binary has one lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes `cmd` the first process of a fresh job: no rank or rendezvous variables from this
/// process's environment (so it becomes rank 0 and launches the other ranks, or a launcher
/// such as torchrun sets them), and its output captured.
pub fn fresh_job(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env_remove("LOCAL_RANK")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("MASTER_PORT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
}
