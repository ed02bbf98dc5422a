//! The fused kernels: every source compiles to PTX with NVRTC (no GPU needed, the pip CUDA
//! runtime ships NVRTC), and on a GPU the fused path matches the tch-ops path.

use lightning_core::cuda::{self, KERNEL_NAMES};
use lightning_core::optim::{clip_grad_norm, Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use lightning_core::precision::GradScaler;
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
    if std::env::var_os("LIGHTNING_RS_EXPECT_GPU").is_some() {
        assert!(
            cuda,
            "LIGHTNING_RS_EXPECT_GPU is set but tch::Cuda::is_available() is false"
        );
        assert!(
            cuda::available(),
            "GPU present but the fused kernels did not load"
        );
    } else if !cuda {
        println!("SKIP: no GPU on this machine; GPU assertions not run");
    }
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
    for (kind, tol) in [
        (Kind::Float, 1e-5),
        (Kind::Half, 2e-3),
        (Kind::BFloat16, 1.6e-2),
    ] {
        let (init, grads) = setup(kind, dev);
        for amsgrad in [false, true] {
            let cfg = AdamConfig {
                lr: 1e-2,
                weight_decay: 0.1,
                amsgrad,
                ..AdamConfig::adamw()
            };
            let fused_p = leaf_copies(&init);
            let ops_p = leaf_copies(&init);
            let mut fused = Adam::adamw(shallow(&fused_p), cfg.clone()).unwrap();
            let mut ops = Adam::adamw(
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
            println!("adamw {kind:?} amsgrad={amsgrad}: max rel diff fused vs ops {e:e}");
            assert!(e < tol, "adamw {kind:?}: {e}");
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
    let expect: f64 = grads[0]
        .iter()
        .map(|g| g.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    let n = clip_grad_norm(&p, 1.0, 2.0).unwrap();
    assert_eq!(n.device(), dev, "norm stays on the device");
    let got = n.double_value(&[]);
    assert!(
        (got - expect).abs() / expect < 1e-5,
        "norm {got} vs {expect}"
    );
    let after: f64 = p
        .iter()
        .map(|p| p.grad().square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
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
