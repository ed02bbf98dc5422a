//! The fused kernels: every source compiles to PTX with NVRTC (no GPU needed, the pip CUDA
//! runtime ships NVRTC), and on a GPU the fused path matches the tch-ops path. Also the GPU's
//! other hot path, checkpoint loads straight to `cuda:0` (parallel reads through pinned
//! staging).

use crate::support;

use lightning_core::cuda::{self, KERNEL_NAMES};
use lightning_core::optim::{clip_grad_norm, Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use lightning_core::precision::GradScaler;
use serde_json::json;
use std::time::Duration;
use support::{from_json, python_json, tensor_json};
use tch::{Device, Kind, Tensor};

#[test]
fn kernels_compile_to_ptx_without_a_gpu() {
    // CI has the venv's NVRTC; without it this is a set-up error, not a skip.
    let ptx = cuda::compile_ptx("compute_80").expect("NVRTC compiles every kernel source");
    for name in KERNEL_NAMES {
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "PTX lacks entry point {name}"
        );
    }
    // float4 accesses made it into the f32 kernels.
    assert!(
        ptx.contains("ld.global.v4.f32"),
        "no vectorized loads in PTX"
    );
}

#[test]
fn kernels_assemble_for_hopper_without_register_spills() {
    // What the H100/H200 load: SASS for sm_90, assembled by NVRTC's ptxas, no GPU needed.
    // A spill or a stack frame in a bandwidth-bound kernel would cost the copy-bandwidth goal.
    for arch in ["sm_90", "sm_80"] {
        let cubin = cuda::compile_cubin(arch).expect("NVRTC assembles every kernel");
        assert_eq!(
            &cubin.image[..4],
            b"\x7fELF",
            "{arch}: a cubin is an ELF image"
        );
        let res = cubin.resources();
        for name in KERNEL_NAMES {
            let k = res.iter().find(|k| k.name == *name).unwrap_or_else(|| {
                panic!("{arch}: ptxas reported nothing for {name}:\n{}", cubin.log)
            });
            eprintln!(
                "{arch} {name}: {} registers, {} B stack",
                k.registers, k.stack_bytes
            );
            assert!(
                k.registers > 0 && k.registers <= 255,
                "{arch} {name}: {k:?}"
            );
            assert_eq!(k.spill_bytes, 0, "{arch} {name} spills registers: {k:?}");
            assert_eq!(k.stack_bytes, 0, "{arch} {name} uses a stack frame: {k:?}");
        }
    }
    let err = cuda::compile_cubin("sm_1").unwrap_err().to_string();
    assert!(
        err.contains("NVRTC failed to compile") && err.contains("sm_1"),
        "{err}"
    );
}

#[test]
fn compile_errors_are_reported_with_the_log() {
    // A source with an error would be reported with NVRTC's log; check via a bad arch.
    let err = cuda::compile_ptx("compute_1").unwrap_err().to_string();
    assert!(err.contains("NVRTC failed to compile"), "{err}");
}

#[test]
fn reports_device() {
    let cuda = tch::Cuda::is_available();
    println!(
        "device: tch CUDA available = {cuda}, devices = {}, fused kernels = {}",
        tch::Cuda::device_count(),
        cuda && cuda::available()
    );
    // The caller says a GPU is here (scripts/gpu_check.sh): CUDA and the kernels must load.
    if let Some(missing) = cuda::expected_gpu_missing() {
        panic!("{missing}");
    }
    // A GPU machine: an NVIDIA device node exists (or the caller says so). There, tch must see
    // CUDA (the --no-as-needed link of libtorch_cuda) and our kernels must load.
    let gpu_machine = std::path::Path::new("/dev/nvidia0").exists() || cuda::gpu_expected();
    if gpu_machine {
        assert!(
            cuda,
            "this machine has an NVIDIA GPU but tch::Cuda::is_available() is false"
        );
        assert!(
            cuda::available(),
            "GPU present but the fused kernels did not load"
        );
    } else {
        println!("SKIP: no GPU on this machine; GPU assertions not run");
    }
}

