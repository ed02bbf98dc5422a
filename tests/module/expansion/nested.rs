//! Nested modules, Option/Box/array fields, a module without `#[hparams]`, unit enums.
use lightning_core::hparams::NoHparams;
use lightning_core::prelude::*;
use tch::{nn, Device};

#[derive(Hyperparameters, Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    Batch,
    Layer,
}

#[derive(Hyperparameters, Clone, Debug)]
pub struct Config {
    #[hparam(default = Norm::Layer)]
    pub norm: Norm,
}

#[lightning_module]
struct Inner {
    fc: nn::Linear,
}

#[lightning_module]
struct Outer {
    pair: [Inner; 2],
    maybe: Option<Box<Inner>>,
    absent: Option<Inner>,
    #[state(skip)]
    _label: &'static str,
}

#[test]
fn expands_and_runs() {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let inner = |name: &str| Inner {
        fc: nn::linear(&p / name, 1, 1, Default::default()),
    };
    let m = Outer {
        pair: [inner("a"), inner("b")],
        maybe: Some(Box::new(inner("c"))),
        absent: None,
        _label: "x",
    };
    let keys: Vec<String> = m.state_dict().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "pair.0.fc.weight",
            "pair.0.fc.bias",
            "pair.1.fc.weight",
            "pair.1.fc.bias",
            "maybe.fc.weight",
            "maybe.fc.bias"
        ]
    );
    let _: &NoHparams = m.hparams();
    let c = <Config as Hyperparameters>::from_value(&Value::dict()).unwrap();
    assert_eq!(c.norm, Norm::Layer);
    assert_eq!(
        Hyperparameters::to_value(&c).get("norm"),
        Some(&Value::Str("Layer".into()))
    );
}
