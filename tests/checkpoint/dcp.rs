//! Sharded (DCP) checkpoint directories: ours read by torch 2.11's
//! `torch.distributed.checkpoint`, theirs read by us, resharding to other world sizes, and
//! the reader's refusals (a flipped byte, a foreign global).

use crate::common;

use common::{assert_same, describe, python};
use lightning_core::checkpoint::dcp::{self, DcpReader, LocalItem, PathPart};
use lightning_core::checkpoint::CheckpointError;
use lightning_core::{Dict, Value};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A model's and an optimizer's state as Lightning's FSDP strategy saves it.
fn state() -> Value {
    let f = (Kind::Float, Device::Cpu);
    let mut model = Dict::new();
    model.insert(
        "net.0.weight".into(),
        (Tensor::arange(15, f).reshape([5, 3]) / 7.0).into(),
    );
    model.insert(
        "net.0.bias".into(),
        Tensor::arange(5, (Kind::Double, Device::Cpu)).into(),
    );
    model.insert(
        "net.2.weight".into(),
        Tensor::arange(2, (Kind::Int64, Device::Cpu)).into(),
    );
    model.insert(
        "emb".into(),
        Tensor::arange(8, f)
            .to_kind(Kind::BFloat16)
            .reshape([2, 4])
            .into(),
    );
    let mut st = Dict::new();
    let mut w = Dict::new();
    w.insert("step".into(), Tensor::from(3.0f32).into());
    w.insert(
        "exp_avg".into(),
        (Tensor::arange(15, f).reshape([5, 3]) * 0.5).into(),
    );
    st.insert("net.0.weight".into(), Value::Dict(w));
    let mut group = Dict::new();
    group.insert("lr".into(), 0.01.into());
    group.insert("betas".into(), Value::Tuple(vec![0.9.into(), 0.999.into()]));
    group.insert("amsgrad".into(), false.into());
    group.insert("params".into(), Value::List(vec!["net.0.weight".into()]));
    let mut opt = Dict::new();
    opt.insert("state".into(), Value::Dict(st));
    opt.insert("param_groups".into(), Value::List(vec![Value::Dict(group)]));
    let mut v = Value::dict();
    v.insert("model", Value::Dict(model));
    v.insert("optimizer_0", Value::Dict(opt));
    v.insert("epoch", 4i64);
    v
}

/// Saves `v` as `world` ranks would: every tensor of 1+ dimensions split on dim 0 as FSDP
/// splits it (rank r writes its rows), everything else written by rank 0 only.
fn save_sharded(dir: &Path, v: &Value, world: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let flat = dcp::flatten(v);
    let mut written = Vec::new();
    for rank in 0..world {
        let mut items = Vec::new();
        for (key, path, x) in &flat {
            let item = match x {
                Value::Tensor(t) if t.dim() > 0 => {
                    let (lo, hi) = dcp::shard_rows(t.size()[0], rank, world);
                    let mut offsets = vec![0; t.dim()];
                    offsets[0] = lo;
                    LocalItem::Block {
                        global_size: t.size(),
                        offsets,
                        tensor: t.narrow(0, lo, hi - lo),
                    }
                }
                _ if rank > 0 => continue,
                Value::Tensor(t) => LocalItem::Block {
                    global_size: vec![],
                    offsets: vec![],
                    tensor: t.shallow_clone(),
                },
                other => LocalItem::Bytes((*other).clone()),
            };
            items.push((key.clone(), path.clone(), item));
        }
        written.extend(dcp::write_rank_file(dir, rank, &items, false).unwrap());
    }
    dcp::write_metadata(dir, &written, &dcp::new_save_id(), false).unwrap();
}

#[test]
fn flatten_follows_dcp_keys_and_paths() {
    let v = state();
    let keys: Vec<String> = dcp::flatten(&v).into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(
        keys,
        [
            "model.net.0.weight",
            "model.net.0.bias",
            "model.net.2.weight",
            "model.emb",
            "optimizer_0.state.net.0.weight.step",
            "optimizer_0.state.net.0.weight.exp_avg",
            "optimizer_0.param_groups.0.lr",
            "optimizer_0.param_groups.0.betas",
            "optimizer_0.param_groups.0.amsgrad",
            "optimizer_0.param_groups.0.params",
            "epoch",
        ]
    );
    let flat = dcp::flatten(&v);
    let lr = flat.iter().find(|(k, _, _)| k.ends_with(".lr")).unwrap();
    assert_eq!(
        lr.1,
        [
            PathPart::Key("optimizer_0".into()),
            PathPart::Key("param_groups".into()),
            PathPart::Index(0),
            PathPart::Key("lr".into()),
        ]
    );
    let back = dcp::unflatten(flat.into_iter().map(|(_, p, x)| (p, x.clone())).collect()).unwrap();
    assert_eq!(back, v);
}

