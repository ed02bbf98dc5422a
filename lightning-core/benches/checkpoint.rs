//! Save/load of a 1 GiB (and optionally 3 GiB) f32 state: ours (durable) against raw writes of
//! the same bytes, tch's `save_multi` (what `VarStore::save` calls), safetensors, and Python
//! `torch.save`/`torch.load` when the venv exists. Prints times, GB/s and ratios to the
//! anchors measured in the same run.
//!
//! `cargo bench --bench checkpoint` (1 GiB), `CKPT_BENCH_GIB=1,3 cargo bench --bench
//! checkpoint`; files go to `CKPT_BENCH_DIR` (default `bench-out/`). `cargo test
//! --all-targets` runs this binary without `--bench`: it then exits at once.

use clap::Parser;
use lightning_core::checkpoint::{self, LoadOptions, SaveOptions};
use lightning_core::{Dict, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const TENSOR_BYTES: i64 = 16 << 20;
const REPS: usize = 3;

fn best(mut f: impl FnMut() -> f64) -> f64 {
    (0..REPS).map(|_| f()).fold(f64::INFINITY, f64::min)
}

/// Times `f` after removing `fresh` (untimed), so every writer creates a new file.
fn time_fresh(fresh: &Path, f: impl FnOnce()) -> f64 {
    let _ = std::fs::remove_file(fresh);
    time(f)
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn bytes_of(t: &Tensor) -> &[u8] {
    // SAFETY: contiguous CPU f32 tensors, alive while borrowed.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, t.numel() * 4) }
}

fn raw_write(path: &Path, tensors: &[Tensor], fsync: bool) {
    let mut f = File::create(path).unwrap();
    for t in tensors {
        f.write_all(bytes_of(t)).unwrap();
    }
    if fsync {
        f.sync_all().unwrap();
    }
}

/// Sums every tensor in its own dtype (as Python's `x.sum()`), touching every page.
fn touch_all(v: &Value) -> f64 {
    let mut s = 0.0;
    v.visit_tensors("", &mut |_, t| s += t.sum(t.kind()).double_value(&[]));
    s
}

struct Row {
    name: String,
    secs: f64,
    anchor: Option<(&'static str, f64)>,
}

fn print_table(title: &str, bytes: f64, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("| what | s | GB/s | ratio (anchor / ours time) |");
    println!("|---|---|---|---|");
    for r in rows {
        let ratio = r
            .anchor
            .map(|(n, a)| format!("{:.2} vs {n}", a / r.secs))
            .unwrap_or_default();
        println!(
            "| {} | {:.3} | {:.2} | {} |",
            r.name,
            r.secs,
            bytes / r.secs / 1e9,
            ratio
        );
    }
}

fn python_times(dir: &Path, gib: i64) -> Option<PyTimes> {
    let script = r#"
import sys, time, os, torch, json
gib, path = int(sys.argv[1]), sys.argv[2]
n = 16 << 20
state = {f"t{i}": torch.randn(n // 4) for i in range(gib * 64)}
def best(f):
    return min(f() for _ in range(3))
def fresh():
    if os.path.exists(path): os.remove(path)
def save():
    fresh(); t = time.perf_counter(); torch.save(state, path); return time.perf_counter() - t
def save_sync():
    fresh(); t = time.perf_counter(); torch.save(state, path)
    fd = os.open(path, os.O_RDONLY); os.fsync(fd); os.close(fd)
    return time.perf_counter() - t
def load():
    t = time.perf_counter(); s = torch.load(path, weights_only=True); return time.perf_counter() - t
def load_mmap():
    t = time.perf_counter(); s = torch.load(path, weights_only=True, mmap=True)
    sum(float(x.sum()) for x in s.values()); return time.perf_counter() - t
def load_cuda():
    torch.cuda.synchronize(); t = time.perf_counter()
    s = torch.load(path, weights_only=True, map_location="cuda")
    torch.cuda.synchronize(); return time.perf_counter() - t
cuda = best(load_cuda) if torch.cuda.is_available() else -1.0
print(json.dumps([best(save), best(save_sync), best(load), best(load_mmap), cuda]))
"#;
    let py = std::env::var_os("LIGHTNING_RS_PYTHON")?;
    let path = dir.join("python.pt");
    let out = std::process::Command::new(py)
        .args(["-c", script, &gib.to_string(), path.to_str()?])
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&path);
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    (v.len() == 5).then(|| PyTimes {
        save: v[0],
        save_sync: v[1],
        load: v[2],
        load_mmap: v[3],
        load_cuda: (v[4] >= 0.0).then_some(v[4]),
    })
}

/// Python's times (seconds): `torch.save`, `torch.save` + fsync, `torch.load`, `torch.load`
/// with mmap + a sum of every tensor, and `torch.load(map_location="cuda")` when a GPU is there.
struct PyTimes {
    save: f64,
    save_sync: f64,
    load: f64,
    load_mmap: f64,
    load_cuda: Option<f64>,
}

fn load_py_ratio(py: Option<&PyTimes>, ours: f64) -> String {
    py.map(|t| {
        format!(
            "; ours load = {:.2}x torch.load(weights_only=True)",
            t.load / ours
        )
    })
    .unwrap_or_default()
}

fn run(dir: &Path, gib: i64) {
    let n = gib * (1 << 30) / TENSOR_BYTES;
    tch::manual_seed(0);
    let tensors: Vec<Tensor> = (0..n)
        .map(|_| Tensor::randn([TENSOR_BYTES / 4], (Kind::Float, Device::Cpu)))
        .collect();
    let mut sd = Dict::new();
    for (i, t) in tensors.iter().enumerate() {
        sd.insert(format!("layer.{i}.weight").into(), t.shallow_clone().into());
    }
    let mut state = Value::dict();
    state.insert("epoch", 1i64);
    state.insert("state_dict", Value::OrderedDict(sd));
    let bytes = (n * TENSOR_BYTES) as f64;
    let p = |name: &str| -> PathBuf { dir.join(name) };

    let raw_nosync =
        best(|| time_fresh(&p("raw.bin"), || raw_write(&p("raw.bin"), &tensors, false)));
    let raw_sync = best(|| time_fresh(&p("raw.bin"), || raw_write(&p("raw.bin"), &tensors, true)));
    let ours = best(|| {
        time_fresh(&p("ours.ckpt"), || {
            checkpoint::save(&p("ours.ckpt"), &state).unwrap()
        })
    });
    let ours_nosync = best(|| {
        time_fresh(&p("ours.ckpt"), || {
            checkpoint::save_with(&p("ours.ckpt"), &state, &SaveOptions { durable: false }).unwrap()
        })
    });
    let named: Vec<(String, Tensor)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("layer.{i}.weight"), t.shallow_clone()))
        .collect();
    let tch_save = best(|| {
        time_fresh(&p("tch.ot"), || {
            Tensor::save_multi(&named, p("tch.ot")).unwrap()
        })
    });
    let st_export = best(|| {
        time_fresh(&p("ours.safetensors"), || {
            checkpoint::safetensors::export(&p("ours.safetensors"), &state).unwrap()
        })
    });
    let py = python_times(dir, gib);

    let mut rows = vec![
        Row {
            name: "raw write, no fsync".into(),
            secs: raw_nosync,
            anchor: None,
        },
        Row {
            name: "raw write + fsync".into(),
            secs: raw_sync,
            anchor: None,
        },
        Row {
            name: "**ours save (durable: fsync file + dir, atomic rename)**".into(),
            secs: ours,
            anchor: Some(("raw write + fsync", raw_sync)),
        },
        Row {
            name: "ours save, durable=false".into(),
            secs: ours_nosync,
            anchor: Some(("raw write, no fsync", raw_nosync)),
        },
        Row {
            name: "tch Tensor::save_multi (VarStore::save), no fsync".into(),
            secs: tch_save,
            anchor: Some(("ours durable", ours)),
        },
        Row {
            name: "ours safetensors export (durable)".into(),
            secs: st_export,
            anchor: Some(("ours .ckpt durable", ours)),
        },
    ];
    if let Some(t) = &py {
        rows.push(Row {
            name: "python torch.save, no fsync".into(),
            secs: t.save,
            anchor: Some(("ours durable", ours)),
        });
        rows.push(Row {
            name: "python torch.save + fsync".into(),
            secs: t.save_sync,
            anchor: Some(("ours durable", ours)),
        });
    }
    print_table(
        &format!("save, {gib} GiB ({n} f32 tensors of 16 MiB)"),
        bytes,
        &rows,
    );

    let ckpt = p("ours.ckpt");
    let raw_read = best(|| time(|| drop(std::fs::read(&ckpt).unwrap())));
    // Timed up to the loaded value, not its drop (as Python's `load()` above).
    let load = best(|| timed_load(&ckpt, &LoadOptions::default()));
    let nocrc = LoadOptions {
        verify_crc: false,
        ..LoadOptions::default()
    };
    let load_nocrc = best(|| timed_load(&ckpt, &nocrc));
    let mmap = LoadOptions {
        mmap: true,
        verify_crc: false,
        ..LoadOptions::default()
    };
    let load_mmap = best(|| timed_load(&ckpt, &mmap));
    let (fresh_ours, fresh_py) = fresh_process_loads(&ckpt);
    let load_mmap_touch = best(|| {
        time(|| {
            let v = checkpoint::load_with(&ckpt, &mmap).unwrap();
            touch_all(&v);
        })
    });
    let tch_load = best(|| time(|| drop(Tensor::load_multi(p("tch.ot")).unwrap())));
    let st_load =
        best(|| time(|| drop(checkpoint::safetensors::import(&p("ours.safetensors")).unwrap())));
    let mut rows = vec![
        Row {
            name: "raw read of the file (std::fs::read)".into(),
            secs: raw_read,
            anchor: None,
        },
        Row {
            name: "**ours load (copy, CRC-checked)**".into(),
            secs: load,
            anchor: Some(("raw read", raw_read)),
        },
        Row {
            name: "ours load (copy, no CRC)".into(),
            secs: load_nocrc,
            anchor: Some(("raw read", raw_read)),
        },
        Row {
            name: "ours load mmap zero-copy (lazy)".into(),
            secs: load_mmap,
            anchor: Some(("raw read", raw_read)),
        },
        Row {
            name: "ours load mmap + sum every tensor".into(),
            secs: load_mmap_touch,
            anchor: Some(("raw read", raw_read)),
        },
        Row {
            name: "tch Tensor::load_multi".into(),
            secs: tch_load,
            anchor: Some(("ours load", load)),
        },
        Row {
            name: "ours safetensors import (copy)".into(),
            secs: st_load,
            anchor: Some(("ours load", load)),
        },
    ];
    rows.push(Row {
        name: "**ours load in a fresh process (a resume's first load)**".into(),
        secs: fresh_ours,
        anchor: Some(("raw read", raw_read)),
    });
    if let Some(l) = fresh_py {
        rows.push(Row {
            name: "python torch.load(weights_only=True) of ours.ckpt in a fresh process".into(),
            secs: l,
            anchor: Some(("ours fresh-process load", fresh_ours)),
        });
    }
    if let Some(t) = &py {
        rows.push(Row {
            name: "python torch.load(weights_only=True)".into(),
            secs: t.load,
            anchor: Some(("ours load", load)),
        });
        rows.push(Row {
            name: "python torch.load(mmap=True) + sum".into(),
            secs: t.load_mmap,
            anchor: Some(("ours mmap + sum", load_mmap_touch)),
        });
    }
    // To the GPU: ours places each storage on the device as it is read; torch.load with
    // map_location="cuda". Both end synchronized.
    if tch::Cuda::is_available() {
        let cuda = LoadOptions {
            device: Device::Cuda(0),
            ..LoadOptions::default()
        };
        let load_cuda = best(|| {
            time(|| {
                drop(checkpoint::load_with(&ckpt, &cuda).unwrap());
                tch::Cuda::synchronize(0);
            })
        });
        rows.push(Row {
            name: "**ours load to cuda:0 (CRC-checked)**".into(),
            secs: load_cuda,
            anchor: Some(("ours load", load)),
        });
        let py_cuda = py.as_ref().and_then(|t| t.load_cuda);
        if py_cuda.is_none() && lightning_core::cuda::gpu_expected() {
            eprintln!("checkpoint bench: a GPU is expected but torch.load(map_location=\"cuda\") was not measured");
            std::process::exit(1);
        }
        if let Some(l) = py_cuda {
            rows.push(Row {
                name: "python torch.load(map_location=\"cuda\")".into(),
                secs: l,
                anchor: Some(("ours load to cuda", load_cuda)),
            });
            println!(
                "ours load to cuda = {:.2}x torch.load(map_location=\"cuda\")",
                l / load_cuda
            );
        }
    } else if let Some(missing) = lightning_core::cuda::expected_gpu_missing() {
        eprintln!("checkpoint bench: {missing}");
        std::process::exit(1);
    } else {
        println!("(no CUDA GPU: the load-to-GPU rows are not measured)");
    }
    print_table(&format!("load, {gib} GiB (warm page cache)"), bytes, &rows);
    let (w, r) = (raw_sync / ours, load_py_ratio(py.as_ref(), load));
    let fresh = fresh_py
        .map(|l| format!("; in fresh processes = {:.2}x", l / fresh_ours))
        .unwrap_or_default();
    println!(
        "\nours durable save = {w:.2}x the throughput of raw write+fsync of the same bytes{r}{fresh}"
    );
    for f in ["raw.bin", "ours.ckpt", "tch.ot", "ours.safetensors"] {
        let _ = std::fs::remove_file(p(f));
    }
}

/// Seconds one load took, up to the loaded value (its drop is not timed).
fn timed_load(path: &Path, opts: &LoadOptions) -> f64 {
    let t = Instant::now();
    let v = checkpoint::load_with(path, opts).unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(v);
    secs
}

/// The first load of `ckpt` in a fresh process, which is what a resume does: every storage
/// lands in memory the process has never touched (page faults and zeroing included), where
/// a best-of-3 in one process lets the allocator hand back the previous round's pages. Ours is
/// this binary re-run with `--load-once`, Python's a fresh interpreter loading the same file
/// (import time excluded on both sides). Best of 3, alternating.
fn fresh_process_loads(ckpt: &Path) -> (f64, Option<f64>) {
    let secs = |out: std::io::Result<std::process::Output>| -> Option<f64> {
        let out = out.ok().filter(|o| o.status.success())?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let exe = std::env::current_exe().unwrap();
    let py = std::env::var_os("LIGHTNING_RS_PYTHON");
    let script = include_str!("checkpoint_anchor.py");
    let (mut ours, mut theirs) = (f64::INFINITY, None::<f64>);
    for _ in 0..REPS {
        let o = std::process::Command::new(&exe)
            .arg("--load-once")
            .arg(ckpt)
            .output();
        ours = ours.min(secs(o).expect("the --load-once child failed"));
        if let Some(py) = &py {
            let o = std::process::Command::new(py)
                .args(["-c", script])
                .arg(ckpt)
                .output();
            if let Some(s) = secs(o) {
                theirs = Some(theirs.map_or(s, |t| t.min(s)));
            }
        }
    }
    (ours, theirs)
}

/// The command line: cargo's `--bench` (without it, as under `cargo test`, the bench exits at
/// once), and `--load-once PATH`, the fresh process whose load the bench times.
#[derive(Parser, Debug)]
#[command(about = "Checkpoint save/load throughput against torch.save/torch.load")]
struct Cli {
    /// Run the measurement (`cargo bench` passes it).
    /// (Given twice by `cargo bench -- --bench`: accepted.)
    #[arg(long, overrides_with = "bench")]
    bench: bool,
    /// Load PATH once and print the seconds it took (the bench runs itself with it).
    #[arg(long, value_name = "PATH")]
    load_once: Option<PathBuf>,
    /// Accepted for cargo and libtest compatibility; ignored.
    #[arg(long, hide = true)]
    nocapture: bool,
    /// Accepted for cargo and libtest compatibility; ignored.
    #[arg(long, hide = true)]
    test: bool,
    /// A benchmark name filter from cargo: ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Some(path) = cli.load_once {
        println!("{}", timed_load(&path, &LoadOptions::default()));
        return;
    }
    if !cli.bench {
        println!("checkpoint bench: skipped (run `cargo bench --bench checkpoint`)");
        return;
    }
    let dir = PathBuf::from(
        std::env::var("CKPT_BENCH_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-out").into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let sizes = std::env::var("CKPT_BENCH_GIB").unwrap_or_else(|_| "1".into());
    println!(
        "checkpoint bench: best of {REPS}, files in {}",
        dir.display()
    );
    for gib in sizes.split(',').filter_map(|s| s.trim().parse().ok()) {
        run(&dir, gib);
    }
}
