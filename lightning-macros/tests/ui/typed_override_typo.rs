use lightning_core::prelude::*;
use tch::nn;

#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(default = 8)]
    hidden: i64,
}

#[lightning_module]
struct Net {
    #[hparams]
    hp: Config,
    fc: nn::Linear,
}

impl LightningModule for Net {
    fn build(hp: &Config, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(Net { hp: hp.clone(), fc: nn::linear(vs / "fc", 2, hp.hidden, Default::default()) })
    }
}

fn main() {
    let _ = Net::loader("best.ckpt").hparams(|hp| hp.hiden = 16).load();
}
