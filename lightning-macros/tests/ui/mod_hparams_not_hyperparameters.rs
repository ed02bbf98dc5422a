use lightning_core::prelude::*;

#[lightning_module]
struct Net {
    #[hparams]
    hp: String,
    fc: tch::nn::Linear,
}

fn main() {}
