//! Our `.ckpt` files against Python torch 2.11 / Lightning 2.6.6, both directions.

use crate::common;

use common::{assert_same, describe, python, PY_LIT};
use lightning_core::checkpoint::{self, schema::Checkpoint};
use lightning_core::{Dict, Key, Value};
use tch::{Device, Kind, Tensor};

/// Every dtype, views sharing a storage, 0-dim, empty, strided, int and str keys, nesting.
fn rich_tree() -> Value {
    let base = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]) / 3.0;
    let mut sd = Dict::new();
    sd.insert("base".into(), base.shallow_clone().into());
    sd.insert("col".into(), base.select(1, 1).into());
    sd.insert("tr".into(), base.tr().into());
    sd.insert("scalar".into(), Tensor::from(-2.25f64).into());
    sd.insert(
        "empty".into(),
        Tensor::zeros([0, 2], (Kind::Float, Device::Cpu)).into(),
    );
    sd.insert(
        "nan".into(),
        Tensor::from_slice(&[f32::NAN, f32::INFINITY, 1.0]).into(),
    );
    for kind in [
        Kind::Double,
        Kind::Half,
        Kind::BFloat16,
        Kind::Int64,
        Kind::Int,
        Kind::Int16,
        Kind::Int8,
        Kind::Uint8,
        Kind::Bool,
    ] {
        let t = (Tensor::arange(6, (Kind::Int64, Device::Cpu)) - 2).to_kind(kind);
        sd.insert(Key::Str(format!("k_{kind:?}")), t.into());
    }
    let mut state = Dict::new();
    state.insert(Key::Int(0), {
        let mut d = Value::dict();
        d.insert("step", Tensor::from(3.0f32));
        d.insert(
            "exp_avg",
            Tensor::full([2, 2], 0.5, (Kind::Float, Device::Cpu)),
        );
        d
    });
    let mut top = Value::dict();
    top.insert("epoch", 7i64);
    top.insert("global_step", (1i64 << 33) + 5);
    top.insert("neg", -123456789012i64);
    top.insert("pytorch-lightning_version", "2.6.6");
    top.insert("state_dict", Value::OrderedDict(sd));
    top.insert("state", Value::Dict(state));
    top.insert(
        "nested",
        Value::List(vec![
            Value::Tuple(vec![
                1i64.into(),
                "two".into(),
                3.5.into(),
                Value::None,
                true.into(),
            ]),
            Value::List(vec![]),
            Value::Tuple(vec![]),
            Value::dict(),
        ]),
    );
    top.insert("text", "ünïcødé ✓");
    top
}

#[test]
fn rust_written_file_loads_in_torch_weights_only_with_equal_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rust.ckpt");
    let v = rich_tree();
    checkpoint::save(&p, &v).unwrap();
    let script = r#"
c = torch.load(sys.argv[1], weights_only=True)
sd = c["state_dict"]
shared = (sd["col"].untyped_storage().data_ptr() == sd["base"].untyped_storage().data_ptr()
          == sd["tr"].untyped_storage().data_ptr())
print(json.dumps({"desc": desc(c), "shared": shared, "col_stride": list(sd["col"].stride())}))
"#;
    let Some(out) = python(script, &[p.to_str().unwrap()]) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_same(&describe(&v), &got["desc"]);
    assert_eq!(got["shared"], true, "views must share one storage in torch");
    assert_eq!(got["col_stride"], serde_json::json!([4]));
}

