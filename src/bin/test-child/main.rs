//! The child processes of the integration tests, one binary so that they are not `#[test]`s
//! (a test that only runs when an env var is set passes, and counts, without testing
//! anything). `cargo test` builds it with the tests, which run it through
//! `env!("CARGO_BIN_EXE_test-child")` under a time limit ([`lightning_rs::Supervised`]).
//!
//! `test-child <role>`, parameters in env vars set by the test:
//! - `crash-harness`: a training run for tests/crash_harness.rs (killed and resumed);
//! - `preempt`: a long training run for tests/trainer_preempt.rs (stopped with SIGTERM);
//! - `save-faults`: a training run whose checkpoint saves fail, for tests/save_faults.rs;
//! - `failing-save`: one checkpoint save under a lowered limit, for tests/ckpt_robustness.rs;
//! - `ddp ROOT EPOCHS DEVICES RESUME`: a `strategy="ddp"` run (rank 0 launches the other
//!   ranks) for tests/trainer_ddp.rs;
//! - `python-check`: [`lightning_rs::python`]'s decision, for tests/python_rule.rs.
//!
//! The code each role runs is in a module the test shares (`#[path]`), so both sides use
//! the same constants and training setup.

#[path = "../../../tests/trainer_util/mod.rs"]
mod trainer_util;

mod crash_harness;
mod ddp;
mod failing_save;
mod preempt;
mod save_faults;

fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    match role.as_str() {
        "crash-harness" => crash_harness::child(),
        "ddp" => ddp::child(&std::env::args().skip(2).collect::<Vec<_>>()),
        "preempt" => preempt::child(),
        "save-faults" => save_faults::child(),
        "failing-save" => failing_save::child(),
        "python-check" => match lightning_rs::python() {
            Some(p) => println!("python: {}", p.display()),
            None => println!("python: none"),
        },
        _ => {
            eprintln!(
                "usage: test-child crash-harness|ddp|preempt|save-faults|failing-save|python-check \
                 (run by the integration tests, with their env vars)"
            );
            std::process::exit(2);
        }
    }
}
