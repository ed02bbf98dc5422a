mod data_ddp;
mod fsdp;
mod gan_ddp;
mod sampler;
mod trainer_ddp;

use lightning_testkit::Supervised;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `test-child <role>` as the first process of a job: no rank or rendezvous variables of this
/// process's environment, so it becomes rank 0 and launches the other ranks itself; its
/// output is captured.
pub(crate) fn job(role: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-child"));
    cmd.arg(role)
        .env_remove("LOCAL_RANK")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("MASTER_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` (at most 120 s) and fails, with its output, unless it succeeds.
pub(crate) fn run_ok(cmd: &mut Command, what: &str) {
    let out = Supervised::spawn(cmd, Duration::from_secs(120)).wait_with_output();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
