//! SGD / Adam / AdamW against the venv's PyTorch: the same steps give the same weights and
//! states bit for bit (our CPU path runs `torch.optim`'s single-tensor ops with the same
//! scalars, on the same libtorch), and state_dicts load both ways (Python loads ours and
//! continues identically; we load Python's and continue identically).

use crate::support;

use lightning_core::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use lightning_core::value::Value;
use serde_json::{json, Value as Json};
use support::{assert_close, from_json, python_json, tensor_json, to_json};
use tch::{Kind, Tensor};

const SCRIPT: &str = r#"
inp = json.load(open(sys.argv[1]))
params = [dec(p).clone().requires_grad_(True) for p in inp["params"]]
groups = []
for g in inp["groups"]:
    d = dict(g)
    d["params"] = [params[i] for i in d.pop("idx")]
    if "betas" in d: d["betas"] = tuple(d["betas"])
    groups.append(d)
opt = getattr(torch.optim, inp["opt"])(groups)
if inp.get("load") is not None:
    opt.load_state_dict(dec(inp["load"]))
for step in inp["grads"]:
    for p, g in zip(params, step):
        p.grad = None if g is None else dec(g)
    opt.step()
print(json.dumps({"params": [enc(p) for p in params], "state": enc(opt.state_dict())}))
"#;

const SHAPES: [&[i64]; 3] = [&[3, 4], &[5], &[2, 3]];
const GROUPS: [&[usize]; 2] = [&[0, 1], &[2]];

fn init_params() -> Vec<Tensor> {
    tch::manual_seed(7);
    SHAPES
        .iter()
        .map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true))
        .collect()
}

/// Gradients for `n` steps; with `lazy`, param 1 has none at step 0 (lazy state creation).
fn grads(n: usize, seed: i64, lazy: bool) -> Vec<Vec<Option<Tensor>>> {
    tch::manual_seed(seed);
    (0..n)
        .map(|s| {
            SHAPES
                .iter()
                .enumerate()
                .map(|(i, sh)| {
                    (!lazy || s > 0 || i != 1)
                        .then(|| Tensor::randn(*sh, (Kind::Float, tch::Device::Cpu)))
                })
                .collect()
        })
        .collect()
}

