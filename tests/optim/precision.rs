//! `Precision` parsing and autocast, and `GradScaler` against `torch.amp.GradScaler`.

use crate::support;

use lightning_core::optim::{Optimizer, Sgd, SgdConfig};
use lightning_core::precision::{GradScaler, Precision};
use lightning_core::value::Value;
use serde_json::json;
use support::{assert_close, from_json, python_json, to_json};
use tch::{Device, Kind, Tensor};

#[test]
fn parses_lightning_spellings() {
    assert_eq!("32".parse::<Precision>().unwrap(), Precision::F32);
    assert_eq!("32-true".parse::<Precision>().unwrap(), Precision::F32);
    assert_eq!(
        "16-mixed".parse::<Precision>().unwrap(),
        Precision::F16Mixed
    );
    assert_eq!(
        "bf16-mixed".parse::<Precision>().unwrap(),
        Precision::Bf16Mixed
    );
    assert_eq!(Precision::Bf16Mixed.to_string(), "bf16-mixed");
    let e = "fp8".parse::<Precision>().unwrap_err().to_string();
    assert!(
        e.contains("\"fp8\"") && e.contains("\"16-mixed\"") && e.contains("\"bf16-mixed\""),
        "{e}"
    );
    assert!(Precision::F16Mixed.grad_scaler().is_some());
    assert!(Precision::Bf16Mixed.grad_scaler().is_none());
}

/// Mixed precision autocasts on the device the step runs on, CPU included (never a silent
/// f32 run), and restores f32 after.
#[test]
fn autocast_uses_the_precision_dtype_on_cpu_and_gpu() {
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    } else {
        assert!(
            !lightning_core::cuda::gpu_expected(),
            "LIGHTNING_RS_EXPECT_GPU is set but tch::Cuda::is_available() is false"
        );
        println!("SKIP (CUDA part): no CUDA GPU; autocast checked on the CPU only");
    }
    for device in devices {
        let a = Tensor::ones([8, 8], (Kind::Float, device));
        for (p, kind) in [
            (Precision::F16Mixed, Kind::Half),
            (Precision::Bf16Mixed, Kind::BFloat16),
            (Precision::F32, Kind::Float),
        ] {
            let y = p.autocast(device, || a.matmul(&a)).expect("autocast");
            assert_eq!(y.kind(), kind, "{p} on {device:?}");
        }
        // Outside autocast, back to f32.
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }
}

const SCRIPT: &str = r#"
inp = json.load(open(sys.argv[1]))
w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5]))
opt = torch.optim.SGD([w], lr=0.1)
sc = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
c = torch.tensor([0.5, 1.0, -1.5, 2.0])
rows = []
for bad in inp["pattern"]:
    opt.zero_grad()
    sc.scale((w * c).sum()).backward()
    if bad:
        w.grad[1] = float("inf")
    sc.step(opt)
    sc.update()
    rows.append({"scale": sc.get_scale(), "tracker": sc._growth_tracker.item(), "w": w.detach().tolist()})
sc2 = torch.amp.GradScaler("cpu")
sc2.load_state_dict(dec(inp["ours"]))
print(json.dumps({"rows": rows, "state": enc(sc.state_dict()), "reloaded": enc(sc2.state_dict())}))
"#;

#[test]
fn grad_scaler_matches_torch() {
    let pattern = [
        false, false, false, true, false, false, false, false, true, true, false, false, false,
        false,
    ];
    let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).set_requires_grad(true);
    let c = Tensor::from_slice(&[0.5f32, 1.0, -1.5, 2.0]);
    let mut opt = Sgd::new(
        vec![w.shallow_clone()],
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut sc = GradScaler::new(8.0, 2.0, 0.5, 3).unwrap();
    let mut rows = Vec::new();
    for &bad in &pattern {
        opt.zero_grad();
        sc.scale(&(&w * &c).sum(Kind::Float)).backward();
        if bad {
            let _ = w.grad().get(1).fill_(f64::INFINITY);
        }
        let stepped = sc.step(&mut opt).unwrap();
        assert_eq!(stepped, !bad);
        sc.update().unwrap();
        rows.push((
            sc.get_scale(),
            sc.growth_tracker(),
            Vec::<f64>::try_from(&w.detach().to_kind(Kind::Double)).unwrap(),
        ));
    }
    let Some(py) = python_json(
        SCRIPT,
        &json!({"pattern": pattern, "ours": to_json(&sc.state_dict())}),
    ) else {
        return;
    };
    for (i, ((scale, tracker, wv), r)) in
        rows.iter().zip(py["rows"].as_array().unwrap()).enumerate()
    {
        assert_eq!(*scale, r["scale"].as_f64().unwrap(), "scale at step {i}");
        assert_eq!(
            *tracker,
            r["tracker"].as_i64().unwrap(),
            "growth tracker at step {i}"
        );
        let pw: Vec<f64> = r["w"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in wv.iter().zip(&pw) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "weights at step {i}: {wv:?} vs {pw:?}"
            );
        }
    }
    // Same layout; Python loaded ours; we load Python's.
    let py_state = from_json(&py["state"]);
    assert_close(&sc.state_dict(), &py_state, 0.0, "scaler state");
    assert_close(
        &from_json(&py["reloaded"]),
        &py_state,
        0.0,
        "python reloaded our state",
    );
    let mut mine = GradScaler::default();
    mine.load_state_dict(&py_state).unwrap();
    assert_eq!(mine.get_scale(), sc.get_scale());
    assert_eq!(mine.growth_tracker(), sc.growth_tracker());
}

#[test]
fn scaler_misuse_is_an_error() {
    let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = Sgd::new(vec![w.shallow_clone()], SgdConfig::default()).unwrap();
    let mut sc = GradScaler::default();
    assert!(sc
        .update()
        .unwrap_err()
        .to_string()
        .contains("No inf checks"));
    sc.scale(&w.sum(Kind::Float)).backward();
    let _found = sc.unscale_(&opt).unwrap();
    let e = sc.unscale_(&opt).unwrap_err().to_string();
    assert!(e.contains("already been called"), "{e}");
    assert!(sc.step(&mut opt).unwrap());
    sc.update().unwrap();
    let e = sc.load_state_dict(&Value::dict()).unwrap_err().to_string();
    assert!(e.contains("disabled instance"), "{e}");
    assert!(GradScaler::new(1.0, 0.5, 0.5, 10).is_err());
    assert_eq!(GradScaler::disabled().state_dict(), Value::dict());
}
