//! Visibility and other attributes on the struct and its fields are kept as written.
mod model {
    use lightning_core::prelude::*;

    // Every field has a default: `Default` is generated (a `derive(Default)` would conflict).
    #[derive(Hyperparameters, Clone, Debug)]
    pub struct Config {
        #[hparam(default = 2)]
        pub(crate) width: i64,
    }

    #[lightning_module]
    #[derive(Debug)]
    pub struct Net {
        #[hparams]
        pub hp: Config,
        /// A documented field.
        pub(crate) fc: tch::nn::Linear,
        #[allow(dead_code)]
        #[state(skip)]
        private: u8,
    }

    impl Net {
        pub fn new(vs: &tch::nn::Path) -> Self {
            Net {
                hp: Config { width: 2 },
                fc: tch::nn::linear(vs / "fc", 2, 2, Default::default()),
                private: 0,
            }
        }
    }
}

#[test]
fn expands_and_runs() {
    use lightning_core::prelude::*;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = model::Net::new(&vs.root());
    assert_eq!(net.hp.width, 2);
    assert_eq!(model::Config::default().width, 2);
    assert_eq!(net.fc.ws.size(), [2, 2]);
    assert_eq!(net.state_dict().len(), 2);
    println!("{net:?}");
}
