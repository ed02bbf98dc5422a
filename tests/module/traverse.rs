//! `#[lightning_module]` traversal, state_dict / load_state_dict, device moves and the
//! in-memory `load_from_checkpoint` round trip with overridden hparams.

use lightning_core::checkpoint_loader::checkpoint_value;
use lightning_core::layers::{BatchNorm, Sequential};
use lightning_core::prelude::*;
use lightning_core::traverse::StateError;
use lightning_core::{Error, HparamError, TensorKind};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// Input features.
    #[hparam(default = 4)]
    pub in_dim: i64,
    /// Hidden width.
    #[hparam(default = 8)]
    pub hidden: i64,
    /// Number of residual blocks.
    #[hparam(default = 2)]
    pub blocks: usize,
    #[hparam(default = 1e-3)]
    pub lr: f64,
}

#[lightning_module]
pub struct Block {
    fc: nn::Linear,
    #[state(rename = "norm")]
    bn: BatchNorm,
}

#[lightning_module]
pub struct Net {
    #[hparams]
    hp: NetConfig,
    fc1: nn::Linear,
    blocks: Vec<Block>,
    head: Option<Box<nn::Linear>>,
    #[state(buffer)]
    scale: Tensor,
    #[state(buffer, persistent = false)]
    cache: Tensor,
    #[state(skip)]
    #[allow(dead_code)]
    note: String,
}

impl LightningModule for Net {
    fn build(hp: &NetConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let blocks = (0..hp.blocks)
            .map(|i| {
                let p = vs / "blocks" / i;
                Block {
                    fc: nn::linear(&p / "fc", hp.hidden, hp.hidden, Default::default()),
                    bn: BatchNorm::new(&(&p / "norm"), 1, hp.hidden, Default::default()),
                }
            })
            .collect();
        Ok(Net {
            hp: hp.clone(),
            fc1: nn::linear(vs / "fc1", hp.in_dim, hp.hidden, Default::default()),
            blocks,
            head: Some(Box::new(nn::linear(
                vs / "head",
                hp.hidden,
                1,
                Default::default(),
            ))),
            scale: Tensor::ones([1], (Kind::Float, Device::Cpu)),
            cache: Tensor::zeros([3], (Kind::Float, Device::Cpu)),
            note: String::new(),
        })
    }
}

fn build(hp: &NetConfig) -> Net {
    let vs = nn::VarStore::new(Device::Cpu);
    Net::build(hp, &vs.root()).unwrap()
}

fn defaults() -> NetConfig {
    <NetConfig as Hyperparameters>::from_value(&Value::dict()).unwrap()
}

#[test]
fn names_follow_declaration_order_and_attributes() {
    let net = build(&defaults());
    let mut seen = vec![];
    net.visit("", &mut |n, _, k| seen.push((n.to_owned(), k)));
    let p = TensorKind::Parameter;
    let b = TensorKind::Buffer { persistent: true };
    // PyTorch's order: the module's own tensors (parameters, then buffers) before its children.
    let expected = vec![
        ("scale", b),
        ("cache", TensorKind::Buffer { persistent: false }),
        ("fc1.weight", p),
        ("fc1.bias", p),
        ("blocks.0.fc.weight", p),
        ("blocks.0.fc.bias", p),
        ("blocks.0.norm.weight", p),
        ("blocks.0.norm.bias", p),
        ("blocks.0.norm.running_mean", b),
        ("blocks.0.norm.running_var", b),
        ("blocks.0.norm.num_batches_tracked", b),
        ("blocks.1.fc.weight", p),
        ("blocks.1.fc.bias", p),
        ("blocks.1.norm.weight", p),
        ("blocks.1.norm.bias", p),
        ("blocks.1.norm.running_mean", b),
        ("blocks.1.norm.running_var", b),
        ("blocks.1.norm.num_batches_tracked", b),
        ("head.weight", p),
        ("head.bias", p),
    ];
    let expected: Vec<(String, TensorKind)> = expected
        .into_iter()
        .map(|(n, k)| (n.to_owned(), k))
        .collect();
    assert_eq!(seen, expected);
    // The non-persistent buffer is not in the state_dict but is a named buffer.
    let sd = net.state_dict();
    assert_eq!(sd.len(), expected.len() - 1);
    assert!(!sd.contains_key("cache"));
    assert!(net.named_buffers().iter().any(|(n, _)| n == "cache"));
    assert_eq!(net.named_parameters().len(), 12);
    assert_eq!(
        net.num_parameters(),
        4 * 8 + 8 + 2 * (8 * 8 + 8 + 8 + 8) + 8 + 1
    );
    assert_eq!(net.hparams_value().get("hidden"), Some(&Value::Int(8)));
}

