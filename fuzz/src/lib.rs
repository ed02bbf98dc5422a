//! The property both fuzzers check: reading arbitrary bytes as a checkpoint never panics, and
//! whatever loads can be saved and loads back equal (and passes `verify`).

use lightning_core::checkpoint;
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
    sd.insert("h".into(), Tensor::from_slice(&[1.0f32]).to_kind(Kind::Half).into());
    let mut st = Dict::new();
    st.insert(Key::Int(0), Value::from(vec![1.0f64]));
    let mut v = Value::dict();
    v.insert("epoch", 1i64);
    v.insert("state_dict", Value::OrderedDict(sd));
    v.insert("state", Value::Dict(st));
    v.insert("t", Value::Tuple(vec![Value::None, true.into(), "x".into()]));
    let p = scratch("seed.ckpt");
    checkpoint::save(&p, &v).expect("seed");
    vec![std::fs::read(&p).expect("seed")]
}
