use super::*;
use crate::value::{Dict, Key};
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// A tree exercising every dtype, view kind and container.
pub(crate) fn sample_tree() -> Value {
    let base = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([4, 6]);
    let mut sd = Dict::new();
    sd.insert("base".into(), base.shallow_clone().into());
    sd.insert("col".into(), base.select(1, 2).into()); // strided view, same storage
    sd.insert("t".into(), base.tr().into()); // transposed view
    sd.insert("scalar".into(), Tensor::from(3.5f64).into()); // 0-dim
    sd.insert(
        "empty".into(),
        Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)).into(),
    );
    for kind in [
        Kind::Double,
        Kind::Half,
        Kind::BFloat16,
        Kind::Int64,
        Kind::Int,
        Kind::Int16,
        Kind::Int8,
        Kind::Uint8,
        Kind::Bool,
    ] {
        let t = Tensor::arange(6, (Kind::Int64, Device::Cpu)).to_kind(kind);
        sd.insert(Key::Str(format!("{kind:?}")), t.into());
    }
    let mut state = Dict::new();
    let mut s0 = Dict::new();
    s0.insert("step".into(), Tensor::from(5.0f32).into());
    s0.insert(
        "exp_avg".into(),
        Tensor::ones([3], (Kind::Float, Device::Cpu)).into(),
    );
    state.insert(Key::Int(0), Value::Dict(s0));
    let mut opt = Value::dict();
    opt.insert("state", Value::Dict(state));
    opt.insert(
        "param_groups",
        Value::List(vec![{
            let mut g = Value::dict();
            g.insert("lr", 1e-3);
            g.insert("betas", Value::Tuple(vec![0.9.into(), 0.999.into()]));
            g.insert("params", vec![0i64, 1]);
            g
        }]),
    );
    let mut top = Value::dict();
    top.insert("epoch", 2i64);
    top.insert("global_step", 1i64 << 40);
    top.insert("neg", -70000i64);
    top.insert("min", i64::MIN);
    top.insert("pytorch-lightning_version", "2.6.6");
    top.insert("state_dict", Value::OrderedDict(sd));
    top.insert("optimizer_states", Value::List(vec![opt]));
    top.insert("none", Value::None);
    top.insert("flag", false);
    top.insert("unicode", "héllo ✓");
    top.insert("nan", f64::NAN);
    top.insert(
        "big_tuple",
        Value::Tuple((0..5i64).map(Value::from).collect()),
    );
    top.insert(
        "long_list",
        Value::List((0..2500i64).map(Value::from).collect()),
    );
    top
}

#[test]
fn round_trip_keeps_values_dtypes_and_views() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.ckpt");
    let v = sample_tree();
    save(&p, &v).unwrap();
    for opts in [
        LoadOptions::default(),
        LoadOptions {
            mmap: true,
            ..LoadOptions::default()
        },
    ] {
        let back = load_with(&p, &opts).unwrap();
        assert_eq!(back, v);
        // Views of one storage come back sharing it: writing through one shows in the other.
        let sd = back.get("state_dict").unwrap();
        let base = sd.get("base").unwrap().as_tensor().unwrap();
        let col = sd.get("col").unwrap().as_tensor().unwrap();
        let _ = base.get(0).get(2).fill_(-1.0);
        assert_eq!(col.double_value(&[0]), -1.0);
    }
    // Writes through mmap-loaded tensors stay private: the file still holds the original.
    assert_eq!(load(&p).unwrap(), v);
    let report = verify(&p).unwrap();
    assert_eq!(report.tensors, 16);
    // No temp files left, and the base storage was written once (24 floats, not 24+4+24).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let zip = ZipReader::open(&p).unwrap();
    assert_eq!(zip.entry("data/0").unwrap().size, 24 * 4);
}

#[test]
fn slice_of_a_large_tensor_saves_only_its_extent() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.ckpt");
    let big = Tensor::arange(1000, (Kind::Int64, Device::Cpu));
    let mut v = Value::dict();
    v.insert("x", big.narrow(0, 500, 10));
    save(&p, &v).unwrap();
    assert_eq!(
        ZipReader::open(&p).unwrap().entry("data/0").unwrap().size,
        80
    );
    assert_eq!(load(&p).unwrap(), v);
}

fn corrupt(p: &Path, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(p).unwrap();
    f(&mut b);
    let q = p.with_extension("bad");
    std::fs::write(&q, b).unwrap();
    q
}

