//! `strategy="fsdp"` on the CPU (Gloo): 2 ranks train as one process on both ranks' batches
//! (within float tolerance: gradients are averaged by reduce-scatter), save sharded
//! checkpoints in Lightning's layout (a DCP directory + `meta.pt`, one file per rank) or full
//! `.ckpt` files, resume exactly, and resume on another number of ranks.

use lightning_core::checkpoint::dcp;
use lightning_core::storage::{CheckpointIO, DefaultCheckpointIO};
use lightning_core::Value;
use lightning_testkit::trainer_util;
use std::path::Path;

fn run(root: &Path, devices: usize, epochs: i64, resume: &str, kind: &str) {
    let mut cmd = crate::job("fsdp");
    cmd.args([
        root.to_str().unwrap(),
        &devices.to_string(),
        &epochs.to_string(),
        resume,
    ]);
    // `sharded-async`: sharded saves written by each rank's background writer.
    match kind.strip_suffix("-async") {
        Some(k) => cmd.args([k, "async"]),
        None => cmd.arg(kind),
    };
    crate::run_ok(&mut cmd, &format!("fsdp run ({devices} ranks, {kind})"));
}

/// The `state_dict` of a checkpoint file or sharded directory, read whole.
fn weights(p: &Path) -> Vec<(String, tch::Tensor)> {
    let v = DefaultCheckpointIO.load_checkpoint(p).unwrap();
    match v.get("state_dict") {
        Some(Value::OrderedDict(d) | Value::Dict(d)) => d
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_tensor().unwrap().shallow_clone()))
            .collect(),
        other => panic!("{}: state_dict is {other:?}", p.display()),
    }
}

fn assert_bitwise(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{what}");
        assert!(ta.equal(tb), "{what}: {na} differs");
    }
}

#[test]
fn sharded_checkpoints_resume_exactly_and_on_other_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let root = |n: &str| dir.path().join(n);
    // Straight: 2 epochs on 2 ranks, sharded saves.
    run(&root("straight"), 2, 2, "-", "sharded");
    let last = root("straight").join("ck").join("last.ckpt");
    let mut files: Vec<String> = std::fs::read_dir(&last)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    );
    // Each rank wrote its rows of every parameter: the metadata lists both blocks.
    let r = dcp::DcpReader::open(&last).unwrap();
    let dcp::ItemMeta::Tensor(t) = &r.metadata().items["model.fc1.weight"] else {
        panic!("model.fc1.weight is not a tensor");
    };
    assert_eq!(t.chunks.len(), 2, "{t:?}");
    assert!(dcp::lightning::is_sharded_checkpoint(&last));
    let straight = weights(&last);
    assert_bitwise(
        &weights(&root("straight").join("final.ckpt")),
        &straight,
        "final vs last",
    );

    // The same job under the venv's `torchrun --standalone` (every rank a client of the
    // agent's store): the same sharded checkpoint, bit for bit.
    if let Some(py) = lightning_testkit::python() {
        let tr = root("torchrun");
        let mut cmd = std::process::Command::new(py);
        cmd.args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
        ])
        .args(["--no-python", env!("CARGO_BIN_EXE_test-child"), "fsdp"])
        .args([tr.to_str().unwrap(), "2", "2", "-", "sharded"]);
        lightning_testkit::fresh_job(&mut cmd);
        crate::run_ok(&mut cmd, "fsdp under torchrun");
        assert_bitwise(
            &weights(&tr.join("ck").join("last.ckpt")),
            &straight,
            "torchrun vs our launcher",
        );
    }

    // SIGTERM to rank 0 mid-epoch: every rank stops at one step and the ranks save one
    // sharded `last.ckpt`; resuming it ends as the straight run, bit for bit.
    let pre = root("preempted");
    let mut cmd = crate::job("fsdp");
    cmd.args([pre.to_str().unwrap(), "2", "2", "-", "sharded"])
        .env(lightning_testkit::roles::ddp::SLOW, "20");
    let step = crate::preempt_after_step_3(&mut cmd);
    let pre_last = pre.join("ck").join("last.ckpt");
    assert!(dcp::lightning::is_sharded_checkpoint(&pre_last));
    let saved = DefaultCheckpointIO.load_checkpoint(&pre_last).unwrap();
    assert_eq!(saved.get("global_step").and_then(Value::as_i64), Some(step));
    assert!(step < 6, "stopped mid-epoch 0 (step {step})");
    run(&pre, 2, 2, "last", "sharded");
    assert_bitwise(
        &weights(&pre.join("final.ckpt")),
        &straight,
        "resumed after preemption",
    );

    // 1 epoch, then resume from `last` to 2: the same weights, bit for bit.
    run(&root("resumed"), 2, 1, "-", "sharded");
    run(&root("resumed"), 2, 2, "last", "sharded");
    assert_bitwise(
        &weights(&root("resumed").join("final.ckpt")),
        &straight,
        "resumed",
    );

    // The 2-rank checkpoint resumes on 1 and 3 ranks (rows re-split): nothing left to train,
    // the weights are the checkpoint's; and 3 ranks train one more epoch from it.
    let src = last.to_str().unwrap();
    run(&root("on1"), 1, 2, src, "sharded");
    assert_bitwise(
        &weights(&root("on1").join("final.ckpt")),
        &straight,
        "resumed on 1 rank",
    );
    run(&root("on3"), 3, 3, src, "full");
    let on3 = weights(&root("on3").join("final.ckpt"));
    assert!(
        root("on3").join("final.ckpt").is_file(),
        "state_dict_type=full writes one file"
    );
    assert!(
        on3.iter()
            .zip(&straight)
            .any(|((_, a), (_, b))| !a.equal(b)),
        "3 ranks trained an epoch"
    );

    // Lightning's consolidate_checkpoint makes a `.ckpt` of ours that torch reads with
    // weights_only=True, with our weights.
    let script = r#"
