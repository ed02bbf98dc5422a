//! `#[derive(Hyperparameters)]` behaviour and property tests for the value tree's YAML/JSON
//! round trips and for string overrides (bad strings give errors, never panics).

use lightning_core::hparams::{self, apply_overrides, parse_override, HparamValue};
use lightning_core::prelude::*;
use lightning_core::{Dict, HparamError, Key};
use proptest::prelude::*;
use std::path::PathBuf;

/// Activation function, stored by name.
#[derive(Hyperparameters, Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Relu,
    #[hparam(rename = "gelu_tanh")]
    Gelu,
}

#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct Optim {
    /// A raw identifier is saved under its plain name.
    #[hparam(default = "adam")]
    pub r#type: String,
    /// Learning rate.
    #[hparam(default = 1e-3)]
    pub lr: f64,
    #[hparam(default = vec![0.9, 0.999])]
    pub betas: Vec<f64>,
}

#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct Config {
    /// Input width (required).
    pub in_dim: i64,
    #[hparam(default = 64)]
    pub hidden: u32,
    #[hparam(default = 3)]
    pub layers: u8,
    #[hparam(default = -1)]
    pub seed: i16,
    #[hparam(default = 0.5)]
    pub dropout: f32,
    #[hparam(default = true)]
    pub bias: bool,
    #[hparam(default = "mlp")]
    pub name: String,
    #[hparam(default = "data/train.csv")]
    pub data: PathBuf,
    #[hparam(default = None)]
    pub max_steps: Option<u64>,
    #[hparam(default = vec![])]
    pub widths: Vec<usize>,
    #[hparam(default = Act::Relu)]
    pub act: Act,
    #[hparam(rename = "batch")]
    #[hparam(default = 32)]
    pub batch_size: i32,
    /// Optimizer settings (nested).
    pub optim: Optim,
    #[hparam(skip, default = false)]
    pub verbose: bool,
}

fn from(v: &Value) -> Result<Config, HparamError> {
    <Config as Hyperparameters>::from_value(v)
}

fn minimal() -> Value {
    let mut v = Value::dict();
    v.insert("in_dim", 4i64);
    v
}

#[test]
fn partial_tree_takes_defaults_and_skip_is_not_saved() {
    let c = from(&minimal()).unwrap();
    assert_eq!(c.hidden, 64);
    assert_eq!(c.name, "mlp");
    assert_eq!(c.data, PathBuf::from("data/train.csv"));
    assert_eq!(c.optim.betas, vec![0.9, 0.999]);
    assert_eq!(c.act, Act::Relu);
    let v = Hyperparameters::to_value(&c);
    let keys: Vec<String> = v.as_dict().unwrap().keys().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        [
            "in_dim",
            "hidden",
            "layers",
            "seed",
            "dropout",
            "bias",
            "name",
            "data",
            "max_steps",
            "widths",
            "act",
            "batch",
            "optim"
        ]
    );
    assert_eq!(v.get_path("optim.lr"), Some(&Value::Float(1e-3)));
    assert_eq!(v.get_path("optim.type"), Some(&Value::Str("adam".into())));
    assert_eq!(v.get("act"), Some(&Value::Str("Relu".into())));
    assert_eq!(from(&v).unwrap(), c);
}

#[test]
fn missing_required_field_is_named() {
    let e = from(&Value::dict()).unwrap_err();
    assert_eq!(
        e,
        HparamError::Missing {
            field: "in_dim".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "missing hyperparameter `in_dim` (it has no default)"
    );
}

#[test]
fn wrong_types_and_unknown_keys_name_the_field() {
    let mut v = minimal();
    v.insert("optim", {
        let mut o = Value::dict();
        o.insert("lr", "fast");
        o
    });
    let e = from(&v).unwrap_err();
    assert_eq!(
        e.to_string(),
        "hyperparameter `optim.lr`: expected f64, found str \"fast\""
    );
    let mut v = minimal();
    v.insert("act", "tanh");
    let e = from(&v).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected one of \"Relu\", \"gelu_tanh\""),
        "{e}"
    );
    let mut v = minimal();
    v.insert("hiden", 3i64);
    assert!(
        matches!(from(&v).unwrap_err(), HparamError::Unknown { field, .. } if field == "hiden")
    );
}