#[test]
fn a_checkpoint_of_any_world_size_reads_back_whole_and_in_any_other_split() {
    let v = state();
    for world in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        save_sharded(dir.path(), &v, world);
        let r = DcpReader::open(dir.path()).unwrap();
        assert_eq!(r.read_all().unwrap(), v, "written by {world} ranks");
        let full = r.read_tensor("model.net.0.weight").unwrap();
        for to in [1, 2, 3, 4] {
            for rank in 0..to {
                let (lo, hi) = dcp::shard_rows(5, rank, to);
                let block = r
                    .read_block("model.net.0.weight", &[lo, 0], &[hi - lo, 3])
                    .unwrap();
                assert!(
                    block.equal(&full.narrow(0, lo, hi - lo)),
                    "{world} -> {to}, rank {rank}"
                );
            }
        }
        // A block across dimension 1 too.
        let b = r
            .read_block("model.net.0.weight", &[1, 1], &[3, 2])
            .unwrap();
        assert!(b.equal(&full.narrow(0, 1, 3).narrow(1, 1, 2)));
    }
}

#[test]
fn a_flipped_byte_or_a_foreign_global_is_an_error_naming_what() {
    let dir = tempfile::tempdir().unwrap();
    save_sharded(dir.path(), &state(), 2);
    let r = DcpReader::open(dir.path()).unwrap();
    let (_, info) = r
        .metadata()
        .storage
        .iter()
        .find(|(i, _)| i.fqn == "model.net.0.bias" && i.index == Some(1))
        .unwrap()
        .clone();
    let file = dir.path().join(&info.relative_path);
    let mut bytes = std::fs::read(&file).unwrap();
    // The tensor's data lies before the archive's trailing records: flip a byte of it.
    let data = r.read_block("model.net.0.bias", &[3], &[2]).unwrap();
    let needle: Vec<u8> = (3..5).flat_map(|i| (i as f64).to_le_bytes()).collect();
    let range = &bytes[info.offset as usize..(info.offset + info.length) as usize];
    let at = range
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[info.offset as usize + at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(data.size(), [2]);
    let r = DcpReader::open(dir.path()).unwrap();
    let e = r.read_all().unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Item { key, .. } if key == "model.net.0.bias"),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt"), "{e}");
    // Rows 0..3 live in the other rank's file and still read.
    let rows = r.read_block("model.net.0.bias", &[0], &[3]).unwrap();
    assert_eq!(Vec::<f64>::try_from(rows).unwrap(), [0.0, 1.0, 2.0]);

    // A metadata pickle naming anything outside DCP's classes is refused before use.
    let meta = dir.path().join(dcp::METADATA_FILE);
    std::fs::write(
        &meta,
        b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.",
    )
    .unwrap();
    let e = DcpReader::open(dir.path()).err().unwrap();
    assert!(
        matches!(&e, CheckpointError::DisallowedGlobal { global, .. } if global == "os.system"),
        "{e}"
    );
}

#[test]
fn saving_a_directory_replaces_the_old_one_whole() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("epoch=1.ckpt");
    let v = state();
    dcp::save(&dir, &v).unwrap();
    let mut v2 = v.clone();
    v2.insert("epoch", 5i64);
    dcp::save(&dir, &v2).unwrap();
    assert_eq!(DcpReader::open(&dir).unwrap().read_all().unwrap(), v2);
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["epoch=1.ckpt"],
        "no staging directory is left behind"
    );
}

