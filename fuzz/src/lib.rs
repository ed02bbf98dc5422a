//! The property both fuzzers check: reading arbitrary bytes as a checkpoint never panics, and
//! whatever loads can be saved and loads back equal (and passes `verify`).

use lightning_core::checkpoint;
use lightning_core::value::TorchObject;
use lightning_core::{Dict, Key, Value};
use std::cell::RefCell;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

thread_local! {
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fn scratch(name: &str) -> PathBuf {
    DIR.with(|d| {
        let mut d = d.borrow_mut();
        let dir = d.get_or_insert_with(|| tempfile::tempdir().expect("temp dir"));
        dir.path().join(name)
    })
}

/// Loads `data` as a checkpoint; panics only on a real bug (a panic inside the reader, or a
/// loaded tree that does not survive a save/load round trip).
pub fn check(data: &[u8]) {
    let p = scratch("in.ckpt");
    std::fs::write(&p, data).expect("write input");
    let Ok(v) = checkpoint::load(&p) else {
        return;
    };
    checkpoint::verify(&p).expect("a file that loads must verify");
    let q = scratch("out.ckpt");
    checkpoint::save(&q, &v).expect("a loaded tree must save");
    let back = checkpoint::load(&q).expect("our own file must load");
    assert!(back == v, "round trip changed the tree");
}

/// Valid seed files: a small Lightning-like checkpoint with views, dtypes and int keys.
pub fn seeds() -> Vec<Vec<u8>> {
    let base = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
    let mut sd = Dict::new();
    sd.insert("w".into(), base.shallow_clone().into());
    sd.insert("col".into(), base.select(1, 1).into());
    sd.insert("b".into(), Tensor::from_slice(&[1i64, 2]).into());
    sd.insert(
        "h".into(),
        Tensor::from_slice(&[1.0f32]).to_kind(Kind::Half).into(),
    );
    let mut st = Dict::new();
    st.insert(Key::Int(0), Value::from(vec![1.0f64]));
    let mut v = Value::dict();
    v.insert("epoch", 1i64);
    v.insert("state_dict", Value::OrderedDict(sd));
    v.insert("state", Value::Dict(st));
    v.insert(
        "t",
        Value::Tuple(vec![Value::None, true.into(), "x".into()]),
    );
    let p = scratch("seed.ckpt");
    checkpoint::save(&p, &v).expect("seed");
    let mut seeds = vec![std::fs::read(&p).expect("seed")];
    // The values beyond plain tensors and containers (torch's whole allowlist): their opcodes
    // and rebuild functions get mutated too.
    let mut hp = Value::dict();
    hp.insert("tags", Value::Set(vec![Value::from("a"), Value::Int(1)]));
    hp.insert("z", Value::Complex(1.5, -2.0));
    hp.insert("blob", Value::Bytes(vec![0, 255, 7]));
    hp.insert("buf", Value::ByteArray(vec![1]));
    hp.insert("shape", Value::Size(vec![1, 28, 28]));
    hp.insert(
        "dtype",
        Value::Torch(Box::new(TorchObject::Global("torch.bfloat16".into()))),
    );
    hp.insert(
        "device",
        Value::Torch(Box::new(TorchObject::Device("cuda:1".into()))),
    );
    let mut w = Value::dict();
    w.insert("hyper_parameters", hp);
    w.insert(
        "fp8",
        Tensor::from_slice(&[0.5f32, -2.0]).to_kind(Kind::Float8e4m3fn),
    );
    w.insert(
        "complex",
        Tensor::from_slice(&[1.0f32, 2.0]).to_kind(Kind::ComplexFloat),
    );
    w.insert(
        "meta",
        Value::Torch(Box::new(TorchObject::Meta {
            dtype: "float32".into(),
            size: vec![2, 3],
            stride: vec![3, 1],
            requires_grad: false,
        })),
    );
    let q = scratch("seed2.ckpt");
    checkpoint::save(&q, &w).expect("seed 2");
    seeds.push(std::fs::read(&q).expect("seed 2"));
    seeds
}