#[test]
fn state_dict_shares_storage_but_is_detached() {
    let net = build(&defaults());
    let sd = net.state_dict();
    let w = &sd["fc1.weight"];
    assert!(!w.requires_grad());
    assert_eq!(w.data_ptr(), net.fc1.ws.data_ptr());
}

#[test]
fn in_memory_round_trip_with_overridden_hparams() {
    let src = build(&defaults());
    let ckpt = checkpoint_value(&src);
    // Override an hparam that does not change shapes: typed and by string, in call order.
    let (dst, report) = Net::loader_from_value(ckpt.clone())
        .hparams(|hp| hp.lr = 0.5)
        .set("lr", "0.25")
        .load_with_report()
        .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(dst.hp.lr, 0.25);
    for (k, t) in src.state_dict() {
        assert!(t.equal(&dst.state_dict()[&k]), "{k} differs");
    }
    // A different width: strict loading fails naming the mismatched keys and copies nothing.
    let err = Net::loader_from_value(ckpt.clone())
        .set("hidden", "16")
        .load()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("size or dtype mismatch for fc1.weight"),
        "{msg}"
    );
    // Non-strict: a report, and the matching tensors are copied.
    let (_, report) = Net::loader_from_value(ckpt.clone())
        .set("blocks", "1")
        .strict(false)
        .load_with_report()
        .unwrap();
    assert!(report.missing.is_empty());
    assert_eq!(report.unexpected.len(), 7);
    assert!(report.unexpected.iter().all(|k| k.starts_with("blocks.1.")));
    // A bad string override names the field and lists the valid ones.
    let err = Net::loader_from_value(ckpt)
        .set("hiden", "3")
        .load()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Hparams(HparamError::Unknown { .. })));
    assert!(
        err.to_string()
            .contains("valid names: in_dim, hidden, blocks, lr"),
        "{err}"
    );
}

#[test]
fn strict_load_reports_missing_and_unexpected_like_pytorch() {
    let mut net = build(&defaults());
    let before = net.fc1.ws.copy();
    let mut sd = net.state_dict();
    sd.shift_remove("head.bias");
    sd.insert(
        "extra".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    );
    sd.insert(
        "fc1.weight".into(),
        Tensor::zeros([8, 4], (Kind::Double, Device::Cpu)),
    );
    let err = net.load_state_dict(&sd, true).unwrap_err();
    let StateError::Mismatch(report) = &err;
    assert_eq!(report.missing, ["head.bias"]);
    assert_eq!(report.unexpected, ["extra"]);
    assert_eq!(report.mismatched.len(), 1);
    let msg = err.to_string();
    assert!(
        msg.contains("Missing key(s) in state_dict: \"head.bias\"."),
        "{msg}"
    );
    assert!(
        msg.contains("Unexpected key(s) in state_dict: \"extra\"."),
        "{msg}"
    );
    assert!(msg.contains("dtype Double"), "{msg}");
    assert!(
        net.fc1.ws.equal(&before),
        "strict failure must not copy anything"
    );
    sd.insert(
        "fc1.bias".into(),
        Tensor::full([8], 7.0, (Kind::Float, Device::Cpu)),
    );
    // Non-strict still refuses a shape mismatch (PyTorch raises on sizes whatever `strict`
    // says), lists only it, and copies nothing.
    let before_bias = net.fc1.bs.as_ref().unwrap().copy();
    sd.insert(
        "fc1.weight".into(),
        Tensor::zeros([8, 5], (Kind::Float, Device::Cpu)),
    );
    let StateError::Mismatch(report) = net.load_state_dict(&sd, false).unwrap_err();
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(report.mismatched.len(), 1);
    assert!(report
        .to_string()
        .contains("size or dtype mismatch for fc1.weight"));
    assert!(report.mismatched[0].2.contains("[8, 5]"), "{report}");
    assert!(net.fc1.bs.as_ref().unwrap().equal(&before_bias));
    // Without the mismatch, non-strict copies what matches and reports the rest.
    sd.shift_remove("fc1.weight");
    let report = net.load_state_dict(&sd, false).unwrap();
    assert_eq!(report.missing, ["fc1.weight", "head.bias"]);
    assert!(net.fc1.ws.equal(&before));
    assert_eq!(net.fc1.bs.as_ref().unwrap().double_value(&[3]), 7.0);
    assert!(net.fc1.ws.requires_grad(), "loading keeps requires_grad");
}