#[test]
fn string_overrides_parse_to_the_field_type_with_dotted_keys() {
    let mut c = from(&minimal()).unwrap();
    apply_overrides(
        &mut c,
        &[
            "hidden=128",
            "optim.lr=3e-4",
            "optim.betas=[0.5, 0.6]",
            "max_steps=100",
            "act=gelu_tanh",
            "batch=8",
            "verbose=true",
            "widths=1,2,3",
            "data=/tmp/x",
        ],
    )
    .unwrap();
    assert_eq!(c.hidden, 128);
    assert_eq!(c.optim.lr, 3e-4);
    assert_eq!(c.optim.betas, vec![0.5, 0.6]);
    assert_eq!(c.max_steps, Some(100));
    assert_eq!(c.act, Act::Gelu);
    assert_eq!(c.batch_size, 8);
    assert!(c.verbose);
    assert_eq!(c.widths, vec![1, 2, 3]);
    c.set_str("max_steps", "None").unwrap();
    assert_eq!(c.max_steps, None);
    c.set_str("optim", "{lr: 0.1}").unwrap();
    assert_eq!(
        c.optim,
        Optim {
            r#type: "adam".into(),
            lr: 0.1,
            betas: vec![0.9, 0.999]
        }
    );

    let e = c.set_str("hidden", "-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hyperparameter `hidden`: cannot parse \"-1\" as u32"
    );
    let e = c.set_str("optim.lrr", "1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown hyperparameter `optim.lrr`; valid names: optim.type, optim.lr, optim.betas"
    );
    let e = c.set_str("hiden", "1").unwrap_err();
    let HparamError::Unknown { valid, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        valid.contains(&"optim.lr".to_owned()) && valid.contains(&"batch".to_owned()),
        "{e}"
    );
    assert!(c.set_str("hidden.x", "1").is_err());
    assert_eq!(
        parse_override("novalue").unwrap_err(),
        HparamError::Syntax("novalue".into())
    );
}

#[test]
fn fields_list_dotted_names_types_docs_and_defaults() {
    let f = Config::fields();
    let names: Vec<&str> = f.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names[0], "in_dim");
    assert!(
        names.contains(&"optim.lr") && names.contains(&"optim.betas") && names.contains(&"batch")
    );
    assert_eq!(f[0].doc, "Input width (required).");
    assert_eq!(f[0].default, None);
    assert_eq!(f[0].ty, "i64");
    let lr = f.iter().find(|x| x.name == "optim.lr").unwrap();
    assert_eq!(
        (lr.doc, lr.default.as_deref()),
        ("Learning rate.", Some("1e-3"))
    );
    let w = f.iter().find(|x| x.name == "widths").unwrap();
    assert_eq!(w.ty, "Vec<usize>");
}

#[test]
fn help_lists_every_field_with_type_default_and_doc() {
    let text = hparams::help::<Config>();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), Config::fields().len());
    assert!(lines[0].starts_with("  in_dim <i64>"), "{text}");
    assert!(
        lines[0].ends_with("(required)  Input width (required)."),
        "{text}"
    );
    assert!(text.contains("optim.lr <f64>"), "{text}");
    assert!(text.contains("(default: 1e-3)  Learning rate."), "{text}");
}

#[test]
fn hparams_yaml_file_reads_back() {
    let c = from(&minimal()).unwrap();
    let text = hparams::to_yaml(&Hyperparameters::to_value(&c));
    assert!(text.contains("in_dim: 4"), "{text}");
    assert_eq!(from(&hparams::from_yaml(&text).unwrap()).unwrap(), c);
    let json = hparams::to_json(&Hyperparameters::to_value(&c));
    assert_eq!(from(&hparams::from_json(&json).unwrap()).unwrap(), c);
}

