//! Optimizer hot-path benchmark (GPU): our fused AdamW, SGD, AMP unscale and grad-norm clip
//! over 256M f32 params in 64 tensors, in GB/s and as ratios to the device-to-device copy
//! bandwidth and to PyTorch's own kernels (`optim_anchor.py`, run in the same command) and
//! our tch-ops path.
//!
//! `cargo bench -p lightning-core --bench optim` (needs a CUDA GPU; prints a skip otherwise).
//! Under `cargo test --all-targets` (no `--bench` argument) it only prints how to run it.
//! Env: `LIGHTNING_RS_PYTHON` (Python with torch for the anchors), `OPTIM_ANCHOR_SCRIPT`
//! (path of `optim_anchor.py` when the binary runs outside the source tree), `OPTIM_BENCH_NUMEL`
//! (per tensor, default 4Mi), `OPTIM_BENCH_TENSORS` (default 64), `OPTIM_BENCH_REPS` (20).

use clap::Parser;
use lightning_core::optim::{clip_grad_norm, Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use lightning_core::precision::GradScaler;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed(reps: i64, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    tch::Cuda::synchronize(0);
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    tch::Cuda::synchronize(0);
    t.elapsed().as_secs_f64() / reps as f64
}

fn anchors(per: i64, nt: i64, reps: i64) -> Option<serde_json::Value> {
    let py = std::env::var("LIGHTNING_RS_PYTHON").unwrap_or_else(|_| "python3".into());
    // The source tree's path, or relative to the working directory (binaries run elsewhere).
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/optim_anchor.py");
    let script = std::env::var("OPTIM_ANCHOR_SCRIPT").unwrap_or_else(|_| {
        if std::path::Path::new(built).exists() {
            built.to_owned()
        } else {
            "lightning-core/benches/optim_anchor.py".to_owned()
        }
    });
    let out = std::process::Command::new(&py)
        .args([
            script.as_str(),
            &per.to_string(),
            &nt.to_string(),
            &reps.to_string(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            eprintln!(
                "anchor script failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("could not run {py}: {e}");
            None
        }
    }
}

/// The command line: cargo's `--bench` (without it, as under `cargo test`, the bench only says
/// how to run it); sizes come from `OPTIM_BENCH_*` variables.
#[derive(Parser, Debug)]
#[command(about = "Fused optimizer kernels against torch's fused and foreach ops (CUDA)")]
struct Cli {
    /// Run the measurement (`cargo bench` passes it).
    /// (Given twice by `cargo bench -- --bench`: accepted.)
    #[arg(long, overrides_with = "bench")]
    bench: bool,
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
    if !Cli::parse().bench {
        println!("optim bench: run with `cargo bench -p lightning-core --bench optim` (skipped under cargo test)");
        return;
    }
    if let Some(missing) = lightning_core::cuda::expected_gpu_missing() {
        eprintln!("optim bench: {missing}");
        std::process::exit(1);
    }
    if !tch::Cuda::is_available() || !lightning_core::cuda::available() {
        println!("SKIP: optim bench needs a CUDA GPU with the fused kernels (none here)");
        return;
    }
    let per = env_or("OPTIM_BENCH_NUMEL", 4 << 20);
    let nt = env_or("OPTIM_BENCH_TENSORS", 64);
    let reps = env_or("OPTIM_BENCH_REPS", 20);
    let n = (per * nt) as f64;
    let dev = Device::Cuda(0);
    // PyTorch first, so the two runs do not share GPU memory.
    let anchor = anchors(per, nt, reps);
    if anchor.is_none() && std::env::var_os("LIGHTNING_RS_REQUIRE_PYTHON").is_some() {
        eprintln!(
            "optim bench: LIGHTNING_RS_REQUIRE_PYTHON is set but PyTorch's figures are missing"
        );
        std::process::exit(1);
    }

    let gbps = |bytes_per_elem: f64, s: f64| bytes_per_elem * n / s / 1e9;
    let src = Tensor::randn([per * nt], (Kind::Float, dev));
    let mut dst = src.empty_like();
    let copy_s = timed(reps, || {
        dst.copy_(&src);
    });
    drop((src, dst));
    let copy = gbps(8.0, copy_s);

    tch::manual_seed(0);
    let params: Vec<Tensor> = (0..nt)
        .map(|_| Tensor::randn([per], (Kind::Float, dev)).set_requires_grad(true))
        .collect();
    let loss: Tensor = params.iter().map(|p| p.sum(Kind::Float)).sum();
    loss.backward(); // allocates every .grad (all ones)
    let shallow = || params.iter().map(Tensor::shallow_clone).collect::<Vec<_>>();

    let cfg = AdamConfig {
        lr: 1e-3,
        ..AdamConfig::adamw()
    };
    let mut adamw = Adam::adamw(shallow(), cfg.clone()).expect("adamw");
    let adamw_s = timed(reps, || adamw.step().expect("step"));
    drop(adamw);
    let mut adamw_ops = Adam::adamw(
        shallow(),
        AdamConfig {
            fused: false,
            ..cfg
        },
    )
    .expect("adamw");
    let adamw_ops_s = timed(reps.min(5), || adamw_ops.step().expect("step"));
    drop(adamw_ops);

    let scfg = SgdConfig {
        lr: 1e-3,
        momentum: 0.9,
        ..Default::default()
    };
    let mut sgd = Sgd::new(shallow(), scfg.clone()).expect("sgd");
    let sgd_s = timed(reps, || sgd.step().expect("step"));
    drop(sgd);
    let mut sgd_ops = Sgd::new(
        shallow(),
        SgdConfig {
            fused: false,
            ..scfg
        },
    )
    .expect("sgd");
    let sgd_ops_s = timed(reps.min(5), || sgd_ops.step().expect("step"));
    drop(sgd_ops);

    let holder = Sgd::new(shallow(), SgdConfig::default()).expect("sgd");
    let unscale_s = timed(reps, || {
        let mut sc = GradScaler::new(1.0, 2.0, 0.5, 2000).expect("scaler");
        let _found = sc.unscale_(&holder).expect("unscale");
    });
    let clip_s = timed(reps, || {
        let _n = clip_grad_norm(&params, 1e9, 2.0).expect("clip");
    });

    let dev_name = anchor
        .as_ref()
        .and_then(|a| a["device"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "CUDA device 0".into());
    println!(
        "\noptim bench on {dev_name}: {nt} tensors x {per} f32 = {:.0}M params, {reps} reps",
        n / 1e6
    );
    println!("device-to-device copy: {copy:.0} GB/s (read+write)\n");
    println!("| op (bytes/param) | ours GB/s | % of copy | torch fused GB/s | torch foreach GB/s | ours / torch best | our tch-ops GB/s |");
    println!("|---|---|---|---|---|---|---|");
    let a = |k: &str| anchor.as_ref().and_then(|a| a[k].as_f64());
    // (name, bytes per param, our seconds, torch fused s, torch foreach s, our tch-ops s)
    type Row<'a> = (&'a str, f64, f64, Option<f64>, Option<f64>, Option<f64>);
    let rows: [Row; 4] = [
        (
            "AdamW step (28)",
            28.0,
            adamw_s,
            a("adamw_fused_s"),
            a("adamw_foreach_s"),
            Some(adamw_ops_s),
        ),
        (
            "SGD momentum step (20)",
            20.0,
            sgd_s,
            a("sgd_fused_s"),
            a("sgd_foreach_s"),
            Some(sgd_ops_s),
        ),
        (
            "AMP unscale + inf check (8)",
            8.0,
            unscale_s,
            None,
            a("unscale_foreach_s"),
            None,
        ),
        (
            "grad-norm + clip (12)",
            12.0,
            clip_s,
            None,
            a("clip_foreach_s"),
            None,
        ),
    ];
    let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    for (name, b, ours_s, fused, foreach, ops) in rows {
        let ours = gbps(b, ours_s);
        let fused = fused.map(|s| gbps(b, s));
        let foreach = foreach.map(|s| gbps(b, s));
        let best = fused
            .into_iter()
            .chain(foreach)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let ratio = best
            .map(|t| format!("{:.2}x", ours / t))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {name} | {ours:.0} | {:.1}% | {} | {} | {ratio} | {} |",
            100.0 * ours / copy,
            f(fused),
            f(foreach),
            f(ops.map(|s| gbps(b, s)))
        );
    }
    if let Some(a) = &anchor {
        let tc = a["copy_s"]
            .as_f64()
            .map(|s| gbps(8.0, s))
            .unwrap_or(f64::NAN);
        println!(
            "\n(torch measured copy in its own process: {tc:.0} GB/s; torch {})",
            a["torch"]
        );
    } else {
        println!("\n(no PyTorch anchors: set LIGHTNING_RS_PYTHON to a Python with torch)");
    }
}
