//! Two ranks on 127.0.0.1, each a `lightning-dist-child` process under a time limit: the
//! collectives, DDP training against one process on the full batch, and a peer that leaves.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, run_ranks, RankRun};
use lightning_dist::Store;

/// Generous for a loaded 2-core CI machine; a healthy run takes about a second.
const LIMIT: Duration = Duration::from_secs(60);

fn all_ok(runs: &[RankRun]) {
    for r in runs {
        r.assert_ok();
    }
}

#[test]
fn collectives_on_two_ranks() {
    let runs = run_ranks("collectives", 2, free_port(), &[], LIMIT);
    all_ok(&runs);
    for r in &runs {
        assert!(r.stdout.contains("OK collectives"), "{}", r.stdout);
    }
}

fn check_ddp(runs: &[RankRun]) -> (String, f64) {
    all_ok(runs);
    let weights = runs[0].value("weights").expect("weights line").to_owned();
    for r in runs {
        assert_eq!(
            r.value("weights"),
            Some(weights.as_str()),
            "rank {}'s weights differ from rank 0's bit for bit",
            r.rank
        );
        let diff: f64 = r.value("maxdiff").expect("maxdiff line").parse().unwrap();
        assert!(
            diff <= 1e-6,
            "rank {}: max |ddp - full batch| = {diff:e} > 1e-6",
            r.rank
        );
    }
    let diff = runs[0].value("maxdiff").unwrap().parse().unwrap();
    (weights, diff)
}

#[test]
fn ddp_two_ranks_half_batches_equal_one_process_full_batch() {
    let started = Instant::now();
    let runs = run_ranks("ddp", 2, free_port(), &[("LDIST_STEPS", "5")], LIMIT);
    let (_, diff) = check_ddp(&runs);
    // Default caps: 67 floats fit one bucket; DDP rebuilds the buckets once, before step 1.
    assert_eq!(runs[0].value("buckets"), Some("1"));
    assert_eq!(runs[0].value("rebuilt_at"), Some("1"));
    eprintln!("ddp: 5 steps, max diff {diff:e}, {:?}", started.elapsed());
}

/// Gradient accumulation (no_sync on the first of two micro-batches), tiny buckets (one per
/// parameter), find_unused_parameters with a parameter the forward never uses,
/// gradient_as_bucket_view, and a store hosted by a launcher agent (every rank a client, as
/// under torchrun).
#[test]
fn ddp_accumulation_small_buckets_unused_param_grad_views_agent_store() {
    let agent = Store::server("127.0.0.1", 0, 2, Duration::from_secs(30)).expect("agent store");
    let port = agent.port().expect("agent store port");
    let runs = run_ranks(
        "ddp",
        2,
        port,
        &[
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("LDIST_STEPS", "4"),
            ("LDIST_ACCUM", "2"),
            ("LDIST_FIND_UNUSED", "1"),
            ("LDIST_GRAD_AS_VIEW", "1"),
            // ~10 bytes: every parameter gets its own bucket.
            ("LDIST_BUCKET_CAP_MB", "0.00001"),
        ],
        LIMIT,
    );
    check_ddp(&runs);
    let buckets: usize = runs[0].value("buckets").unwrap().parse().unwrap();
    assert!(
        buckets >= 4,
        "expected one bucket per parameter, got {buckets}"
    );
}

#[test]
fn peer_exit_makes_the_collective_fail_not_hang() {
    let started = Instant::now();
    let runs = run_ranks(
        "exit-early",
        2,
        free_port(),
        &[("LDIST_TIMEOUT_MS", "3000")],
        LIMIT,
    );
    // Rank 1 exits like a crash (its exit status is not the point); rank 0 must report it.
    assert!(runs[1].stdout.contains("leaving"), "{:?}", runs[1]);
    let survivor = &runs[0];
    survivor.assert_ok();
    assert!(
        survivor.stdout.contains("OK exit-early"),
        "{}",
        survivor.stdout
    );
    let after: u64 = survivor.value("error_after_ms").unwrap().parse().unwrap();
    // Bounded by the group's 3 s timeout (a closed connection is usually reported at once).
    assert!(after < 10_000, "the error took {after} ms");
    let message = survivor.value("error").unwrap();
    assert!(message.starts_with("all_reduce failed: "), "{message}");
    eprintln!(
        "exit-early: error after {after} ms ({message}); test {:?}",
        started.elapsed()
    );
}

/// A peer dies mid-training: the survivor's gradient all-reduce, inside `backward()`, fails
/// and tch's `f_backward` returns the error.
#[test]
fn peer_exit_during_ddp_backward_is_an_error() {
    let runs = run_ranks(
        "ddp",
        2,
        free_port(),
        &[
            ("LDIST_EXIT_RANK1_AT_STEP", "1"),
            ("LDIST_TIMEOUT_MS", "3000"),
        ],
        LIMIT,
    );
    assert!(runs[1].stdout.contains("leaving"), "{:?}", runs[1]);
    let survivor = &runs[0];
    survivor.assert_ok();
    assert!(
        survivor.stdout.contains("OK ddp-peer-exit"),
        "{}",
        survivor.stdout
    );
    let message = survivor.value("backward_error").unwrap();
    eprintln!("ddp peer exit: backward error: {message}");
    assert!(
        survivor.elapsed < Duration::from_secs(30),
        "{:?}",
        survivor.elapsed
    );
}

#[test]
fn silent_peer_makes_the_collective_time_out() {
    let runs = run_ranks(
        "stall",
        2,
        free_port(),
        &[("LDIST_TIMEOUT_MS", "2000")],
        LIMIT,
    );
    let survivor = &runs[0];
    survivor.assert_ok();
    assert!(survivor.stdout.contains("OK stall"), "{}", survivor.stdout);
    let after: u64 = survivor.value("error_after_ms").unwrap().parse().unwrap();
    assert!(
        (1_500..15_000).contains(&after),
        "the 2 s timeout fired after {after} ms"
    );
    let message = survivor.value("error").unwrap();
    assert!(message.starts_with("all_reduce failed: "), "{message}");
    assert!(message.to_lowercase().contains("timed out"), "{message}");
    eprintln!("stall: error after {after} ms ({message})");
}

/// Two ranks with Gloo on CUDA tensors (on a one-GPU machine both use GPU 0).
#[test]
fn gloo_on_cuda_tensors_two_ranks() {
    if !tch::Cuda::is_available() {
        assert!(
            std::env::var("LIGHTNING_RS_EXPECT_GPU").as_deref() != Ok("1"),
            "LIGHTNING_RS_EXPECT_GPU=1 but tch::Cuda::is_available() is false"
        );
        eprintln!(
            "skipped gloo_on_cuda_tensors_two_ranks: no GPU (tch::Cuda::is_available() is false)"
        );
        return;
    }
    let runs = run_ranks("gloo-cuda", 2, free_port(), &[], LIMIT);
    all_ok(&runs);
    for r in &runs {
        assert!(r.stdout.contains("OK gloo-cuda"), "{}", r.stdout);
    }
}
