//! `strategy="ddp"` on the CPU with 2 processes (Gloo): the test starts rank 0, which
//! launches rank 1 (the same binary, the same arguments). Both ranks end with the same
//! weights bit for bit, within 1e-6 of one process training on both ranks' batches together;
//! only rank 0 writes checkpoints and logs; the checkpoint is the single-process layout and a
//! DDP run resumes from it.

use lightning_testkit::roles::ddp;

use lightning_core::checkpoint;
use lightning_core::Value;
use lightning_testkit::Supervised;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn command(root: &Path, epochs: i64, devices: usize, resume: bool) -> Command {
    let mut cmd = crate::job("ddp");
    cmd.args([
        root.to_str().unwrap(),
        &epochs.to_string(),
        &devices.to_string(),
    ])
    .arg(if resume { "1" } else { "0" })
    .env_remove(ddp::DIE_AT)
    .env_remove(ddp::SLOW);
    cmd
}

fn run(root: &Path, epochs: i64, devices: usize, resume: bool) {
    crate::run_ok(&mut command(root, epochs, devices, resume), "ddp run");
}

fn weights(p: &Path) -> Vec<(String, tch::Tensor)> {
    match checkpoint::load(p).unwrap() {
        Value::OrderedDict(d) | Value::Dict(d) => d
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_tensor().unwrap().shallow_clone()))
            .collect(),
        other => panic!("{}: {other:?}", p.display()),
    }
}

#[test]
fn two_ranks_train_as_one_process_and_only_rank_zero_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ddp_root = dir.path().join("ddp");
    run(&ddp_root, 2, 2, false);
    let files = ddp::weights_files(&ddp_root);
    assert_eq!(files.len(), 2, "{files:?}");
    let (a, b) = (weights(&files[0]), weights(&files[1]));
    // train_loss is logged with sync_dist: every rank recorded the mean over the ranks
    let loss = |f: &Path| std::fs::read_to_string(f.with_extension("loss")).unwrap();
    assert_eq!(loss(&files[0]), loss(&files[1]));
    assert!(loss(&files[0]).parse::<f64>().unwrap().is_finite());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between ranks");
    }
    // one process on both ranks' batches together
    let single_root = dir.path().join("single");
    run(&single_root, 2, 1, false);
    let single = weights(&ddp::weights_files(&single_root)[0]);
    for ((n, t), (_, s)) in a.iter().zip(&single) {
        let diff = (t - s).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{n}: ddp vs one process differ by {diff}");
        eprintln!("{n}: ddp vs one process: max abs diff {diff:e}");
    }
    // rank 0 alone wrote the checkpoints and the logs, in the single-process layout
    let mut names: Vec<String> = std::fs::read_dir(ddp_root.join("ck"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}"); // 2 epochs + last.ckpt
    let versions = std::fs::read_dir(ddp_root.join("lightning_logs"))
        .unwrap()
        .count();
    assert_eq!(versions, 1);
    let last = checkpoint::load(&ddp_root.join("ck/last.ckpt")).unwrap();
    let sd = last.get("state_dict").unwrap().as_dict().unwrap();
    assert!(sd.keys().all(|k| !k.to_string().starts_with("module.")));
    let same = |k: &str| last.get(k) == Some(&Value::Int(12));
    assert!(same("global_step"), "{:?}", last.get("global_step")); // 96 rows / (2 x 8) x 2
    if let Some(out) = lightning_testkit::run_python(
        "import sys, torch\nc = torch.load(sys.argv[1], weights_only=True)\nprint(c['global_step'], sorted(c['state_dict']))",
        &[ddp_root.join("ck/last.ckpt").to_str().unwrap()],
    ) {
        let out = out.unwrap_or_else(|e| panic!("{e}"));
        assert!(out.starts_with("12 ['fc1.bias'"), "{out}");
    }
}

#[test]
fn a_ddp_run_resumes_from_its_checkpoint_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    run(&straight, 4, 2, false);
    let resumed = dir.path().join("resumed");
    run(&resumed, 2, 2, false);
    for f in ddp::weights_files(&resumed) {
        std::fs::remove_file(f).unwrap();
    }
    run(&resumed, 4, 2, true);
    let a = weights(&ddp::weights_files(&straight)[0]);
    let b = weights(&ddp::weights_files(&resumed)[0]);
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x.equal(y),
            "{n}: resumed DDP run differs from the straight one"
        );
    }
    // the whole training state in the final checkpoints, bit for bit
    let last = |root: &Path| checkpoint::load(&root.join("ck/last.ckpt")).unwrap();
    let (x, y) = (last(&straight), last(&resumed));
    for key in [
        "epoch",
        "global_step",
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "loops",
    ] {
        assert_eq!(x.get(key), y.get(key), "{key}");
    }
}