/// `hparams.yaml` as written here reads in Python's `yaml.safe_load` (what Lightning's
/// `load_hparams_from_yaml` uses) as the same Python values, and PyYAML's own dump reads back.
/// (Not floats below 1e-5 or from 1e16 in magnitude: see `hparams::to_yaml`.)
#[test]
fn hparams_yaml_reads_the_same_in_pyyaml() {
    let mut inner = Dict::new();
    inner.insert(
        Key::Int(3),
        Value::Tuple(vec![Value::Float(1.5), Value::None]),
    );
    inner.insert(Key::from("quoted"), Value::from("true"));
    let mut v = Value::dict();
    v.insert("lr", 1e-3);
    v.insert("small", 1e-5);
    v.insert("whole", 2.0);
    v.insert("nan", f64::NAN);
    v.insert("inf", f64::NEG_INFINITY);
    v.insert("hidden", 64i64);
    v.insert("name", "a: b\nc");
    v.insert("num_str", "1");
    v.insert("flag", false);
    v.insert("inner", Value::Dict(inner));
    v.insert("empty", Value::dict());
    let text = hparams::to_yaml(&v);
    let script = r#"
import sys, yaml, math
d = yaml.safe_load(sys.argv[1])
want = {"lr": 1e-3, "small": 1e-5, "whole": 2.0, "hidden": 64, "name": "a: b\nc",
        "num_str": "1", "flag": False, "inner": {3: [1.5, None], "quoted": "true"}, "empty": {}}
nan, inf = d.pop("nan"), d.pop("inf")
assert math.isnan(nan) and inf == -math.inf, (nan, inf)
assert d == want and list(d) == list(want), d
assert type(d["whole"]) is float and type(d["hidden"]) is int, d
print(yaml.safe_dump({"t": 1, "lr": 0.001, "l": [1, "x", None], 3: {"a": True}}, sort_keys=False))
"#;
    match lightning_testkit::run_python(script, &[&text]) {
        None => eprintln!("SKIP: no venv Python (run scripts/setup.sh); PyYAML check not run"),
        Some(Err(e)) => panic!("{e}\n{text}"),
        Some(Ok(out)) => {
            let back = hparams::from_yaml(&out).unwrap();
            assert_eq!(
                hparams::to_yaml(&back),
                "t: 1\nlr: 0.001\nl:\n- 1\n- x\n- null\n3:\n  a: true\n"
            );
        }
    }
}

/// Kind of residual block: variant names are accepted in any case.
#[derive(Hyperparameters, Clone, Copy, Debug, PartialEq)]
pub enum Block {
    Basic,
    Bottleneck,
}

fn even(n: &i64) -> Result<(), String> {
    if n % 2 == 0 {
        Ok(())
    } else {
        Err("must be even".into())
    }
}

/// Every field has a default: the derive implements `Default` with them.
#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct Sched {
    #[hparam(default = 0.1, range = 0.0..1.0)]
    pub gamma: f64,
}

#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct Ruled {
    #[hparam(default = 0.1, range = 0.0..=1.0)]
    pub dropout: f64,
    #[hparam(default = 2, validate = even)]
    pub channels: i64,
    #[hparam(default = vec![1, 2], range = 1..)]
    pub widths: Vec<i64>,
    #[hparam(default = Block::Basic)]
    pub block: Block,
    #[hparam(default = Sched::default())]
    pub sched: Sched,
}

#[test]
fn generated_default_uses_the_field_defaults() {
    let d = Ruled::default();
    assert_eq!((d.dropout, d.channels, d.block), (0.1, 2, Block::Basic));
    assert_eq!(d.widths, [1, 2]);
    assert_eq!(d.sched, Sched { gamma: 0.1 });
    assert_eq!(
        <Ruled as Hyperparameters>::from_value(&Value::dict()),
        Ok(d)
    );
    // Optim (all defaults) gets one too; Config (a required field) does not need one.
    assert_eq!(Optim::default().lr, 1e-3);
}