#[test]
fn batchnorm_counts_training_batches_and_sequential_names_by_position() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let seq = Sequential::new()
        .add(nn::linear(&root / 0, 3, 4, Default::default()))
        .add_fn(|x| x.relu())
        .add(BatchNorm::new(&(&root / 2), 1, 4, Default::default()));
    let keys: Vec<String> = seq.state_dict().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "0.weight",
            "0.bias",
            "2.weight",
            "2.bias",
            "2.running_mean",
            "2.running_var",
            "2.num_batches_tracked"
        ]
    );
    let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
    let _ = seq.forward_t(&x, true);
    let _ = seq.forward_t(&x, true);
    let _ = seq.forward_t(&x, false);
    let n = &seq.state_dict()["2.num_batches_tracked"];
    assert_eq!(n.kind(), Kind::Int64);
    assert_eq!(n.int64_value(&[]), 2);
}

#[test]
fn move_to_keeps_tensor_identity_and_zero_grad_clears() {
    let mut net = build(&defaults());
    let handle = net.parameters();
    net.move_to(Device::Cpu);
    assert_eq!(handle[0].data_ptr(), net.fc1.ws.data_ptr());
    let x = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
    net.fc1.ws.matmul(&x.tr()).sum(Kind::Float).backward();
    assert!(net.fc1.ws.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    net.zero_grad();
    assert_eq!(
        net.fc1.ws.grad().abs().sum(Kind::Float).double_value(&[]),
        0.0
    );
    if tch::Cuda::is_available() {
        net.move_to(Device::Cuda(0));
        assert_eq!(handle[0].device(), Device::Cuda(0));
    } else {
        println!("skipping the CUDA part of move_to: no CUDA device");
    }
}

#[test]
fn load_from_checkpoint_file_with_hparams_file_and_overrides_in_precedence_order() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt_path = dir.path().join("model.ckpt");
    let src = build(&NetConfig {
        lr: 0.1,
        ..defaults()
    });
    lightning_core::checkpoint::save(&ckpt_path, &checkpoint_value(&src)).unwrap();

    // Saved hparams win over defaults.
    let m = Net::load_from_checkpoint(&ckpt_path).unwrap();
    assert_eq!(m.hp.lr, 0.1);
    for (k, t) in src.state_dict() {
        assert!(t.equal(&m.state_dict()[&k]), "{k} differs");
    }

    // The hparams file wins over saved values; explicit overrides win over the file, in order.
    let yaml = dir.path().join("hparams.yaml");
    std::fs::write(&yaml, "lr: 0.2\nblocks: 2\n").unwrap();
    let m = Net::loader(&ckpt_path).hparams_file(&yaml).load().unwrap();
    assert_eq!(m.hp.lr, 0.2);
    let m = Net::loader(&ckpt_path)
        .set("lr", "0.3")
        .hparams_file(&yaml)
        .hparams(|hp| hp.lr = 0.4)
        .load()
        .unwrap();
    assert_eq!(m.hp.lr, 0.4);
    let json = dir.path().join("hparams.json");
    std::fs::write(&json, r#"{"lr": 0.5}"#).unwrap();
    assert_eq!(
        Net::loader(&ckpt_path)
            .hparams_file(&json)
            .load()
            .unwrap()
            .hp
            .lr,
        0.5
    );

    // Bad inputs are errors that say what and where.
    std::fs::write(&yaml, "lr: [1, 2\n").unwrap();
    let e = Net::loader(&ckpt_path)
        .hparams_file(&yaml)
        .load()
        .err()
        .unwrap();
    assert!(e.to_string().contains("hparams.yaml: invalid YAML"), "{e}");
    std::fs::write(&yaml, "lr: fast\n").unwrap();
    let e = Net::loader(&ckpt_path)
        .hparams_file(&yaml)
        .load()
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "hyperparameter `lr`: expected f64, found str \"fast\""
    );
    let e = Net::load_from_checkpoint(dir.path().join("nope.ckpt"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("nope.ckpt"), "{e}");
}

/// `#[derive]` written before `#[lightning_module]` still works (the helper attributes are
/// stripped before the derive sees the struct).
#[derive(Debug)]
#[lightning_module]
struct DeriveFirst {
    fc: nn::Linear,
    #[state(skip)]
    #[allow(dead_code)]
    calls: usize,
}

#[test]
fn derive_before_the_attribute_compiles() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = DeriveFirst {
        fc: nn::linear(vs.root() / "fc", 1, 1, Default::default()),
        calls: 0,
    };
    assert_eq!(m.state_dict().len(), 2);
    assert!(format!("{m:?}").contains("DeriveFirst"));
}

