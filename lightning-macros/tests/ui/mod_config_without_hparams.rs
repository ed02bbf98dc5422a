use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
pub struct Cfg {
    #[hparam(default = 8)]
    pub hidden: i64,
}

#[lightning_module]
struct Net {
    cfg: Cfg,
    fc: tch::nn::Linear,
}

fn main() {}