import runpy, sys, json, torch
src = sys.argv[1]
sys.argv = ["consolidate_checkpoint", src]
runpy.run_module("lightning.pytorch.utilities.consolidate_checkpoint", run_name="__main__")
c = torch.load(src + ".consolidated", weights_only=True)
print(json.dumps({"keys": sorted(c), "sd": {k: v.flatten().tolist() for k, v in c["state_dict"].items()},
                  "opt": sorted(c["optimizer_states"][0]["state"])}))
"#;
    let copy = root("consolidate").join("last.ckpt");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&last).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let Some(out) = lightning_testkit::run_python(script, &[copy.to_str().unwrap()]) else {
        return;
    };
    let out = out.unwrap();
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    for k in [
        "epoch",
        "global_step",
        "loops",
        "optimizer_states",
        "state_dict",
        "callbacks",
    ] {
        assert!(
            got["keys"].as_array().unwrap().iter().any(|x| x == k),
            "{k}: {got}"
        );
    }
    for (name, t) in &straight {
        let theirs: Vec<f32> = got["sd"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            theirs,
            Vec::<f32>::try_from(t.reshape([-1])).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        got["opt"],
        serde_json::json!(["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"])
    );

    // Lightning's FSDP strategy (on the CPU, one process) resumes ours: our weights, epoch,
    // step and LR at its train start; then it saves its own sharded checkpoint, which our
    // 2-rank run resumes with exactly its weights and step.
    let theirs = root("theirs.ckpt");
    let script = format!("{}\n{PY_LIGHTNING_FSDP}", trainer_util::PY_TINY);
    let Some(out) = lightning_testkit::run_python(&script, &[src, theirs.to_str().unwrap()]) else {
        return;
    };
    let out = out.unwrap();
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (got["epoch"].as_i64(), got["step"].as_i64()),
        (Some(2), Some(12)),
        "{got}"
    );
    assert_eq!(got["end_step"], 16);
    for (name, t) in &straight {
        let at_start: Vec<f32> = got["sd"][name]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {got}"))
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            at_start,
            Vec::<f32>::try_from(t.reshape([-1])).unwrap(),
            "{name}"
        );
    }
    let their_weights = weights(&theirs);
    let ours_from_theirs = root("from-lightning");
    run(&ours_from_theirs, 2, 3, theirs.to_str().unwrap(), "full");
    let fin = DefaultCheckpointIO
        .load_checkpoint(&ours_from_theirs.join("final.ckpt"))
        .unwrap();
    assert_eq!(fin.get("global_step").and_then(Value::as_i64), Some(16));
    assert_bitwise(
        &weights(&ours_from_theirs.join("final.ckpt")),
        &their_weights,
        "from Lightning's",
    );
}

/// After `PY_TINY`: Lightning's `FSDPStrategy` on the CPU (its `_setup_model` with
/// `device_id=cpu`; the stock class refuses the CPU), one process, resumes `argv[1]`, trains
/// to epoch 3 on 32 rows (4 steps an epoch) and saves a sharded checkpoint to `argv[2]`.
const PY_LIGHTNING_FSDP: &str = r#"
import sys, json, warnings
warnings.filterwarnings("ignore")
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.strategies import FSDPStrategy
class CPUFSDP(FSDPStrategy):
    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel
        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config, sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"), **self.kwargs)
seen = {}
class Probe(pl.Callback):
    def on_train_start(self, trainer, m):
        seen.update(step=trainer.global_step, epoch=trainer.current_epoch,
                    sd={k: v.detach().flatten().tolist() for k, v in m.named_parameters()})
torch.manual_seed(0)
x = torch.randn(32, 4); y = (x[:, 0] > 0).long()
t = pl.Trainer(strategy=CPUFSDP(state_dict_type="sharded"), accelerator="cpu", devices=1,
               max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[Probe()])