#[test]
fn rules_are_checked_on_load_overrides_and_validate() {
    let invalid = |e: HparamError| match e {
        HparamError::Invalid { field, value, rule } => (field, value, rule),
        other => panic!("expected Invalid, got {other:?}"),
    };
    // Loading (from_value): field, value and rule in the error.
    let mut v = Value::dict();
    v.insert("dropout", -0.5);
    let e = <Ruled as Hyperparameters>::from_value(&v).unwrap_err();
    assert_eq!(
        e.to_string(),
        "hyperparameter `dropout` = -0.5 is invalid: must be in 0.0..=1.0"
    );
    let mut v = Value::dict();
    v.insert("channels", 3i64);
    let (field, value, rule) = invalid(<Ruled as Hyperparameters>::from_value(&v).unwrap_err());
    assert_eq!((field.as_str(), value.as_str()), ("channels", "3"));
    assert_eq!(rule, "must be even (checked by `even`)");
    // String overrides: refused, and the field keeps its value.
    let mut hp = Ruled::default();
    let (field, value, _) = invalid(hp.set_str("dropout", "1.5").unwrap_err());
    assert_eq!((field.as_str(), value.as_str()), ("dropout", "1.5"));
    assert_eq!(hp.dropout, 0.1);
    assert!(hp.set_str("dropout", "NaN").is_err());
    let (field, value, _) = invalid(hp.set_str("widths", "[4, 0]").unwrap_err());
    assert_eq!((field.as_str(), value.as_str()), ("widths", "0"));
    // A nested config's rules, named with the dotted key.
    let (field, ..) = invalid(hp.set_str("sched.gamma", "1.0").unwrap_err());
    assert_eq!(field, "sched.gamma");
    let mut v = Value::dict();
    let mut sched = Value::dict();
    sched.insert("gamma", 2.0);
    v.insert("sched", sched);
    let (field, ..) = invalid(<Ruled as Hyperparameters>::from_value(&v).unwrap_err());
    assert_eq!(field, "sched.gamma");
    // Values set in code: `validate` reports them.
    hp.set_str("dropout", "0.25").unwrap();
    assert_eq!(hp.validate(), Ok(()));
    hp.sched.gamma = -1.0;
    assert_eq!(invalid(hp.validate().unwrap_err()).0, "sched.gamma");
}

#[test]
fn enum_variants_parse_in_any_case_and_save_canonically() {
    let mut hp = Ruled::default();
    hp.set_str("block", "BOTTLENECK").unwrap();
    assert_eq!(hp.block, Block::Bottleneck);
    assert_eq!(
        Hyperparameters::to_value(&hp).get("block"),
        Some(&Value::from("Bottleneck"))
    );
    let mut v = Value::dict();
    v.insert("block", "basic");
    assert_eq!(
        <Ruled as Hyperparameters>::from_value(&v).unwrap().block,
        Block::Basic
    );
    let e = hp.set_str("block", "wide").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hyperparameter `block`: cannot parse \"wide\" as one of \"Basic\", \"Bottleneck\" (in any case)"
    );
    // A renamed variant answers to its saved name, in any case.
    assert_eq!(Act::parse_str("GELU_TANH", "act"), Ok(Act::Gelu));
}

/// Value trees YAML can hold exactly: no tuples, tensors or OrderedDicts; finite floats.
fn tree(int_keys: bool) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::Float),
        ".*".prop_map(Value::Str),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        let key = if int_keys {
            prop_oneof![".*".prop_map(Key::Str), any::<i64>().prop_map(Key::Int)].boxed()
        } else {
            ".*".prop_map(Key::Str).boxed()
        };
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            prop::collection::vec((key, inner), 0..4)
                .prop_map(|kv| Value::Dict(kv.into_iter().collect::<Dict>())),
        ]
    })
}

