use lightning_core::hparams::NoHparams;
use lightning_core::prelude::*;

#[lightning_module]
struct Net {
    #[hparams]
    a: NoHparams,
    #[hparams]
    b: NoHparams,
    fc: tch::nn::Linear,
}

fn main() {}