t.fit(Tiny(dropout=0.0), DataLoader(TensorDataset(x, y), batch_size=8), ckpt_path=sys.argv[1])
t.save_checkpoint(sys.argv[2])
print(json.dumps(dict(seen, end_step=t.global_step)))
"#;

#[test]
fn two_fsdp_ranks_train_as_one_process_and_full_saves_are_single_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = |n: &str| dir.path().join(n);
    run(&root("fsdp"), 2, 2, "-", "full");
    run(&root("single"), 0, 2, "-", "full");
    let last = root("fsdp").join("ck").join("last.ckpt");
    assert!(
        last.is_file() || last.is_symlink(),
        "a full save is one file"
    );
    let (a, b) = (
        weights(&root("fsdp").join("final.ckpt")),
        weights(&root("single").join("final.ckpt")),
    );
    assert_eq!(a.len(), b.len());
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.size(), y.size(), "{n} is whole");
        let diff = (x - y).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{n}: FSDP vs one process differ by {diff}");
    }
    // A single-file checkpoint of one process resumes under FSDP, and an FSDP sharded
    // directory in one process without FSDP: the same weights (nothing left to train).
    let single_last = root("single").join("ck").join("last.ckpt");
    run(
        &root("into-fsdp"),
        2,
        2,
        single_last.to_str().unwrap(),
        "sharded",
    );
    assert_bitwise(
        &weights(&root("into-fsdp").join("final.ckpt")),
        &b,
        "single file into FSDP",
    );
    let sharded_last = root("into-fsdp").join("ck").join("last.ckpt");
    assert!(dcp::lightning::is_sharded_checkpoint(&sharded_last));
    run(
        &root("out-of-fsdp"),
        0,
        2,
        sharded_last.to_str().unwrap(),
        "full",
    );
    assert_bitwise(
        &weights(&root("out-of-fsdp").join("final.ckpt")),
        &b,
        "FSDP dir into one process",
    );
    // Async sharded saves: every epoch's directory complete, training unchanged.
    run(&root("async"), 2, 2, "-", "sharded-async");
    assert_bitwise(
        &weights(&root("async").join("final.ckpt")),
        &a,
        "async sharded",
    );
    let ck = root("async").join("ck");
    let mut dirs: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        ["epoch=0-step=6.ckpt", "epoch=1-step=12.ckpt", "last.ckpt"]
    );
    for d in &dirs {
        assert_eq!(
            weights(&ck.join(d)).len(),
            a.len(),
            "{d} is a complete checkpoint"
        );
    }
}

/// `FsdpUnit`s (FSDP2's per-layer `fully_shard`, Lightning's wrap policy): a step gathers one
/// unit's parameters at a time (around its forward, again before its backward) and
/// reduce-scatters its gradients as its backward ends; the training is the same as with the
/// model as one unit, bit for bit, while the bytes of gathered parameters peak lower.
#[test]
fn fsdp_units_train_as_one_unit_with_a_lower_peak_of_gathered_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let run_to = |name: &str, model: &str, epochs: &str, resume: &str| {
        let root = dir.path().join(name);
        let mut cmd = crate::job("fsdp");
        cmd.args([
            root.to_str().unwrap(),
            "2",
            epochs,
            resume,
            "sharded",
            model,
        ]);
        let out =
            lightning_testkit::Supervised::spawn(&mut cmd, std::time::Duration::from_secs(120))
                .wait_with_output();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "fsdp {model} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let peak: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("peak_gathered_bytes "))
            .unwrap_or_else(|| panic!("no peak in:\n{text}"))
            .trim()
            .parse()
            .unwrap();
        (weights(&root.join("final.ckpt")), peak)
    };
    let run = |name: &str, model: &str| run_to(name, model, "2", "-");
    let (one, one_peak) = run("one-unit", "stack");
    let (units, units_peak) = run("units", "units");
    assert_bitwise(&units, &one, "three FsdpUnits vs the model as one unit");
    // One unit: every layer's whole weights at once (about half of them beyond the shards on
    // 2 ranks: 4.7 KB); with units, the root (the head) and one 32x32 layer at most (2.2 KB).
    assert!(
        (units_peak as f64) < 0.6 * one_peak as f64,
        "peak gathered bytes: {units_peak} with units vs {one_peak} without"
    );
    // Units resume exactly from their sharded checkpoint (names are the same as without).
    run_to("units-resumed", "units", "1", "-");
    let (resumed, _) = run_to("units-resumed", "units", "2", "last");
    assert_bitwise(&resumed, &one, "units: 1 epoch + resume to 2");
    eprintln!("peak gathered bytes beyond the shards: one unit {one_peak}, units {units_peak}");
}