proptest! {
    #[test]
    fn yaml_round_trips_value_trees(v in tree(true)) {
        let text = hparams::to_yaml(&v);
        prop_assert_eq!(hparams::from_yaml(&text).unwrap(), v, "{}", text);
    }

    #[test]
    fn json_round_trips_value_trees(v in tree(false)) {
        prop_assert_eq!(hparams::from_json(&hparams::to_json(&v)).unwrap(), v);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in ".*") {
        let _ = hparams::from_yaml(&s);
        let _ = hparams::from_json(&s);
        let _ = parse_override(&s);
        let mut c = from(&minimal()).unwrap();
        for f in Config::fields() {
            let _ = c.set_str(&f.name, &s);
        }
        let _ = c.set_str(&s, "1");
    }

    #[test]
    fn overrides_round_trip_through_strings(
        hidden in any::<u32>(), seed in any::<i16>(), lr in any::<f64>().prop_filter("finite", |x| x.is_finite()),
        steps in proptest::option::of(0..=i64::MAX as u64), widths in prop::collection::vec(0..=i64::MAX as usize, 0..5),
        name in "[^=]*",
    ) {
        let mut c = from(&minimal()).unwrap();
        let steps_s = steps.map_or("None".to_owned(), |s| s.to_string());
        let widths_s = format!("{widths:?}");
        apply_overrides(&mut c, &[
            &format!("hidden={hidden}"), &format!("seed={seed}"), &format!("optim.lr={lr}"),
            &format!("max_steps={steps_s}"), &format!("widths={widths_s}"),
        ]).unwrap();
        c.set_str("name", &name).unwrap();
        prop_assert_eq!((c.hidden, c.seed, c.optim.lr, c.max_steps, &c.widths, &c.name), (hidden, seed, lr, steps, &widths, &name));
        // And the whole config survives the value tree.
        prop_assert_eq!(from(&Hyperparameters::to_value(&c)).unwrap(), c);
    }

    // The value tree holds ints up to i64::MAX (as checkpoint pickles here do): larger u64s
    // are stored as floats and reading them back is a clear error, not a silent change.
    #[test]
    fn u64_above_i64_max_is_an_error_on_reload(x in (i64::MAX as u64 + 1)..=u64::MAX) {
        let v = HparamValue::to_value(&x);
        prop_assert!(matches!(v, Value::Float(_)));
        prop_assert!(<u64 as HparamValue>::from_value(&v, "f").is_err());
    }

    #[test]
    fn list_overrides_parse_every_u64_exactly(xs in prop::collection::vec(any::<u64>(), 0..5)) {
        prop_assert_eq!(Vec::<u64>::parse_str(&format!("{xs:?}"), "f").unwrap(), xs);
    }

    #[test]
    fn out_of_range_ints_are_errors(x in any::<i64>()) {
        let r = <u8 as HparamValue>::from_value(&Value::Int(x), "f");
        prop_assert_eq!(r.is_ok(), (0..=255).contains(&x));
        let r = <u8 as HparamValue>::parse_str(&x.to_string(), "f");
        prop_assert_eq!(r.is_ok(), (0..=255).contains(&x));
    }
}

/// A module whose config has rules: a bad value is an error before libtorch sees it.
#[lightning_module]
pub struct Dropper {
    #[hparams]
    hp: Ruled,
    fc: tch::nn::Linear,
}

impl LightningModule for Dropper {
    fn build(hp: &Ruled, vs: &tch::nn::Path) -> lightning_core::Result<Self> {
        Ok(Dropper {
            hp: hp.clone(),
            fc: tch::nn::linear(vs / "fc", 2, hp.channels, Default::default()),
        })
    }
}