#[test]
fn lightning_checkpoint_reads_in_rust_and_our_rewrite_resumes_in_lightning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = format!(
        "{PY_LIT}\nL.seed_everything(0)\ntr, cb = trainer(sys.argv[1], 3)\ntr.fit(Lit(), loaders(), loaders())\n\
         print(json.dumps(desc(torch.load(cb.last_model_path, weights_only=True))))"
    );
    let Some(py) = python(&train, &[out.to_str().unwrap()]) else {
        return;
    };
    let py_desc: serde_json::Value = serde_json::from_str(py.lines().last().unwrap()).unwrap();
    let last = out.join("last.ckpt");
    let v = checkpoint::load(&last).unwrap();
    assert_same(&describe(&v), &py_desc); // Rust reads exactly what torch.load reads
    checkpoint::verify(&last).unwrap();

    let c = Checkpoint::from_value(&v).unwrap();
    assert_eq!((c.epoch, c.global_step), (2, 12));
    let hp = c.hyper_parameters.as_ref().unwrap();
    assert_eq!(hp.get(&Key::from("hidden")), Some(&Value::Int(8)));
    assert_eq!(
        hp.get(&Key::from("layers")),
        Some(&Value::Tuple(vec![8i64.into(), 8i64.into()]))
    );
    assert_eq!(c.hparams_name.as_deref(), Some("kwargs"));
    let opt = &c.optimizer_states.as_ref().unwrap()[0];
    assert_eq!(
        opt.get_path("state.0.exp_avg")
            .unwrap()
            .as_tensor()
            .unwrap()
            .size(),
        [8, 4]
    );
    assert_eq!(
        opt.get_path("param_groups.0.params"),
        Some(&Value::from(vec![0i64, 1, 2, 3]))
    );
    let sched = &c.lr_schedulers.as_ref().unwrap()[0];
    assert_eq!(sched.get("step_size"), Some(&Value::Int(2)));
    assert_eq!(
        sched.get("_last_lr"),
        Some(&Value::List(vec![Value::Float(0.005)]))
    );
    let cbs = c.callbacks.as_ref().unwrap();
    let key = checkpoint::schema::model_checkpoint_state_key(Some("val_loss"), "min", 0, 1, None);
    let mc = cbs
        .get(&Key::Str(key))
        .expect("ModelCheckpoint state under Lightning's key");
    assert!(mc.get("best_model_score").unwrap().as_tensor().is_some());
    assert_eq!(
        v.get_path("state_dict.counter")
            .unwrap()
            .as_tensor()
            .unwrap()
            .kind(),
        Kind::Int64
    );

    // Write it back with our writer; Lightning resumes from both files to the same weights.
    let ours = dir.path().join("ours.ckpt");
    checkpoint::save(&ours, &v).unwrap();
    let resume = format!(
        "{PY_LIT}\nres = []\nfor ck in sys.argv[1:3]:\n    L.seed_everything(0)\n    \
         tr, cb = trainer(sys.argv[3] + ck[-9:-5], 4)\n    m = Lit()\n    \
         tr.fit(m, loaders(), loaders(), ckpt_path=ck)\n    res.append((tr.global_step, m.net[0].weight.sum().item()))\n\
         print(json.dumps(res))"
    );
    let Some(py) = python(
        &resume,
        &[
            last.to_str().unwrap(),
            ours.to_str().unwrap(),
            dir.path().join("resume").to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let res: Vec<(i64, f64)> = serde_json::from_str(py.lines().last().unwrap()).unwrap();
    assert_eq!(res[0].0, 16, "resumed for one more epoch of 4 steps");
    assert_eq!(
        res[0], res[1],
        "resuming from our rewrite == resuming from Lightning's file"
    );
}

#[test]
fn python_load_from_checkpoint_of_a_rust_file_gives_rust_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rust_module.ckpt");
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(1);
    let (w0, b0) = (Tensor::randn([16, 4], opts), Tensor::randn([16], opts));
    let (w2, b2) = (Tensor::randn([1, 16], opts), Tensor::randn([1], opts));
    let mut sd = Dict::new();
    for (k, t) in [
        ("net.0.weight", &w0),
        ("net.0.bias", &b0),
        ("net.2.weight", &w2),
        ("net.2.bias", &b2),
    ] {
        sd.insert(k.into(), t.shallow_clone().into());
    }
    sd.insert("counter".into(), Tensor::from_slice(&[4i64, 5, 6]).into());
    let mut hp = Dict::new();
    hp.insert("in_dim".into(), 4i64.into());
    hp.insert("hidden".into(), 16i64.into());
    hp.insert("lr".into(), 0.02.into());
    hp.insert("name".into(), "from-rust".into());
    hp.insert(
        "layers".into(),
        Value::Tuple(vec![16i64.into(), 16i64.into()]),
    );
    let ck = Checkpoint {
        epoch: 1,
        global_step: 8,
        state_dict: sd,
        hparams_name: Some("kwargs".into()),
        hyper_parameters: Some(hp),
        ..Default::default()
    };
    checkpoint::save(&p, &ck.to_value()).unwrap();

    let probe = Tensor::linspace(-1.0, 1.0, 12, opts).reshape([3, 4]);
    let rust_out = (probe.matmul(&w0.tr()) + &b0).relu().matmul(&w2.tr()) + &b2;
    let script = format!(
        "{PY_LIT}\nm = Lit.load_from_checkpoint(sys.argv[1])\nm.eval()\n\
         probe = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)\n\
         with torch.no_grad():\n    y = m(probe)\n\
         print(json.dumps({{'out': y.flatten().tolist(), 'hidden': m.hparams.hidden, \
         'name': m.hparams.name, 'counter': m.counter.tolist()}}))"
    );
    let Some(py) = python(&script, &[p.to_str().unwrap()]) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_str(py.lines().last().unwrap()).unwrap();
    assert_eq!(got["hidden"], 16);
    assert_eq!(got["name"], "from-rust");
    assert_eq!(got["counter"], serde_json::json!([4, 5, 6]));
    let py_out: Vec<f64> = serde_json::from_value(got["out"].clone()).unwrap();
    let ours = Vec::<f64>::try_from(&rust_out.to_kind(Kind::Double).view([-1])).unwrap();
    for (a, b) in py_out.iter().zip(&ours) {
        assert!((a - b).abs() < 1e-5, "python {py_out:?} vs rust {ours:?}");
    }
    assert_eq!(py_out.len(), 3);
}

#[test]
fn torch_files_with_protocol_4_parameters_and_views_read_in_rust() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import collections
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
obj = {
    "param": torch.nn.Parameter(torch.ones(2, 3)),
    "views": [base, base[1:, ::2], base.t()],
    "dtypes": {str(d): torch.arange(5).to(d) for d in
               [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int16,
                torch.int8, torch.uint8, torch.bool]},
    "sd": torch.nn.Linear(3, 2).state_dict(),
    "od": collections.OrderedDict([(1, "a"), (2, (3.5, None))]),
    "big": 2**62, "neg": -2**40, "empty": torch.zeros(0), "scalar": torch.tensor(1.25),
}
out = {}
for proto in (2, 4):
    p = f"{sys.argv[1]}/p{proto}.pt"
    torch.save(obj, p, pickle_protocol=proto)
    out[proto] = desc(torch.load(p, weights_only=(proto == 2)))  # ours reads both
print(json.dumps(out))
"#;
    let Some(py) = python(script, &[dir.path().to_str().unwrap()]) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_str(py.lines().last().unwrap()).unwrap();
    for proto in ["2", "4"] {
        let v = checkpoint::load(&dir.path().join(format!("p{proto}.pt"))).unwrap();
        assert_same(&describe(&v), &got[proto]);
        // Views of one storage share it after loading.
        let views = v.get("views").unwrap().as_seq().unwrap();
        let (a, b) = (views[0].as_tensor().unwrap(), views[1].as_tensor().unwrap());
        let _ = a.get(1).get(0).fill_(100.0);
        assert_eq!(b.double_value(&[0, 0]), 100.0, "protocol {proto}");
    }
}
