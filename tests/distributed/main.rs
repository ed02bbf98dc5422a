mod data_ddp;
mod fsdp;
mod gan_ddp;
mod sampler;
mod trainer_ddp;

use lightning_testkit::Supervised;
use std::process::Command;
use std::time::Duration;

/// `test-child <role>` as the first process of a job: no rank or rendezvous variables of this
/// process's environment, so it becomes rank 0 and launches the other ranks itself; its
/// output is captured.
pub(crate) fn job(role: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-child"));
    lightning_testkit::fresh_job(cmd.arg(role));
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

/// Runs `cmd` (a job whose rank 0 prints `step N` after each step, slowed by
/// `roles::ddp::SLOW`), sends it SIGTERM once it printed `step 3`, waits (at most 90 s) and
/// returns the step it reports stopping at (`preempted at step N`); fails unless it exits
/// cleanly.
pub(crate) fn preempt_after_step_3(cmd: &mut Command) -> i64 {
    use std::io::{BufRead, BufReader};
    let mut child = Supervised::spawn(cmd, Duration::from_secs(90));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    // wait until training runs
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 3") {
            break;
        }
    }
    assert!(child.signal(libc::SIGTERM));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output();
    assert!(
        out.status.success(),
        "{}\n{}",
        rest.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    rest.iter()
        .find_map(|l| l.strip_prefix("preempted at step "))
        .unwrap_or_else(|| panic!("{rest:?}"))
        .parse()
        .unwrap()
}