#[test]
fn fit_and_typed_loader_overrides_refuse_a_broken_rule() {
    use lightning_core::checkpoint_loader::checkpoint_value;
    use lightning_core::data::DataModule;
    use lightning_core::trainer::Trainer;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let bad = Ruled {
        dropout: -0.5,
        ..Ruled::default()
    };
    let mut m = Dropper::build(&bad, &vs.root()).unwrap();
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    let e = t.fit(&mut m, &DataModule::new(), None).unwrap_err();
    assert!(
        matches!(e, Error::Hparams(HparamError::Invalid { ref field, .. }) if field == "dropout"),
        "{e}"
    );
    let good = Dropper::build(&Ruled::default(), &vs.root()).unwrap();
    let e = Dropper::loader_from_value(checkpoint_value(&good))
        .hparams(|hp| hp.channels = 5)
        .load()
        .err()
        .expect("channels = 5 is odd");
    assert!(e.to_string().contains("`channels` = 5 is invalid"), "{e}");
}

/// Fields of the types Python writes with their own classes: `set`, `bytes`, `torch.Size`.
#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct PyTypes {
    #[hparam(default = std::collections::BTreeSet::from(["b".to_owned(), "a".to_owned()]))]
    pub tags: std::collections::BTreeSet<String>,
    #[hparam(default = std::collections::HashSet::from([3]))]
    pub ids: std::collections::HashSet<i64>,
    #[hparam(default = vec![0, 255, 7])]
    pub blob: Vec<u8>,
    #[hparam(default = [1, 28, 28])]
    pub input_shape: [i64; 3],
    #[hparam(default = [0.9, 0.999])]
    pub betas: [f64; 2],
}

#[test]
fn sets_bytes_and_sizes_round_trip_as_python_writes_them() {
    let cfg = PyTypes::default();
    let v = Hyperparameters::to_value(&cfg);
    assert_eq!(
        v.get("tags"),
        Some(&Value::Set(vec![Value::from("a"), Value::from("b")]))
    );
    assert_eq!(v.get("blob"), Some(&Value::Bytes(vec![0, 255, 7])));
    assert_eq!(v.get("input_shape"), Some(&Value::Size(vec![1, 28, 28])));
    assert_eq!(
        v.get("betas"),
        Some(&Value::Tuple(vec![Value::Float(0.9), Value::Float(0.999)]))
    );
    assert_eq!(<PyTypes as Hyperparameters>::from_value(&v).unwrap(), cfg);
    // Lists (a YAML file) read too; a wrong length names the field.
    let mut m = v.clone();
    m.insert(
        "input_shape",
        Value::List(vec![Value::Int(3), Value::Int(4)]),
    );
    let err = <PyTypes as Hyperparameters>::from_value(&m)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("input_shape") && err.contains("3 x i64"),
        "{err}"
    );
    m.insert("blob", Value::ByteArray(vec![1, 2]));
    m.insert("input_shape", Value::List(vec![Value::Int(3); 3]));
    assert_eq!(
        <PyTypes as Hyperparameters>::from_value(&m).unwrap().blob,
        vec![1, 2]
    );
    // String overrides.
    let mut c = cfg.clone();
    apply_overrides(
        &mut c,
        &[
            "tags={x, y}",
            "input_shape=[3,32,32]",
            "ids=1,2,2",
            "blob=[9]",
        ],
    )
    .unwrap();
    assert_eq!(c.tags, ["x".to_owned(), "y".to_owned()].into());
    assert_eq!(c.input_shape, [3, 32, 32]);
    assert_eq!(c.ids, [1, 2].into());
    assert_eq!(c.blob, vec![9]);
    assert!(apply_overrides(&mut c, &["input_shape=1,2"]).is_err());
    assert!(apply_overrides(&mut c, &["blob=[256]"]).is_err());

    // Python reads the written file's values with their own types.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hp.ckpt");
    let mut ckpt = Value::dict();
    ckpt.insert("hyper_parameters", Hyperparameters::to_value(&cfg));
    lightning_core::checkpoint::save(&path, &ckpt).unwrap();
    let script = r#"
