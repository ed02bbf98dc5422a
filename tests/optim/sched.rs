//! LR schedulers against PyTorch's lr sequences and state dicts, bit for bit (SGD with two
//! param groups).

use crate::support;

use lightning_core::optim::{
    Anneal, LrLambda, LrScheduler, OneCycle, Optimizer, Schedule, Scheduler, Sgd, SgdConfig,
};
use lightning_core::value::Value;
use serde_json::{json, Value as Json};
use support::{assert_close, from_json, python_json, to_json};
use tch::{Kind, Tensor};

const SCRIPT: &str = r#"
from torch.optim import lr_scheduler as L
inp = json.load(open(sys.argv[1]))
def fresh():
    ps = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    return torch.optim.SGD([{"params": [ps[0]], "lr": 0.1}, {"params": [ps[1]], "lr": 0.05}], momentum=0.9)
def build(opt, spec):
    if spec["cls"] == "SWALR":
        return torch.optim.swa_utils.SWALR(opt, **spec["kw"])
    if spec["cls"] == "SequentialLR":
        subs = [build(opt, s) for s in spec["schedulers"]]
        return L.SequentialLR(opt, subs, spec["milestones"])
    kw = dict(spec.get("kw", {}))
    if "lambda" in spec:
        kw["lr_lambda"] = eval(spec["lambda"])
    return getattr(L, spec["cls"])(opt, **kw)
def run(spec, steps, ours):
    opt = fresh()
    s = build(opt, spec)
    lrs, moms, state = [s.get_last_lr()], [[g["momentum"] for g in opt.param_groups]], None
    for i in range(steps + 1):
        if i == steps:
            state = s.state_dict()
        opt.step()
        s.step()
        lrs.append(s.get_last_lr())
        moms.append([g["momentum"] for g in opt.param_groups])
    # Python loads our state into a fresh scheduler and steps once.
    opt = fresh()
    s2 = build(opt, spec)
    s2.load_state_dict(dec(ours))
    # As on resume, the optimizer's state (its lrs) is restored too.
    for g, lr in zip(opt.param_groups, s2.get_last_lr()):
        g["lr"] = lr
    opt.step()
    s2.step()
    return {"lrs": lrs, "moms": moms, "state": enc(state), "after_load": s2.get_last_lr()}
print(json.dumps([run(c["spec"], inp["steps"], c["ours"]) for c in inp["cases"]]))
"#;

const STEPS: usize = 12;

fn opt() -> Sgd {
    let p = || Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    Sgd::with_groups(vec![
        (
            vec![p()],
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                ..Default::default()
            },
        ),
        (
            vec![p()],
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                ..Default::default()
            },
        ),
    ])
    .unwrap()
}

/// Bit-for-bit equal lr (or momentum) lists.
fn equal(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (x, y) in a.iter().zip(b) {
        assert!(x == y, "{what}: {a:?} vs {b:?}");
    }
}