#[test]
fn damaged_files_give_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.ckpt");
    save(&p, &sample_tree()).unwrap();
    let len = std::fs::metadata(&p).unwrap().len() as usize;

    let q = corrupt(&p, |b| b.truncate(len / 2));
    let e = load(&q).unwrap_err();
    assert!(matches!(e, CheckpointError::Truncated { .. }), "{e}");
    assert!(verify(&q).is_err());

    // Flip a byte inside the data of record data/0.
    let off = ZipReader::open(&p)
        .unwrap()
        .entry("data/0")
        .unwrap()
        .data_offset as usize;
    let q = corrupt(&p, |b| b[off + 5] ^= 0x40);
    let e = load(&q).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Crc { record, .. } if record == "archive/data/0"),
        "{e}"
    );
    assert!(matches!(verify(&q), Err(CheckpointError::Crc { .. })));

    std::fs::write(&q, b"definitely not a zip file, just some random bytes").unwrap();
    let e = load(&q).unwrap_err();
    assert!(e.to_string().contains("not a zip archive"), "{e}");
}

/// Builds a torch-style archive around a hand-written pickle.
pub(crate) fn archive_with_pickle(p: &Path, pickle: &[u8]) {
    let mut z = ZipWriter::new(File::create(p).unwrap());
    z.add("archive/data.pkl", &[pickle]).unwrap();
    z.add("archive/version", &[b"3\n"]).unwrap();
    z.finish().unwrap();
}

#[test]
fn disallowed_globals_are_named_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("evil.ckpt");
    // os.system('echo pwned') as a pickle.
    archive_with_pickle(
        &p,
        b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00echo pwned\x85R.",
    );
    let e = load(&p).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::DisallowedGlobal { global, .. } if global == "os.system"),
        "{e}"
    );
    assert!(e.to_string().contains("`os.system`"));
}

#[test]
fn protocol_4_opcodes_and_deep_nesting() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p4.ckpt");
    // {'a': [1, 2], 's': {3}} with FRAME, SHORT_BINUNICODE, MEMOIZE, EMPTY_SET, ADDITEMS.
    let pk = b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01K\x02e\x8c\x01s\x8f\x94(K\x03\x90u.";
    archive_with_pickle(&p, pk);
    let v = load(&p).unwrap();
    assert_eq!(v.get("a"), Some(&Value::from(vec![1i64, 2])));
    assert_eq!(v.get("s"), Some(&Value::Set(vec![Value::Int(3)])));

    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend(std::iter::repeat_n(b'a', 99_999));
    deep.push(b'.');
    archive_with_pickle(&p, &deep);
    assert!(matches!(load(&p), Err(CheckpointError::Limit { .. })));
}

#[test]
fn failed_save_leaves_old_file_and_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.ckpt");
    save(&p, &sample_tree()).unwrap();
    let before = std::fs::read(&p).unwrap();
    let mut bad = Value::dict();
    // An int of 300 bytes: pickle's LONG1 (all torch reads) holds at most 255.
    let huge = crate::value::BigInt::from_le_bytes(&[1u8; 300]);
    bad.insert("c", Value::BigInt(huge));
    let e = save(&p, &bad).unwrap_err();
    assert!(e.to_string().contains("c: an int of 300 bytes"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn memoized_containers_cannot_be_copied_into_a_memory_bomb() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.ckpt");
    // A 10k-item list memoized once, then passed to set() 100k times: 1e9 copies unchecked.
    let mut pk = b"\x80\x02]q\x00(".to_vec();
    pk.extend(std::iter::repeat_n(*b"K\x01", 10_000).flatten());
    pk.extend_from_slice(b"e0cbuiltins\nset\nq\x010");
    pk.extend(std::iter::repeat_n(*b"h\x01h\x00\x85R0", 100_000).flatten());
    pk.extend_from_slice(b"N.");
    archive_with_pickle(&p, &pk);
    let e = load(&p).unwrap_err();
    assert!(matches!(e, CheckpointError::Limit { .. }), "{e}");
}

/// The parallel copy-load splits records into 8 MiB chunks: a record of several chunks (and
/// an odd tail) reads back equal, and a flipped byte in any chunk is that record's CRC error.
#[test]
fn multi_chunk_records_load_in_parallel_and_keep_their_crc() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.ckpt");
    let n = (2 * (8 << 20) + 12_345) / 4; // two full chunks and a tail, in f32
    let big = Tensor::arange(n, (Kind::Float, Device::Cpu));
    let mut tree = Value::dict();
    tree.insert("small", Tensor::from_slice(&[1.0f32, 2.0]));
    tree.insert("big", big.shallow_clone());
    tree.insert("view", big.narrow(0, 7, 100));
    save(&p, &tree).unwrap();
    let back = load(&p).unwrap();
    let got = back.get("big").and_then(Value::as_tensor).unwrap();
    assert!(got.equal(&big));
    let view = back.get("view").and_then(Value::as_tensor).unwrap();
    assert!(view.equal(&big.narrow(0, 7, 100)));
    let entry = |name: &str| ZipReader::open(&p).unwrap().entry(name).unwrap().clone();
    let big_record = ["data/0", "data/1"]
        .into_iter()
        .map(entry)
        .max_by_key(|e| e.size)
        .unwrap();
    for at in [3u64, (8 << 20) + 11, big_record.size - 2] {
        let off = (big_record.data_offset + at) as usize;
        let q = corrupt(&p, |b| b[off] ^= 0x01);
        let e = load(&q).unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Crc { record, .. } if *record == big_record.name),
            "byte {at}: {e}"
        );
    }
}