import sys, torch
hp = torch.load(sys.argv[1], weights_only=True)["hyper_parameters"]
assert hp["tags"] == {"a", "b"} and type(hp["tags"]) is set, hp
assert hp["ids"] == {3} and type(hp["ids"]) is set, hp
assert hp["blob"] == b"\x00\xff\x07" and type(hp["blob"]) is bytes, hp
assert hp["input_shape"] == torch.Size([1, 28, 28]) and type(hp["input_shape"]) is torch.Size, hp
assert hp["betas"] == (0.9, 0.999) and type(hp["betas"]) is tuple, hp
print("ok")
"#;
    match lightning_testkit::run_python(script, &[path.to_str().unwrap()]) {
        None => eprintln!("SKIP: no venv Python (run scripts/setup.sh); torch.load check not run"),
        Some(r) => assert_eq!(r.unwrap().trim(), "ok"),
    }
}

/// `torch.dtype` and `torch.device` fields, saved as the objects Python saves.
#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct Placement {
    #[hparam(default = hparams::TorchDtype(tch::Kind::BFloat16))]
    pub dtype: hparams::TorchDtype,
    #[hparam(default = hparams::TorchDevice(tch::Device::Cuda(1)))]
    pub device: hparams::TorchDevice,
    /// A plain string field still reads a dtype object (as its text).
    #[hparam(default = "torch.float32".to_owned())]
    pub name: String,
}

#[test]
fn dtype_and_device_fields_round_trip_as_torch_objects() {
    let cfg = Placement::default();
    let v = Hyperparameters::to_value(&cfg);
    assert_eq!(<Placement as Hyperparameters>::from_value(&v).unwrap(), cfg);
    let mut c = cfg.clone();
    apply_overrides(&mut c, &["dtype=float16", "device=cpu"]).unwrap();
    assert_eq!(c.dtype, hparams::TorchDtype(tch::Kind::Half));
    assert_eq!(c.device, hparams::TorchDevice(tch::Device::Cpu));
    assert!(apply_overrides(&mut c, &["dtype=float17"]).is_err());
    assert!(apply_overrides(&mut c, &["device=tpu"]).is_err());
    // hparams.yaml gets their text.
    assert!(hparams::to_yaml(&v).contains("dtype: torch.bfloat16"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hp.ckpt");
    let mut ckpt = Value::dict();
    ckpt.insert("hyper_parameters", v);
    lightning_core::checkpoint::save(&path, &ckpt).unwrap();
    // Python sees the objects, and a file Python writes reads back to the same config.
    let out = dir.path().join("py.ckpt");
    let script = r#"
import sys, torch
hp = torch.load(sys.argv[1], weights_only=True)["hyper_parameters"]
assert hp["dtype"] is torch.bfloat16, hp
assert hp["device"] == torch.device("cuda", 1) and type(hp["device"]) is torch.device, hp
torch.save({"hyper_parameters": {"dtype": torch.float16, "device": torch.device("cpu"),
                                 "name": torch.int64}}, sys.argv[2])
print("ok")
"#;
    match lightning_testkit::run_python(script, &[path.to_str().unwrap(), out.to_str().unwrap()]) {
        None => eprintln!("SKIP: no venv Python (run scripts/setup.sh); torch.load check not run"),
        Some(r) => {
            assert_eq!(r.unwrap().trim(), "ok");
            let back = lightning_core::checkpoint::load(&out).unwrap();
            let hp =
                <Placement as Hyperparameters>::from_value(back.get("hyper_parameters").unwrap())
                    .unwrap();
            assert_eq!(hp.dtype, hparams::TorchDtype(tch::Kind::Half));
            assert_eq!(hp.device, hparams::TorchDevice(tch::Device::Cpu));
            assert_eq!(hp.name, "torch.int64");
        }
    }
}