fn floats(j: &Json) -> Vec<f64> {
    j.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// One schedule's parity case: its name, ours, torch's spec, whether states are compared.
struct Case {
    name: &'static str,
    schedule: Schedule,
    spec: Json,
    compare_state: bool,
}

fn case(name: &'static str, schedule: Schedule, spec: Json, compare_state: bool) -> Case {
    Case {
        name,
        schedule,
        spec,
        compare_state,
    }
}

/// Ours: the lr and momentum sequences, and the state after STEPS steps.
type Ours = (Vec<Vec<f64>>, Vec<Vec<f64>>, Value);

fn ours(schedule: &Schedule) -> Ours {
    let mut o = opt();
    let mut s = Scheduler::new(&mut o, schedule.clone()).unwrap();
    let mut lrs = vec![s.last_lr()];
    let mut moms = vec![vec![o.momentum(0).unwrap(), o.momentum(1).unwrap()]];
    let mut state_at = None;
    for i in 0..=STEPS {
        if i == STEPS {
            state_at = Some(s.state_dict());
        }
        s.step(&mut o);
        lrs.push(s.last_lr());
        moms.push(vec![o.momentum(0).unwrap(), o.momentum(1).unwrap()]);
    }
    (lrs, moms, state_at.unwrap())
}

/// Ours against torch's run of the same case (one Python run serves every case).
fn compare(c: Case, (lrs, moms, ours): &Ours, py: &Json) {
    let name = c.name;
    let py_lrs = py["lrs"].as_array().unwrap();
    assert_eq!(py_lrs.len(), lrs.len());
    for (i, (a, b)) in lrs.iter().zip(py_lrs).enumerate() {
        equal(a, &floats(b), &format!("{name} lr at step {i}"));
    }
    for (i, (a, b)) in moms.iter().zip(py["moms"].as_array().unwrap()).enumerate() {
        equal(a, &floats(b), &format!("{name} momentum at step {i}"));
    }
    let py_state = from_json(&py["state"]);
    if c.compare_state {
        // Exact, except SequentialLR's sub-scheduler states: ours are rebuilt from the closed
        // form (torch keeps each sub's last lr as it left it; they feed no later lr).
        let tol = if name == "SequentialLR" { 1e-9 } else { 0.0 };
        assert_close(ours, &py_state, tol, &format!("{name} state_dict"));
    }
    // Python loaded our state and stepped: the same lr as our next step.
    equal(
        &floats(&py["after_load"]),
        &lrs[STEPS + 1],
        &format!("{name}: python continued from our state"),
    );
    // We load Python's state and step: the same lr as Python's next step.
    let mut o2 = opt();
    let mut s2 = Scheduler::new(&mut o2, c.schedule).unwrap();
    s2.load_state_dict(&py_state).unwrap();
    for (g, lr) in floats(&py_lrs[STEPS]).into_iter().enumerate() {
        o2.set_lr(g, lr);
    }
    equal(
        &s2.last_lr(),
        &floats(&py_lrs[STEPS]),
        &format!("{name}: loaded last_lr"),
    );
    s2.step(&mut o2);
    equal(
        &o2.lrs(),
        &floats(&py_lrs[STEPS + 1]),
        &format!("{name}: continued from python's state"),
    );
}

/// Every schedule against torch 2.11: the lr (and momentum) after every step and the state
/// dict bit for bit, and each side continuing from the other's state. One Python run.
#[test]
fn schedules_equal_torchs() {
    let cases = cases();
    let runs: Vec<Ours> = cases.iter().map(|c| ours(&c.schedule)).collect();
    let input: Vec<Json> = cases
        .iter()
        .zip(&runs)
        .map(|(c, (_, _, state))| json!({"spec": c.spec, "ours": to_json(state)}))
        .collect();
    let Some(py) = python_json(SCRIPT, &json!({"steps": STEPS, "cases": input})) else {
        return;
    };
    let py = py.as_array().unwrap();
    assert_eq!(py.len(), cases.len());
    for ((c, run), p) in cases.into_iter().zip(&runs).zip(py) {
        compare(c, run, p);
    }
}

/// The parity cases, one per schedule.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    {
        v.push(case(
            "StepLR",
            Schedule::Step {
                step_size: 3,
                gamma: 0.5,
            },
            json!({"cls": "StepLR", "kw": {"step_size": 3, "gamma": 0.5}}),
            true,
        ));
    }
    {
        v.push(case(
            "MultiStepLR",
            Schedule::MultiStep {
                milestones: vec![2, 5, 5, 9],
                gamma: 0.3,
            },
            json!({"cls": "MultiStepLR", "kw": {"milestones": [2, 5, 5, 9], "gamma": 0.3}}),
            true,
        ));
    }
    {
        v.push(case(
            "ExponentialLR",
            Schedule::Exponential { gamma: 0.8 },
            json!({"cls": "ExponentialLR", "kw": {"gamma": 0.8}}),
            true,
        ));
    }
    {
        v.push(case(
            "CosineAnnealingLR",
            Schedule::CosineAnnealing {
                t_max: 5,
                eta_min: 0.001,
            },
            json!({"cls": "CosineAnnealingLR", "kw": {"T_max": 5, "eta_min": 0.001}}),
            true,
        ));
    }
    {
        v.push(case(
        "LinearLR",
        Schedule::Linear {
            start_factor: 0.25,
            end_factor: 0.9,
            total_iters: 6,
        },
        json!({"cls": "LinearLR", "kw": {"start_factor": 0.25, "end_factor": 0.9, "total_iters": 6}}),
        true,
    ));
    }
    {
        let oc = OneCycle {
            cycle_momentum: false,
            ..OneCycle::new(1.0, 14)
        };
        v.push(case(
        "OneCycleLR",
        Schedule::OneCycle(oc),
        json!({"cls": "OneCycleLR", "kw": {"max_lr": 1.0, "total_steps": 14, "cycle_momentum": false}}),
        true,
    ));
    }
    {
        let oc = OneCycle {
            anneal_strategy: lightning_core::optim::Anneal::Linear,
            three_phase: true,
            ..OneCycle::new(0.5, 14)
        };
        // State not compared: torch keeps max_lr/momenta in the optimizer's groups.
        v.push(case(
        "OneCycleLR three-phase",
        Schedule::OneCycle(oc),
        json!({"cls": "OneCycleLR", "kw": {"max_lr": 0.5, "total_steps": 14, "anneal_strategy": "linear", "three_phase": true}}),
        false,
    ));
    }
    {
        v.push(case(
            "SequentialLR",
            Schedule::warmup_then(
                4,
                0.1,
                Schedule::CosineAnnealing {
                    t_max: 6,
                    eta_min: 0.0,
                },
            ),
            json!({"cls": "SequentialLR", "milestones": [4], "schedulers": [
            {"cls": "LinearLR", "kw": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 4}},
            {"cls": "CosineAnnealingLR", "kw": {"T_max": 6, "eta_min": 0.0}}]}),
            true,
        ));
    }
    {
        v.push(case(
            "LambdaLR",
            Schedule::Lambda(LrLambda::new(|e| 0.95f64.powf(e as f64))),
            json!({"cls": "LambdaLR", "lambda": "lambda e: 0.95 ** e"}),
            true,
        ));
    }
    {
        v.push(case(
            "MultiplicativeLR",
            Schedule::Multiplicative(LrLambda::new(|e| if e % 3 == 0 { 0.5 } else { 0.9 })),
            json!({"cls": "MultiplicativeLR", "lambda": "lambda e: 0.5 if e % 3 == 0 else 0.9"}),
            true,
        ));
    }
    for (name, swa_lrs, anneal_epochs, anneal) in [
        ("SWALR cos", vec![0.02, 0.01], 5, Anneal::Cos),
        ("SWALR linear", vec![0.3], 4, Anneal::Linear),
        ("SWALR no annealing", vec![0.02], 0, Anneal::Cos),
    ] {
        let swa_lr = match swa_lrs.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        v.push(case(
            name,
            Schedule::Swa {
                swa_lrs,
                anneal_epochs,
                anneal,
            },
            json!({"cls": "SWALR", "kw": {"swa_lr": swa_lr, "anneal_epochs": anneal_epochs,
                   "anneal_strategy": anneal.name()}}),
            true,
        ));
    }
    v
}

