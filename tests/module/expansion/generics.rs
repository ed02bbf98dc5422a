//! Generic configs and modules: bounds are added only where fields need them.
use lightning_core::prelude::*;
use lightning_core::Traverse;
use tch::{nn, Device};

#[derive(Hyperparameters, Clone, Debug, PartialEq)]
pub struct Wrapper<T> {
    #[hparam(default = Vec::new())]
    pub items: Vec<T>,
    pub main: T,
}

#[lightning_module]
pub struct Pair<A, B: Traverse> {
    #[hparams]
    hp: Wrapper<i64>,
    left: A,
    right: Vec<B>,
}

#[test]
fn expands_and_runs() {
    let mut v = Value::dict();
    v.insert("main", 3i64);
    let w = <Wrapper<i64> as Hyperparameters>::from_value(&v).unwrap();
    assert_eq!(
        w,
        Wrapper {
            items: vec![],
            main: 3
        }
    );

    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let m = Pair {
        hp: w,
        left: nn::linear(&p / "left", 2, 2, Default::default()),
        right: vec![nn::linear(&p / "right" / 0, 2, 1, Default::default())],
    };
    let keys: Vec<String> = m.state_dict().keys().cloned().collect();
    assert_eq!(
        keys,
        ["left.weight", "left.bias", "right.0.weight", "right.0.bias"]
    );
    assert_eq!(m.hparams().main, 3);
}