/// Loads to another device read through host staging in batches (`STAGE_BYTES` each), then
/// copy each batch to the device. Forced on the CPU here, with batch sizes that give each
/// large chunk its own batch, split a record across batches, and hold everything in one:
/// the tensors (several dtypes, views, an empty one) come back equal, and a flipped byte is
/// still its record's CRC error.
#[test]
fn staged_loads_copy_every_batch_and_keep_their_crc() {
    use super::tensor_io::{FORCE_STAGING, STAGED_BATCHES};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("staged.ckpt");
    let n = (2 * (8 << 20) + 12_344) / 4; // two full 8 MiB chunks and a tail, in f32
    let big = Tensor::arange(n, (Kind::Float, Device::Cpu));
    let mut tree = Value::dict();
    tree.insert("big", big.shallow_clone());
    tree.insert("view", big.narrow(0, 7, 100));
    tree.insert("f64", Tensor::from_slice(&[1.5f64, -2.25, 3.0]));
    tree.insert("i64", Tensor::arange(1000, (Kind::Int64, Device::Cpu)));
    tree.insert("bool", Tensor::from_slice(&[true, false, true]));
    tree.insert(
        "bf16",
        Tensor::from_slice(&[0.5f32, 8.0]).to_kind(Kind::BFloat16),
    );
    tree.insert("empty", Tensor::zeros([0], (Kind::Float, Device::Cpu)));
    save(&p, &tree).unwrap();
    let big_record = {
        let z = ZipReader::open(&p).unwrap();
        z.entries().iter().max_by_key(|e| e.size).unwrap().clone()
    };
    // (stage, batches). The buffer holds at least the largest chunk (8 MiB): the two full
    // chunks alone, then the tail with every small record. Two full chunks together, then
    // the tail and the rest. Everything in one.
    for (stage, batches) in [(1u64, 3), ((16 << 20) + 100, 2), (64 << 20, 1)] {
        FORCE_STAGING.with(|f| f.set(Some(stage)));
        STAGED_BATCHES.with(|b| b.set(0));
        let back = load(&p);
        assert_eq!(STAGED_BATCHES.with(|b| b.get()), batches, "stage {stage}");
        let corrupted = load(&corrupt(&p, |b| {
            b[(big_record.data_offset + (8 << 20) + 11) as usize] ^= 0x01
        }));
        FORCE_STAGING.with(|f| f.set(None));
        let back = back.unwrap_or_else(|e| panic!("stage {stage}: {e}"));
        for (k, v) in tree.as_dict().unwrap() {
            let (want, got) = (
                v.as_tensor().unwrap(),
                back.get(&k.to_string()).and_then(Value::as_tensor).unwrap(),
            );
            assert_eq!(got.kind(), want.kind(), "stage {stage}: {k}");
            assert!(got.equal(want), "stage {stage}: {k}");
        }
        let e = corrupted.unwrap_err();
        assert!(
            matches!(&e, CheckpointError::Crc { record, .. } if *record == big_record.name),
            "stage {stage}: {e}"
        );
    }
}