#[test]
fn bad_schedules_are_errors() {
    let mut o = opt();
    let e = Scheduler::new(
        &mut o,
        Schedule::Step {
            step_size: 0,
            gamma: 0.1,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("step_size must be > 0"), "{e}");
    let e = Scheduler::new(
        &mut o,
        Schedule::Sequential {
            schedules: vec![Schedule::Exponential { gamma: 0.9 }],
            milestones: vec![3],
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("one more than the number of milestone points"),
        "{e}"
    );
    let mut s = Scheduler::new(&mut o, Schedule::Exponential { gamma: 0.9 }).unwrap();
    let e = s.load_state_dict(&Value::Int(1)).unwrap_err().to_string();
    assert!(e.contains("expected a dict"), "{e}");
}

const PLATEAU_SCRIPT: &str = r#"
from torch.optim import lr_scheduler as L
inp = json.load(open(sys.argv[1]))
def run(kw, ours):
    def fresh():
        ps = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
        opt = torch.optim.SGD([{"params": [ps[0]], "lr": 0.1}, {"params": [ps[1]], "lr": 0.05}], momentum=0.9)
        return opt, L.ReduceLROnPlateau(opt, **kw)
    opt, s = fresh()
    half = len(inp["metrics"]) // 2
    lrs, state = [], None
    for i, m in enumerate(inp["metrics"]):
        if i == half:
            state = s.state_dict()
        s.step(m)
        lrs.append([g["lr"] for g in opt.param_groups])
    # Python loads our state taken halfway and continues.
    opt2, s2 = fresh()
    s2.load_state_dict(dec(ours))
    for g, lr in zip(opt2.param_groups, s2.get_last_lr()):
        g["lr"] = lr
    cont = []
    for m in inp["metrics"][half:]:
        s2.step(m)
        cont.append([g["lr"] for g in opt2.param_groups])
    # JSON has no infinities: mode_worse (always +-inf, recomputed from mode) goes as a string.
    state["mode_worse"] = repr(state["mode_worse"])
    return {"lrs": lrs, "state": enc(state), "cont": cont}
print(json.dumps([run(kw, ours) for kw, ours in inp["cases"]]))
"#;

/// `ReduceLROnPlateau` in each mode against torch: the lr after every step, the state dict,
/// and both directions of loading it halfway.
#[test]
fn reduce_lr_on_plateau() {
    use lightning_core::optim::{PlateauConfig, PlateauMode, ReduceLROnPlateau, ThresholdMode};
    let metrics = [
        1.0, 0.9, 0.9, 0.91, 0.95, 0.8, 0.8, 0.85, 0.7, 0.7, 0.7, 0.71, 0.72, 0.6, 0.6, 0.6,
    ];
    let cases = [
        (
            PlateauConfig {
                patience: 1,
                ..Default::default()
            },
            json!({"patience": 1}),
        ),
        (
            PlateauConfig {
                mode: PlateauMode::Max,
                threshold_mode: ThresholdMode::Abs,
                threshold: 0.01,
                patience: 0,
                factor: 0.5,
                ..Default::default()
            },
            json!({"mode": "max", "threshold_mode": "abs", "threshold": 0.01, "patience": 0, "factor": 0.5}),
        ),
        (
            PlateauConfig {
                patience: 0,
                cooldown: 2,
                factor: 0.3,
                min_lrs: vec![0.004, 0.002],
                ..Default::default()
            },
            json!({"patience": 0, "cooldown": 2, "factor": 0.3, "min_lr": [0.004, 0.002]}),
        ),
    ];
    // Ours first, every case; then one Python run for all of them.
    let half = metrics.len() / 2;
    let mut runs = Vec::new();
    for (cfg, kw) in &cases {
        let mut o = opt();
        let mut s = ReduceLROnPlateau::new(&o, cfg.clone()).unwrap();
        let (mut lrs, mut ours) = (vec![], None);
        for (i, &m) in metrics.iter().enumerate() {
            if i == half {
                ours = Some(s.state_dict());
            }
            s.step_with(&mut o, m);
            lrs.push(o.lrs());
        }
        let mut ours = ours.unwrap();
        assert_eq!(
            ours.get("mode_worse")
                .and_then(Value::as_f64)
                .map(f64::is_infinite),
            Some(true)
        );
        // JSON has no infinities (see the script).
        let worse = if kw["mode"] == "max" { "-inf" } else { "inf" };
        ours.insert("mode_worse", worse);
        runs.push((lrs, ours));
    }
    let input: Vec<Json> = cases
        .iter()
        .zip(&runs)
        .map(|((_, kw), (_, ours))| json!([kw, to_json(ours)]))
        .collect();
    let Some(py) = python_json(PLATEAU_SCRIPT, &json!({"metrics": metrics, "cases": input})) else {
        return;
    };
    for (((cfg, kw), (lrs, ours)), py) in cases.into_iter().zip(&runs).zip(py.as_array().unwrap()) {
        for (i, (a, b)) in lrs.iter().zip(py["lrs"].as_array().unwrap()).enumerate() {
            equal(a, &floats(b), &format!("{kw}: lr after step {i}"));
        }
        assert_close(
            ours,
            &from_json(&py["state"]),
            0.0,
            &format!("{kw}: state_dict"),
        );
        for (i, (a, b)) in lrs[half..]
            .iter()
            .zip(py["cont"].as_array().unwrap())
            .enumerate()
        {
            equal(
                a,
                &floats(b),
                &format!("{kw}: python continued from ours, step {i}"),
            );
        }
        // We load torch's halfway state and continue as it did.
        let mut o2 = opt();
        let mut s2 = ReduceLROnPlateau::new(&o2, cfg).unwrap();
        s2.load_state_dict(&from_json(&py["state"])).unwrap();
        for (g, lr) in s2.last_lr().into_iter().enumerate() {
            o2.set_lr(g, lr);
        }
        for (i, &m) in metrics[half..].iter().enumerate() {
            s2.step_with(&mut o2, m);
            equal(
                &o2.lrs(),
                &lrs[half + i],
                &format!("{kw}: ours continued from torch's, step {i}"),
            );
        }
    }
}
