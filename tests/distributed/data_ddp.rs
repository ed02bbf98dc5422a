//! Data under `strategy="ddp"` on the CPU (Gloo): validation sharded across ranks whose
//! metrics equal one process's and agree on every rank; a mid-epoch checkpoint from 2 ranks
//! continued on 1 and on 3 ranks sees every remaining sample exactly once (sample indices
//! recorded); a mid-epoch resume with other loader workers is bitwise exact.

use lightning_testkit::roles::data_ddp::{self, Args, ROWS};

use lightning_core::checkpoint;
use lightning_core::Value;
use std::path::Path;

fn run(a: &Args) {
    crate::run_ok(
        crate::job("data-ddp").args(a.to_args()),
        &format!("data-ddp run {a:?}"),
    );
}

fn args(root: &Path, devices: usize, tag: &str) -> Args {
    Args {
        root: root.to_owned(),
        devices,
        max_epochs: 1,
        max_steps: -1,
        resume: false,
        workers: 0,
        lr: 0.05,
        tag: tag.into(),
    }
}

fn outcome(root: &Path, tag: &str, rank: usize) -> Value {
    checkpoint::load(&data_ddp::output(root, tag, rank)).unwrap()
}

fn indices(v: &Value) -> Vec<i64> {
    list(v, "indices")
}

fn list(v: &Value, key: &str) -> Vec<i64> {
    v.get(key)
        .and_then(Value::as_seq)
        .unwrap()
        .iter()
        .map(|i| i.as_i64().unwrap())
        .collect()
}

fn metric(v: &Value, k: &str) -> f64 {
    v.get_path(&format!("val.{k}"))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no val.{k} in {v:?}"))
}

#[test]
fn sharded_validation_equals_one_process_and_every_rank_agrees() {
    let dir = tempfile::tempdir().unwrap();
    // lr 0: the weights stay at their (seeded) init, so every run validates the same model
    let single = Args {
        lr: 0.0,
        ..args(dir.path(), 1, "single")
    };
    run(&single);
    let three = Args {
        lr: 0.0,
        ..args(dir.path(), 3, "three")
    };
    run(&three);
    let one = outcome(dir.path(), "single", 0);
    // each rank validated its own share: 13 rows as 5, 4 and 4, together every row once
    let shares: Vec<Vec<i64>> = (0..3)
        .map(|r| list(&outcome(dir.path(), "three", r), "val_indices"))
        .collect();
    assert_eq!(
        shares.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 4, 4]
    );
    let mut all = shares.concat();
    all.sort_unstable();
    assert_eq!(all, (0..13).collect::<Vec<_>>());
    assert_eq!(list(&one, "val_indices"), (0..13).collect::<Vec<_>>());
    for k in ["val_loss", "val_acc"] {
        let want = metric(&one, k);
        let ranks: Vec<f64> = (0..3)
            .map(|r| metric(&outcome(dir.path(), "three", r), k))
            .collect();
        assert!(
            ranks.iter().all(|&v| v == ranks[0]),
            "{k}: ranks disagree: {ranks:?}"
        );
        // 13 rows over 3 ranks: 5, 4 and 4 samples (2, 1 and 1 batches); the mean over every
        // sample, not a mean of the ranks' means
        assert!(
            (ranks[0] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{k}: {ranks:?} vs {want}"
        );
    }
}

#[test]
fn a_mid_epoch_checkpoint_continues_on_another_number_of_ranks_seeing_each_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    for then in [1usize, 3] {
        let root = dir.path().join(format!("to{then}"));
        // 2 ranks stop at step 3 of epoch 0 (saving last.ckpt there)
        let first = Args {
            max_steps: 3,
            ..args(&root, 2, "first")
        };
        run(&first);
        let mut seen: Vec<i64> = (0..2)
            .flat_map(|r| indices(&outcome(&root, "first", r)))
            .collect();
        assert_eq!(seen.len(), 2 * 3 * 4, "3 batches of 4 on each rank");
        // `then` ranks finish the epoch from it
        let rest = Args {
            resume: true,
            ..args(&root, then, "rest")
        };
        run(&rest);
        for r in 0..then {
            seen.extend(indices(&outcome(&root, "rest", r)));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..ROWS).collect::<Vec<_>>(), "2 -> {then} ranks");
    }
}

#[test]
fn a_mid_epoch_resume_with_other_workers_under_ddp_is_bitwise_exact() {
    let dir = tempfile::tempdir().unwrap();
    let straight = Args {
        max_epochs: 2,
        workers: 2,
        ..args(dir.path(), 2, "straight")
    };
    run(&straight);
    let stopped = Args {
        root: dir.path().join("stopped"),
        max_epochs: 2,
        max_steps: 5,
        workers: 3,
        ..args(dir.path(), 2, "stopped")
    };
    run(&stopped);
    let resumed = Args {
        max_steps: -1,
        resume: true,
        workers: 1,
        tag: "resumed".into(),
        ..stopped.clone()
    };
    run(&resumed);
    let sd =
        |root: &Path, tag: &str, rank: usize| outcome(root, tag, rank).get("state_dict").cloned();
    let want = sd(dir.path(), "straight", 0);
    assert!(want.is_some());
    for rank in 0..2 {
        assert!(
            sd(&resumed.root, "resumed", rank) == want,
            "rank {rank}: the resumed run differs from the straight one"
        );
    }
}