/// A rank that dies mid-run makes the job fail (rank 0 exits non-zero, naming the problem)
/// well within the collectives' timeout, and every checkpoint already on disk still loads.
#[test]
fn a_dying_rank_fails_the_job_without_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("die");
    let mut cmd = command(&root, 3, 2, false);
    cmd.env(ddp::DIE_AT, "8");
    let t = std::time::Instant::now();
    let out = Supervised::spawn(&mut cmd, Duration::from_secs(90)).wait_with_output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the job succeeded:\n{text}");
    assert!(text.contains("ddp child failed"), "{text}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let ck = root.join("ck");
    let mut n = 0;
    for e in std::fs::read_dir(&ck).unwrap().flatten() {
        checkpoint::verify(&e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        n += 1;
    }
    assert!(n >= 1, "the first epoch's checkpoint (step 6) is there");
}

/// The same binary runs under the venv's `torchrun --no-python` (every rank a client of the
/// agent's store), on one node with 2 processes and on 2 "nodes" of 1 process on this
/// machine, and trains to the same weights as our own launcher.
#[test]
fn torchrun_single_and_two_node_runs_match_our_launcher() {
    let Some(py) = lightning_testkit::python() else {
        return; // skipped with the reason printed (a failure when Python is required)
    };
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    run(&ours, 2, 2, false);
    let reference = weights(&ddp::weights_files(&ours)[0]);
    let child = env!("CARGO_BIN_EXE_test-child");
    let torchrun = |root: &Path, extra: &[String], devices: &str, nodes: &str| {
        let mut cmd = Command::new(&py);
        cmd.args(["-m", "torch.distributed.run"])
            .args(extra)
            .args(["--no-python", child, "ddp", root.to_str().unwrap(), "2"])
            .args([devices, "0", nodes])
            .env_remove(ddp::DIE_AT);
        lightning_testkit::fresh_job(&mut cmd);
        Supervised::spawn(&mut cmd, Duration::from_secs(120))
    };
    let check = |root: &Path, outs: Vec<std::process::Output>| {
        for out in outs {
            assert!(
                out.status.success(),
                "torchrun failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let files = ddp::weights_files(root);
        assert_eq!(files.len(), 2, "{files:?}");
        for f in files {
            for ((n, x), (_, y)) in weights(&f).iter().zip(&reference) {
                assert!(
                    x.equal(y),
                    "{}: {n} differs from our launcher's run",
                    f.display()
                );
            }
        }
        assert!(root.join("ck/last.ckpt").exists());
    };
    let single = dir.path().join("single");
    let out = torchrun(
        &single,
        &["--standalone".into(), "--nproc-per-node=2".into()],
        "2",
        "1",
    )
    .wait_with_output();
    check(&single, vec![out]);
    let two = dir.path().join("two-nodes");
    let port = lightning_core::distributed::free_port("127.0.0.1").unwrap();
    let node = |rank: usize| {
        torchrun(
            &two,
            &[
                "--nnodes=2".into(),
                format!("--node-rank={rank}"),
                "--nproc-per-node=1".into(),
                "--master-addr=127.0.0.1".into(),
                format!("--master-port={port}"),
            ],
            "1",
            "2",
        )
    };
    let (n0, n1) = (node(0), node(1));
    check(&two, vec![n0.wait_with_output(), n1.wait_with_output()]);
}

/// SIGTERM to rank 0 mid-run: every rank stops at the same step, rank 0 saves one
/// `last.ckpt` (complete), and the job exits cleanly.
#[test]
fn sigterm_stops_every_rank_at_one_step_with_one_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pre");
    let mut cmd = command(&root, 1000, 2, false);
    cmd.env(ddp::SLOW, "20");
    let step = crate::preempt_after_step_3(&mut cmd);
    let last = checkpoint::load(&root.join("ck/last.ckpt")).unwrap();
    assert_eq!(last.get("global_step"), Some(&Value::Int(step)));
    // both ranks stopped with the same weights
    let files = ddp::weights_files(&root);
    assert_eq!(files.len(), 2);
    for ((n, x), (_, y)) in weights(&files[0]).iter().zip(&weights(&files[1])) {
        assert!(x.equal(y), "{n}");
    }
    // resuming that mid-epoch last.ckpt ends where a run that never stopped ends
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    run(&root, 2, 2, true);
    let straight = dir.path().join("straight");
    run(&straight, 2, 2, false);
    let a = weights(&ddp::weights_files(&root)[0]);
    let b = weights(&ddp::weights_files(&straight)[0]);
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x.equal(y),
            "{n}: resumed mid-epoch differs from the straight run"
        );
    }
}