/// `LIGHTNING_RS_EXPECT_GPU=1` turns a missing GPU from a skip into a failure that says what
/// is missing; `0` leaves the skip. (Run on a CPU machine: the test re-runs itself.)
#[test]
fn an_expected_gpu_that_is_missing_fails_instead_of_skipping() {
    if tch::Cuda::is_available() {
        println!("SKIP: this machine has a GPU, so nothing expected is missing");
        return;
    }
    let run = |value: &str| {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        // The test's name in the `optim` test binary (tests/optim/main.rs).
        cmd.args([
            "cuda_kernels::reports_device",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(cuda::EXPECT_GPU_ENV, value)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let out = lightning_testkit::Supervised::spawn(&mut cmd, Duration::from_secs(120))
            .wait_with_output();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run("1");
    assert!(!ok, "expected a failure:\n{text}");
    assert!(
        text.contains("LIGHTNING_RS_EXPECT_GPU is set but tch::Cuda::is_available() is false"),
        "{text}"
    );
    let (ok, text) = run("0");
    assert!(ok && text.contains("SKIP: no GPU"), "{text}");
}

fn gpu() -> Option<Device> {
    if tch::Cuda::is_available() && cuda::available() {
        Some(Device::Cuda(0))
    } else {
        println!("SKIP: no CUDA GPU (or kernels unavailable); fused-vs-ops comparison not run");
        None
    }
}

/// Params of several sizes (odd lengths exercise the scalar tails, an offset view the
/// unaligned path) and their grads for `steps` steps.
fn setup(kind: Kind, dev: Device) -> (Vec<Tensor>, Vec<Vec<Tensor>>) {
    tch::manual_seed(3);
    let sizes = [1i64, 7, 4096, 65536 * 2 + 3, 1000];
    let params: Vec<Tensor> = sizes
        .iter()
        .map(|&n| Tensor::randn([n], (Kind::Float, dev)).to_kind(kind))
        .collect();
    let grads = (0..3)
        .map(|_| {
            sizes
                .iter()
                .map(|&n| Tensor::randn([n], (Kind::Float, dev)).to_kind(kind))
                .collect()
        })
        .collect();
    (params, grads)
}

fn run(opt: &mut dyn Optimizer, params: &[Tensor], grads: &[Vec<Tensor>]) {
    for step in grads {
        opt.zero_grad();
        let loss: Tensor = params
            .iter()
            .zip(step)
            .map(|(p, g)| (p * g).sum(Kind::Float))
            .sum();
        loss.backward();
        opt.step().expect("step");
    }
}

fn max_rel(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let x = x.to_kind(Kind::Double);
            let y = y.to_kind(Kind::Double);
            (&x - &y).abs().max().double_value(&[]) / y.abs().max().double_value(&[]).max(1e-30)
        })
        .fold(0.0, f64::max)
}

/// Leaf copies; the last one is a view at a 1-element offset (not 16-byte aligned), which
/// exercises the kernels' scalar path.
fn leaf_copies(ps: &[Tensor]) -> Vec<Tensor> {
    let last = ps.len() - 1;
    ps.iter()
        .enumerate()
        .map(|(i, p)| {
            if i == last {
                let n = p.numel() as i64;
                let big = Tensor::zeros([n + 1], (p.kind(), p.device()));
                let mut v = big.narrow(0, 1, n).detach();
                v.copy_(p);
                v.set_requires_grad(true)
            } else {
                p.detach().copy().set_requires_grad(true)
            }
        })
        .collect()
}

fn shallow(ps: &[Tensor]) -> Vec<Tensor> {
    ps.iter().map(Tensor::shallow_clone).collect()
}

#[test]
fn fused_adam_and_sgd_match_tch_ops_on_gpu() {
    let Some(dev) = gpu() else { return };
    // Relative to the largest |param|: f32 agrees to rounding; f16/bf16 params are rounded to
    // their storage type after each step on both paths, so they may differ by a few ulps
    // (f16 ulp ~ 1e-3, bf16 ulp ~ 4e-3 at the top of the range).
    for (kind, tol) in [
        (Kind::Float, 1e-5),
        (Kind::Half, 3e-3),
        (Kind::BFloat16, 2.4e-2),
    ] {
        let (init, grads) = setup(kind, dev);
        let adam_cases = [
            (
                "adamw",
                AdamConfig {
                    lr: 1e-2,
                    weight_decay: 0.1,
                    ..AdamConfig::adamw()
                },
            ),
            (
                "adamw amsgrad",
                AdamConfig {
                    lr: 1e-2,
                    weight_decay: 0.1,
                    amsgrad: true,
                    ..AdamConfig::adamw()
                },
            ),
            (
                "adam l2 maximize",
                AdamConfig {
                    lr: 1e-2,
                    weight_decay: 0.1,
                    maximize: true,
                    ..AdamConfig::default()
                },
            ),
        ];
        for (name, cfg) in adam_cases {
            let fused_p = leaf_copies(&init);
            let ops_p = leaf_copies(&init);
            let mut fused = Adam::new(shallow(&fused_p), cfg.clone()).unwrap();
            let mut ops = Adam::new(
                shallow(&ops_p),
                AdamConfig {
                    fused: false,
                    ..cfg
                },
            )
            .unwrap();
            run(&mut fused, &fused_p, &grads);
            run(&mut ops, &ops_p, &grads);
            let e = max_rel(&fused_p, &ops_p);
            println!("{name} {kind:?}: max rel diff fused vs ops {e:e}");
            assert!(e < tol, "{name} {kind:?}: {e}");
        }
        let cfg = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Default::default()
        };
        let fused_p = leaf_copies(&init);
        let ops_p = leaf_copies(&init);
        let mut fused = Sgd::new(shallow(&fused_p), cfg.clone()).unwrap();
        let mut ops = Sgd::new(
            shallow(&ops_p),
            SgdConfig {
                fused: false,
                ..cfg
            },
        )
        .unwrap();
        run(&mut fused, &fused_p, &grads);
        run(&mut ops, &ops_p, &grads);
        let e = max_rel(&fused_p, &ops_p);
        println!("sgd {kind:?}: max rel diff fused vs ops {e:e}");
        assert!(e < tol, "sgd {kind:?}: {e}");
    }
}

