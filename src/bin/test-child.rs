//! The child processes of the integration tests, one binary so that they are not `#[test]`s
//! (a test that only runs when an env var is set passes, and counts, without testing
//! anything). `cargo test` builds it with the tests, which run it through
//! `env!("CARGO_BIN_EXE_test-child")` under a time limit ([`lightning_testkit::Supervised`]).
//!
//! `test-child <role>`, parameters in env vars set by the test:
//! - `crash-harness`: a training run for tests/checkpoint/crash_harness.rs (killed and resumed);
//! - `preempt`: a long training run for tests/trainer/preempt.rs (stopped with SIGTERM);
//! - `save-faults`: a training run whose checkpoint saves fail, for tests/checkpoint/save_faults.rs;
//! - `failing-save`: one checkpoint save under a lowered limit, for
//!   tests/checkpoint/robustness.rs;
//! - `ddp ROOT EPOCHS DEVICES RESUME`: a `strategy="ddp"` run (rank 0 launches the other
//!   ranks) for tests/distributed/trainer_ddp.rs;
//! - `data-ddp ROOT DEVICES MAX_EPOCHS MAX_STEPS RESUME WORKERS LR TAG`: training on a
//!   dataset that records the samples it loads, DDP or one process, for
//!   tests/distributed/data_ddp.rs;
//! - `fsdp ROOT DEVICES MAX_EPOCHS RESUME full|sharded [async]`: a `strategy="fsdp"` run for
//!   tests/distributed/fsdp.rs;
//! - `gan-ddp ROOT`: one epoch of the GAN (manual optimization, two optimizers) on 2 DDP
//!   ranks, each writing its final weights, for tests/distributed/gan_ddp.rs;
//! - `python-check`: [`lightning_testkit::python`]'s decision, for tests/trainer/python_rule.rs.
//!
//! The code each role runs is in `lightning_testkit::roles`, which the test uses too, so both
//! sides use the same constants and training setup.

use lightning_testkit::roles::{
    crash_harness, data_ddp, ddp, failing_save, fsdp, preempt, save_faults,
};

fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    match role.as_str() {
        "crash-harness" => crash_harness::child(),
        "ddp" => ddp::child(&std::env::args().skip(2).collect::<Vec<_>>()),
        "data-ddp" => data_ddp::child(&std::env::args().skip(2).collect::<Vec<_>>()),
        "fsdp" => fsdp::child(&std::env::args().skip(2).collect::<Vec<_>>()),
        "gan-ddp" => gan_ddp(&std::env::args().skip(2).collect::<Vec<_>>()),
        "preempt" => preempt::child(),
        "save-faults" => save_faults::child(),
        "failing-save" => failing_save::child(),
        "python-check" => match lightning_testkit::python() {
            Some(p) => println!("python: {}", p.display()),
            None => println!("python: none"),
        },
        _ => {
            eprintln!(
                "usage: test-child crash-harness|ddp|data-ddp|fsdp|gan-ddp|preempt|save-faults|failing-save|python-check \
                 (run by the integration tests, with their env vars)"
            );
            std::process::exit(2);
        }
    }
}

/// The GAN example on 2 DDP ranks for one epoch; each rank writes
/// `weights-<rank0|other>-<pid>.ckpt` with its final weights.
fn gan_ddp(args: &[String]) {
    use clap::Parser;
    let root = args.first().cloned().unwrap_or_default();
    let a = lightning_rs::gan::Args::parse_from([
        "gan",
        "--root",
        &root,
        "--max-epochs",
        "1",
        "--strategy",
        "ddp_find_unused_parameters_true",
        "--devices",
        "2",
    ]);
    let r = lightning_rs::gan::train(&a).and_then(|o| {
        let mut sd = lightning_core::Dict::new();
        for (k, v) in o.weights {
            sd.insert(k.into(), lightning_core::Value::Tensor(v));
        }
        let tag = if o.rank_zero { "rank0" } else { "other" };
        let p =
            std::path::Path::new(&root).join(format!("weights-{tag}-{}.ckpt", std::process::id()));
        lightning_core::checkpoint::save(&p, &lightning_core::Value::OrderedDict(sd))?;
        std::fs::write(p.with_extension("steps"), o.global_step.to_string())?;
        lightning_core::trainer::finish_distributed()?;
        Ok(())
    });
    if let Err(e) = r {
        eprintln!("gan-ddp child failed: {e:#}");
        std::process::exit(1);
    }
}
