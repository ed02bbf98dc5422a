//! Save and load of a 1 GiB checkpoint on a local S3 API server (`moto_server`): ours
//! (`checkpoint::save`/`load` on an `s3://` URL: a streamed multipart upload, parallel ranged
//! downloads) against Python `torch.save`/`torch.load(weights_only=True)` through
//! `fsspec`/`s3fs` to the same server, in the same run. Each side also reads the other's file.
//!
//! `cargo bench --bench object_store -- --bench` (`OBJ_BENCH_MIB` sets the size, default
//! 1024). Under `cargo test --all-targets` it exits at once.

use clap::Parser;
use lightning_core::checkpoint;
use lightning_core::{Dict, Value};
use lightning_testkit::bench::CargoArgs;
use lightning_testkit::moto::Moto;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const REPS: usize = 2;
const TENSOR_MIB: i64 = 16;

const PY: &str = include_str!("object_store_anchor.py");

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// The command line: cargo's arguments only (`--bench` measures; without it, see above).
#[derive(Parser, Debug)]
#[command(
    about = "Save/load of 1 GiB on a local S3 API server: ours vs torch.save/torch.load through s3fs"
)]
struct Cli {
    #[command(flatten)]
    cargo: CargoArgs,
}

fn main() {
    if !Cli::parse().cargo.bench {
        println!("object_store bench: skipped (run `cargo bench --bench object_store -- --bench`)");
        return;
    }
    let mib: i64 = std::env::var("OBJ_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let Some(moto) = Moto::start(false) else {
        println!("object_store bench: no moto_server (run scripts/setup.sh)");
        return;
    };
    for (k, v) in moto.env() {
        // SAFETY: the bench's main thread, before it starts any client or other thread.
        unsafe { std::env::set_var(k, v) };
    }
    moto.create_bucket("bench");
    let mut sd = Dict::new();
    for i in 0..mib / TENSOR_MIB {
        let t = Tensor::full([TENSOR_MIB << 18], i as f64, (Kind::Float, Device::Cpu));
        sd.insert(format!("layer{i}.weight").into(), t.into());
    }
    let mut ckpt = Value::dict();
    ckpt.insert("state_dict", Value::OrderedDict(sd));
    let url = Path::new("s3://bench/ours.ckpt");
    println!(
        "object_store bench: {mib} MiB to {} (moto_server), best of {REPS}",
        moto.endpoint()
    );
    let mut save = f64::INFINITY;
    let mut load = f64::INFINITY;
    for _ in 0..REPS {
        save = save.min(time(|| checkpoint::save(url, &ckpt).expect("save")));
        let mut back = None;
        load = load.min(time(|| back = Some(checkpoint::load(url).expect("load"))));
        assert_eq!(back.as_ref(), Some(&ckpt), "the file reads back equal");
    }
    let gbs = |s: f64| mib as f64 / 1024.0 * 1.073_741_824 / s;
    println!(
        "  ours  save {save:7.3} s ({:5.2} GB/s)  load {load:7.3} s ({:5.2} GB/s)",
        gbs(save),
        gbs(load)
    );
    let Some(py) =
        lightning_testkit::run_python(PY, &[&moto.endpoint(), &mib.to_string(), "bench/ours.ckpt"])
    else {
        return;
    };
    let out = py.expect("the Python side runs");
    let line = out.lines().last().unwrap_or_default();
    let field = |k: &str| -> f64 {
        line.split(&format!("\"{k}\": "))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    let (py_save, py_load) = (field("save"), field("load"));
    println!(
        "  s3fs  save {py_save:7.3} s ({:5.2} GB/s)  load {py_load:7.3} s ({:5.2} GB/s)",
        gbs(py_save),
        gbs(py_load)
    );
    assert!(
        line.contains("\"reads_ours\": true"),
        "Python reads our file: {line}"
    );
    // and we read Python's (a plain dict there, an OrderedDict here: compare the entries)
    let theirs = checkpoint::load(Path::new("s3://bench/py.ckpt")).expect("Python's file loads");
    let entries = |v: &Value| -> Vec<(String, Value)> {
        let sd = v.get("state_dict").expect("a state_dict");
        let d = sd.as_dict().expect("a dict");
        d.iter().map(|(k, x)| (k.to_string(), x.clone())).collect()
    };
    assert_eq!(
        entries(&theirs),
        entries(&ckpt),
        "Python's file reads back equal"
    );
    println!("  each side reads the other's file: yes");
    println!(
        "object_store bench: {mib} MiB: ours save = {:.2}x s3fs torch.save, ours load = {:.2}x s3fs torch.load(weights_only=True)",
        py_save / save,
        py_load / load
    );
}