#[test]
fn fused_clip_and_unscale_match_on_gpu() {
    let Some(dev) = gpu() else { return };
    let (init, grads) = setup(Kind::Float, dev);
    let p = leaf_copies(&init);
    let loss: Tensor = p
        .iter()
        .zip(&grads[0])
        .map(|(p, g)| (p * g).sum(Kind::Float))
        .sum();
    loss.backward();
    let expect = grad_norm(&p);
    let n = clip_grad_norm(&p, 1.0, 2.0).unwrap();
    assert_eq!(n.device(), dev, "norm stays on the device");
    let got = n.double_value(&[]);
    assert!(
        (got - expect).abs() / expect < 1e-5,
        "norm {got} vs {expect}"
    );
    let after = grad_norm(&p);
    assert!((after - 1.0).abs() < 1e-4, "clipped norm {after}");

    // Unscale: finite grads are divided by the scale; an inf sets found_inf and skips the step.
    let mut opt = Sgd::new(
        shallow(&p),
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut scaler = GradScaler::default();
    let before: Vec<Tensor> = p.iter().map(|p| p.grad().copy()).collect();
    let found = scaler.unscale_(&opt).unwrap();
    assert_eq!(found.double_value(&[0]), 0.0);
    for (b, p) in before.iter().zip(&p) {
        let e = (b / 65536.0 - p.grad()).abs().max().double_value(&[]);
        assert!(e < 1e-9, "unscale error {e}");
    }
    scaler.update().unwrap(); // the unscale_'s inf check counts, as in torch
    assert_eq!(scaler.growth_tracker(), 1);
    let g = p[2].grad();
    let _ = g.get(5).fill_(f64::INFINITY);
    let w_before = p[0].detach().copy();
    assert!(!scaler.step(&mut opt).unwrap(), "step skipped on inf");
    assert!(
        p[0].detach().equal(&w_before),
        "weights untouched on a skipped step"
    );
    scaler.update().unwrap();
    assert_eq!(scaler.get_scale(), 32768.0);
}

/// The global 2-norm of the params' gradients, in f64.
fn grad_norm(ps: &[Tensor]) -> f64 {
    ps.iter()
        .map(|p| {
            p.grad()
                .to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt()
}

#[test]
fn low_precision_clip_and_unscale_on_gpu() {
    let Some(dev) = gpu() else { return };
    for kind in [Kind::Half, Kind::BFloat16] {
        let (init, grads) = setup(kind, dev);
        let p = leaf_copies(&init);
        let loss: Tensor = p
            .iter()
            .zip(&grads[0])
            .map(|(p, g)| (p * g).sum(Kind::Float))
            .sum();
        loss.backward();
        let expect = grad_norm(&p);
        let n = clip_grad_norm(&p, 1.0, 2.0).unwrap().double_value(&[]);
        assert!(
            (n - expect).abs() / expect < 1e-4,
            "{kind:?} norm {n} vs {expect}"
        );
        let after = grad_norm(&p);
        assert!((after - 1.0).abs() < 1e-2, "{kind:?} clipped norm {after}");
        let opt = Sgd::new(shallow(&p), SgdConfig::default()).unwrap();
        let before: Vec<Tensor> = p.iter().map(|p| p.grad().to_kind(Kind::Double)).collect();
        let mut scaler = GradScaler::new(4.0, 2.0, 0.5, 10).unwrap();
        let found = scaler.unscale_(&opt).unwrap();
        assert_eq!(found.double_value(&[0]), 0.0, "{kind:?}");
        for (b, p) in before.iter().zip(&p) {
            // Dividing by a power of two is exact in f16/bf16 (away from subnormals).
            let e = (b / 4.0 - p.grad().to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(e < 1e-6, "{kind:?} unscale error {e}");
        }
    }
}

const TORCH_FUSED: &str = r#"
inp = json.load(open(sys.argv[1]))
ps = [dec(p).cuda().requires_grad_(True) for p in inp["params"]]
opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True)
for step in inp["grads"]:
    for p, g in zip(ps, step):
        p.grad = dec(g).cuda()
    opt.step()
print(json.dumps({"params": [enc(p.cpu()) for p in ps]}))
"#;

#[test]
fn fused_adamw_matches_torch_fused_adamw_on_gpu() {
    let Some(dev) = gpu() else { return };
    let (init, grads) = setup(Kind::Float, dev);
    let p = leaf_copies(&init);
    let input = json!({
        "params": p.iter().map(tensor_json).collect::<Vec<_>>(),
        "grads": grads.iter().map(|s| s.iter().map(tensor_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    let Some(py) = python_json(TORCH_FUSED, &input) else {
        return;
    };
    let mut opt = Adam::adamw(
        shallow(&p),
        AdamConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..AdamConfig::adamw()
        },
    )
    .unwrap();
    run(&mut opt, &p, &grads);
    let theirs: Vec<Tensor> = match from_json(&py["params"]) {
        lightning_core::value::Value::List(l) => l
            .into_iter()
            .map(|v| v.as_tensor().unwrap().shallow_clone())
            .collect(),
        other => panic!("expected a list, got {}", other.type_name()),
    };
    let ours: Vec<Tensor> = p
        .iter()
        .map(|t| t.detach().to_device(Device::Cpu))
        .collect();
    let e = max_rel(&ours, &theirs);
    println!("our fused AdamW vs torch.optim.AdamW(fused=True): max rel diff {e:e}");
    assert!(e < 1e-5, "vs torch fused AdamW: {e}");
}

/// The fused kernels launch on libtorch's current stream: with a non-blocking pool stream
/// made current, torch's writes of the gradients, our fused Adam step and torch's reads are
/// ordered on that one stream, with no synchronization, and give the tch-ops result.
#[test]
fn fused_kernels_run_on_libtorchs_current_stream() {
    use lightning_sys::cuda as streams;
    let Some(dev) = gpu() else { return };
    let default = streams::current_stream(0).expect("current stream");
    let pool = streams::pool_stream(0).expect("pool stream");
    assert_ne!(default, pool);
    let (init, grads) = setup(Kind::Float, dev);
    let cfg = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::adamw()
    };
    let want = leaf_copies(&init);
    let mut ops = Adam::adamw(
        shallow(&want),
        AdamConfig {
            fused: false,
            ..cfg.clone()
        },
    )
    .unwrap();
    run(&mut ops, &want, &grads);
    tch::Cuda::synchronize(0);

    let got = leaf_copies(&init);
    tch::Cuda::synchronize(0);
    streams::set_current_stream(0, pool).expect("switch to the pool stream");
    assert_eq!(streams::current_stream(0).unwrap(), pool);
    let mut fused = Adam::adamw(shallow(&got), cfg).unwrap();
    run(&mut fused, &got, &grads);
    // Read back on the pool stream (the copy to the host waits for that stream only).
    let host: Vec<Tensor> = got.iter().map(|p| p.to_device(Device::Cpu)).collect();
    streams::set_current_stream(0, default).expect("restore the default stream");
    let want_host: Vec<Tensor> = want.iter().map(|p| p.to_device(Device::Cpu)).collect();
    let err = max_rel(&host, &want_host);
    assert!(err <= 1e-5, "fused on a pool stream vs tch ops: {err}");
}

#[test]
fn checkpoints_load_to_the_gpu_through_staging() {
    use lightning_core::checkpoint::{self, CheckpointError, LoadOptions};
    use lightning_core::Value;
    let Some(dev) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("to_gpu.ckpt");
    // 160 MiB of f32: more than one 128 MiB staging batch, several 8 MiB chunks.
    let big = Tensor::arange(40 << 20, (Kind::Float, Device::Cpu));
    let mut tree = Value::dict();
    tree.insert("big", big.shallow_clone());
    tree.insert("view", big.narrow(0, 5, 1000));
    tree.insert(
        "bf16",
        Tensor::from_slice(&[0.5f32, 8.0]).to_kind(Kind::BFloat16),
    );
    tree.insert("i64", Tensor::arange(999, (Kind::Int64, Device::Cpu)));
    checkpoint::save(&p, &tree).unwrap();
    let opts = LoadOptions {
        device: dev,
        ..LoadOptions::default()
    };
    let back = checkpoint::load_with(&p, &opts).unwrap();
    for key in ["big", "view", "bf16", "i64"] {
        let want = tree.get(key).and_then(Value::as_tensor).unwrap();
        let got = back.get(key).and_then(Value::as_tensor).unwrap();
        assert_eq!(got.device(), dev, "{key}");
        assert!(got.to_device(Device::Cpu).equal(want), "{key}");
    }
    // A flipped byte in the second batch is still the record's CRC error.
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.len() - (20 << 20);
    bytes[at] ^= 1;
    let q = dir.path().join("bad.ckpt");
    std::fs::write(&q, bytes).unwrap();
    let e = checkpoint::load_with(&q, &opts).unwrap_err();
    assert!(matches!(e, CheckpointError::Crc { .. }), "{e}");
}

/// Snapshots and load staging use host memory allocated page-locked (not a pageable tensor
/// copied into pinned memory): on a GPU it is pinned and a device round trip through it is
/// exact; without one, allocating it is an error the callers fall back from.
#[test]
fn pinned_host_memory_for_snapshots() {
    let pinned = lightning_sys::ops::empty_pinned(&[1000, 3], Kind::BFloat16);
    let Some(dev) = gpu() else {
        let err = pinned.expect_err("pinned memory without a GPU").to_string();
        assert!(err.contains("empty_pinned"), "{err}");
        return;
    };
    let mut host = pinned.expect("pinned allocation on a GPU machine");
    assert!(host.is_pinned(dev), "not page-locked");
    let src = Tensor::randn([1000, 3], (Kind::Float, dev)).to_kind(Kind::BFloat16);
    host.copy_(&src);
    assert!(
        host.to_device(dev).equal(&src),
        "device -> pinned host -> device changed values"
    );
}