#[test]
fn tch_batchnorm_has_pytorchs_keys_and_accepts_the_counter_on_load() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut bn = nn::batch_norm2d(&vs.root() / "bn1", 3, Default::default());
    let sd = bn.state_dict();
    let keys: Vec<&String> = sd.keys().collect();
    assert_eq!(
        keys,
        [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked"
        ]
    );
    assert_eq!(sd["num_batches_tracked"].kind(), Kind::Int64);
    assert_eq!(bn.named_parameters().len(), 2);
    // A PyTorch state_dict (counter 7) loads strictly; the counter is dropped, the rest copied.
    let mut py = StateDict::new();
    for (k, t) in &sd {
        py.insert(k.clone(), t.ones_like());
    }
    py.insert("num_batches_tracked".into(), Tensor::from(7i64));
    let report = bn.load_state_dict(&py, true).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(bn.running_mean.double_value(&[0]), 1.0);
    assert_eq!(bn.state_dict()["num_batches_tracked"].int64_value(&[]), 0);
}

#[test]
fn model_summary_lists_submodules_with_types_and_counts() {
    let net = build(&defaults());
    let summary = lightning_core::trainer::model_summary(&net);
    let lines: Vec<&str> = summary.lines().collect();
    // fc1: 4*8+8; a block: Linear 8*8+8 and BatchNorm 8+8; head: 8+1. Tensors are not rows.
    assert_eq!(
        lines[0], "  | Name   | Type                | Params",
        "{summary}"
    );
    assert_eq!(lines[2], "0 | fc1    | Linear              | 40");
    assert_eq!(lines[3], "1 | blocks | Vec<Block>          | 176");
    assert_eq!(lines[4], "2 | head   | Option<Box<Linear>> | 9");
    assert_eq!(lines.len(), 10, "{summary}");
    assert_eq!(lines[6], "225       Trainable params");
    assert_eq!(lines[7], "0         Non-trainable params");
    assert_eq!(lines[8], "225       Total params");
    assert_eq!(lines[9], "0.001     Total estimated model params size (MB)");
}