/// A `meta.pt` stamped with another save's id than `.metadata`'s (a save to object storage
/// cut between its last two writes) is an error naming both; the matching id reads.
#[test]
fn a_meta_pt_of_another_save_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("last.ckpt");
    let mut model = Value::dict();
    model.insert(
        "w",
        Value::Tensor(Tensor::ones([3], (Kind::Float, Device::Cpu))),
    );
    let mut state = Value::dict();
    state.insert("model", model);
    dcp::save(&dir, &state).unwrap();
    let save_id = DcpReader::open(&dir)
        .unwrap()
        .metadata()
        .save_id
        .clone()
        .unwrap();
    let meta_at = |id: &str| {
        let mut meta = Value::dict();
        meta.insert("epoch", 3i64);
        dcp::lightning::stamp_save_id(&mut meta, id);
        lightning_core::checkpoint::save(&dir.join(dcp::lightning::META_FILE), &meta).unwrap();
    };
    meta_at(&save_id);
    let v = dcp::lightning::load(&dir).unwrap();
    assert_eq!(v.get("epoch").and_then(Value::as_i64), Some(3));
    meta_at("another-save");
    let e = dcp::lightning::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("another-save") && e.contains(&save_id) && e.contains("interrupted"),
        "{e}"
    );
}

#[test]
fn torch_dcp_reads_ours_and_we_read_torch_dcp() {
    let root = tempfile::tempdir().unwrap();
    let ours = root.path().join("ours");
    let v = state();
    save_sharded(&ours, &v, 3);
    let theirs = root.path().join("theirs");
    let script = r#"
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
ours, theirs, pt = sys.argv[1], sys.argv[2], sys.argv[3]
dcp_to_torch_save(ours, pt)
whole = torch.load(pt, weights_only=True)
# dcp.load into preallocated tensors, no process group.
target = {"model": {k: torch.empty_like(t) for k, t in whole["model"].items()}}
dcp.load(target, checkpoint_id=ours, no_dist=True)
same = all(torch.equal(target["model"][k], whole["model"][k]) for k in whole["model"])
state = {
    "model": {"a.weight": torch.arange(12, dtype=torch.float32).reshape(4, 3),
              "a.bias": torch.tensor([1.5, -2.0], dtype=torch.float64),
              "b": torch.arange(6, dtype=torch.int32).reshape(3, 2)},
    "optimizer_0": {"state": {"a.weight": {"step": torch.tensor(7.0)}},
                    "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": ["a.weight"]}]},
    "global_step": 12,
}
dcp.save(state, checkpoint_id=theirs, no_dist=True)
print(json.dumps({"whole": desc(whole), "same": same, "theirs": desc(state)}))
"#;
    let pt = root.path().join("whole.pt");
    let Some(out) = python(
        script,
        &[
            ours.to_str().unwrap(),
            theirs.to_str().unwrap(),
            pt.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_same(&describe(&v), &got["whole"]);
    assert_eq!(
        got["same"], true,
        "dcp.load into tensors gives dcp_to_torch_save's values"
    );
    let read = DcpReader::open(&theirs).unwrap().read_all().unwrap();
    assert_same(&describe(&read), &got["theirs"]);
}

#[test]
fn a_sharded_directory_on_object_storage_reads_like_a_local_one() {
    use lightning_core::storage::{CheckpointIO, DefaultCheckpointIO};
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("last.ckpt");
    let v = state();
    save_sharded(&local, &v, 2);
    let mut meta = Value::dict();
    meta.insert("epoch", 4i64);
    meta.insert("global_step", 40i64);
    lightning_core::checkpoint::save(&local.join(dcp::lightning::META_FILE), &meta).unwrap();
    let url =
        std::path::PathBuf::from(format!("memory://dcp-{}/run/last.ckpt", std::process::id()));
    for e in std::fs::read_dir(&local).unwrap() {
        let e = e.unwrap();
        lightning_core::storage::copy(&e.path(), &url.join(e.file_name())).unwrap();
    }
    assert!(dcp::lightning::is_sharded_checkpoint(&url));
    let io = DefaultCheckpointIO;
    assert!(io.exists(&url).unwrap());
    io.verify(&url).unwrap();
    assert_eq!(
        io.load_checkpoint(&url).unwrap(),
        io.load_checkpoint(&local).unwrap()
    );
    let got = io.load_checkpoint(&url).unwrap();
    assert_eq!(got.get("global_step").and_then(Value::as_i64), Some(40));
    let missing = url.with_file_name("nothing.ckpt");
    assert!(!dcp::lightning::is_sharded_checkpoint(&missing));
    assert!(!io.exists(&missing).unwrap());
}