fn grads_json(g: &[Vec<Option<Tensor>>]) -> Json {
    Json::Array(
        g.iter()
            .map(|s| {
                Json::Array(
                    s.iter()
                        .map(|t| t.as_ref().map(tensor_json).unwrap_or(Json::Null))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Applies the steps in Rust: grads are set through backward of `sum(p * g)`.
fn run_rust(opt: &mut dyn Optimizer, params: &[Tensor], g: &[Vec<Option<Tensor>>]) {
    for step in g {
        opt.zero_grad();
        let terms: Vec<Tensor> = params
            .iter()
            .zip(step)
            .filter_map(|(p, g)| g.as_ref().map(|g| (p * g).sum(Kind::Float)))
            .collect();
        Tensor::stack(&terms, 0).sum(Kind::Float).backward();
        opt.step().expect("step");
    }
}

struct Case {
    torch: &'static str,
    /// Python group dicts (without params).
    groups: [Json; 2],
    build: fn(Vec<Vec<Tensor>>) -> Box<dyn Optimizer>,
}

fn check(case: &Case) {
    let params = init_params();
    let g1 = grads(4, 11, true);
    let g2 = grads(2, 12, false);
    let groups_json: Vec<Json> = case
        .groups
        .iter()
        .zip(GROUPS)
        .map(|(g, idx)| {
            let mut g = g.clone();
            g["idx"] = json!(idx);
            g
        })
        .collect();
    let p0: Vec<Json> = params.iter().map(tensor_json).collect();
    let split = |ps: &[Tensor]| -> Vec<Vec<Tensor>> {
        GROUPS
            .iter()
            .map(|idx| idx.iter().map(|&i| ps[i].shallow_clone()).collect())
            .collect()
    };

    // 1. Same steps on both sides.
    let Some(py) = python_json(
        SCRIPT,
        &json!({"opt": case.torch, "groups": groups_json, "params": p0, "grads": grads_json(&g1)}),
    ) else {
        return;
    };
    let mut ours = (case.build)(split(&params));
    run_rust(ours.as_mut(), &params, &g1);
    let py_params = from_json(&py["params"]);
    assert_close(
        &Value::List(params.iter().map(|p| Value::Tensor(p.detach())).collect()),
        &py_params,
        0.0,
        &format!("{} params", case.torch),
    );
    let py_state = from_json(&py["state"]);
    assert_close(
        &ours.state_dict(),
        &py_state,
        0.0,
        &format!("{} state_dict", case.torch),
    );

    // 2. Python loads our state and continues; we continue: same result.
    let after: Vec<Json> = params.iter().map(tensor_json).collect();
    let py2 = python_json(
        SCRIPT,
        &json!({"opt": case.torch, "groups": groups_json, "params": after, "grads": grads_json(&g2),
                "load": to_json(&ours.state_dict())}),
    )
    .expect("python");
    run_rust(ours.as_mut(), &params, &g2);
    assert_close(
        &Value::List(params.iter().map(|p| Value::Tensor(p.detach())).collect()),
        &from_json(&py2["params"]),
        0.0,
        "python continued from our state",
    );
    assert_close(
        &ours.state_dict(),
        &from_json(&py2["state"]),
        0.0,
        "state after python continued",
    );

    // 3. We load Python's state (from step 1) into a fresh optimizer and continue.
    let fresh: Vec<Tensor> = match &py_params {
        Value::List(l) => l
            .iter()
            .map(|v| {
                v.as_tensor()
                    .expect("tensor")
                    .copy()
                    .set_requires_grad(true)
            })
            .collect(),
        _ => panic!("params list"),
    };
    let mut theirs = (case.build)(split(&fresh));
    theirs
        .load_state_dict(&py_state)
        .expect("load python's state_dict");
    assert_close(
        &theirs.state_dict(),
        &py_state,
        0.0,
        "python state round trip",
    );
    run_rust(theirs.as_mut(), &fresh, &g2);
    assert_close(
        &Value::List(fresh.iter().map(|p| Value::Tensor(p.detach())).collect()),
        &from_json(&py2["params"]),
        0.0,
        "continued from python's state",
    );
}

#[test]
fn adam_matches_torch() {
    check(&Case {
        torch: "Adam",
        groups: [
            json!({"lr": 0.01}),
            json!({"lr": 0.003, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1, "amsgrad": true}),
        ],
        build: |g| {
            let mut it = g.into_iter();
            Box::new(
                Adam::with_groups(vec![
                    (
                        it.next().unwrap(),
                        AdamConfig {
                            lr: 0.01,
                            ..Default::default()
                        },
                    ),
                    (
                        it.next().unwrap(),
                        AdamConfig {
                            lr: 0.003,
                            betas: (0.8, 0.99),
                            eps: 1e-6,
                            weight_decay: 0.1,
                            amsgrad: true,
                            ..Default::default()
                        },
                    ),
                ])
                .unwrap(),
            )
        },
    });
}

#[test]
fn adamw_matches_torch() {
    check(&Case {
        torch: "AdamW",
        groups: [
            json!({"lr": 0.02, "weight_decay": 0.05}),
            json!({"lr": 0.01, "maximize": true, "amsgrad": true}),
        ],
        build: |g| {
            let mut it = g.into_iter();
            Box::new(
                Adam::with_groups(vec![
                    (
                        it.next().unwrap(),
                        AdamConfig {
                            lr: 0.02,
                            weight_decay: 0.05,
                            ..AdamConfig::adamw()
                        },
                    ),
                    (
                        it.next().unwrap(),
                        AdamConfig {
                            lr: 0.01,
                            maximize: true,
                            amsgrad: true,
                            ..AdamConfig::adamw()
                        },
                    ),
                ])
                .unwrap(),
            )
        },
    });
}

#[test]
fn sgd_matches_torch() {
    check(&Case {
        torch: "SGD",
        groups: [
            json!({"lr": 0.1, "momentum": 0.9, "nesterov": true, "weight_decay": 0.01}),
            json!({"lr": 0.05, "momentum": 0.5, "dampening": 0.1, "maximize": true}),
        ],
        build: |g| {
            let mut it = g.into_iter();
            Box::new(
                Sgd::with_groups(vec![
                    (
                        it.next().unwrap(),
                        SgdConfig {
                            lr: 0.1,
                            momentum: 0.9,
                            nesterov: true,
                            weight_decay: 0.01,
                            ..Default::default()
                        },
                    ),
                    (
                        it.next().unwrap(),
                        SgdConfig {
                            lr: 0.05,
                            momentum: 0.5,
                            dampening: 0.1,
                            maximize: true,
                            ..Default::default()
                        },
                    ),
                ])
                .unwrap(),
            )
        },
    });
}

#[test]
fn plain_sgd_has_no_state() {
    let params = init_params();
    let mut opt = Sgd::new(
        params.iter().map(Tensor::shallow_clone).collect(),
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    run_rust(&mut opt, &params, &grads(2, 3, true));
    let sd = opt.state_dict();
    assert_eq!(
        sd.get("state").and_then(Value::as_dict).map(|d| d.len()),
        Some(0)
    );
}

#[test]
fn bad_state_dicts_are_clear_errors() {
    let params = init_params();
    let mut opt = Adam::new(
        params.iter().map(Tensor::shallow_clone).collect(),
        AdamConfig::default(),
    )
    .unwrap();
    let err = opt.load_state_dict(&Value::Int(3)).unwrap_err().to_string();
    assert!(err.contains("missing key \"state\""), "{err}");
    // Wrong number of params in the group.
    let mut other = Adam::new(vec![params[0].shallow_clone()], AdamConfig::default()).unwrap();
    let err = other
        .load_state_dict(&opt.state_dict())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 params in the loaded state, 1 in this optimizer"),
        "{err}"
    );
    // Shape mismatch in a moment.
    run_rust(&mut opt, &params, &grads(1, 5, false));
    let mut sd = opt.state_dict();
    let st = sd.get_mut("state").and_then(|s| s.as_dict_mut()).unwrap();
    let s0 = st.get_mut(&lightning_core::value::Key::Int(0)).unwrap();
    s0.insert(
        "exp_avg",
        Tensor::zeros([7], (Kind::Float, tch::Device::Cpu)),
    );
    let err = opt.load_state_dict(&sd).unwrap_err().to_string();
    assert!(err.contains("state[0][\"exp_avg\"] has shape [7]"), "{err}");
    // Invalid config.
    let err = Adam::new(
        vec![],
        AdamConfig {
            betas: (1.5, 0.9),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Invalid beta parameter at index 0"), "{err}");
    let err = Sgd::new(
        vec![],
        SgdConfig {
            nesterov: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Nesterov"), "{err}");
}

const CLIP_SCRIPT: &str = r#"
inp = json.load(open(sys.argv[1]))
out = []
for norm_type in inp["norm_types"]:
    ps = [torch.nn.Parameter(torch.zeros_like(dec(g))) for g in inp["grads"]]
    for p, g in zip(ps, inp["grads"]):
        p.grad = dec(g)
    total = torch.nn.utils.clip_grad_norm_(ps, inp["max_norm"], norm_type=float(norm_type))
    out.append({"total": total.item(), "grads": [enc(p.grad) for p in ps]})
ps = [torch.nn.Parameter(torch.zeros_like(dec(g))) for g in inp["grads"]]
for p, g in zip(ps, inp["grads"]):
    p.grad = dec(g)
torch.nn.utils.clip_grad_value_(ps, inp["clip_value"])
print(json.dumps({"norm": out, "value": [enc(p.grad) for p in ps]}))
"#;

#[test]
fn clipping_matches_torch() {
    use lightning_core::optim::{clip_grad_norm, clip_grad_value};
    let g = &grads(1, 21, false)[0];
    let gs: Vec<Tensor> = g
        .iter()
        .map(|t| t.as_ref().unwrap().shallow_clone())
        .collect();
    let norm_types = [2.0, 1.0, f64::INFINITY];
    let Some(py) = python_json(
        CLIP_SCRIPT,
        &json!({"grads": gs.iter().map(tensor_json).collect::<Vec<_>>(), "max_norm": 0.7,
                "norm_types": ["2", "1", "inf"], "clip_value": 0.3}),
    ) else {
        return;
    };
    // Params whose .grad is exactly `gs` (backward of sum(p * g) from zero grads).
    let with_grads = || {
        let ps = init_params();
        run_grads(&ps, &gs);
        ps
    };
    for (nt, r) in norm_types.iter().zip(py["norm"].as_array().unwrap()) {
        let ps = with_grads();
        let total = clip_grad_norm(&ps, 0.7, *nt).unwrap().double_value(&[]);
        let want = r["total"].as_f64().unwrap();
        assert!(
            (total - want).abs() <= 1e-6 * want,
            "norm {nt}: {total} vs {want}"
        );
        let ours = Value::List(ps.iter().map(|p| Value::Tensor(p.grad())).collect());
        assert_close(
            &ours,
            &from_json(&r["grads"]),
            1e-6,
            &format!("clipped grads, norm {nt}"),
        );
    }
    let ps = with_grads();
    clip_grad_value(&ps, 0.3).unwrap();
    let ours = Value::List(ps.iter().map(|p| Value::Tensor(p.grad())).collect());
    assert_close(&ours, &from_json(&py["value"]), 0.0, "clip_grad_value");
    assert!(clip_grad_value(&ps, -1.0).is_err());
}

/// Sets each param's `.grad` to `g` through backward of `sum(p * g)`.
fn run_grads(ps: &[Tensor], g: &[Tensor]) {
    let terms: Vec<Tensor> = ps
        .iter()
        .zip(g)
        .map(|(p, g)| (p * g).sum(Kind::Float))
        .collect();
    Tensor::stack(&terms, 0).sum(Kind::Float).backward();
}
