use lightning_core::prelude::*;

#[lightning_module(strict)]
struct Net {
    fc: tch::nn::Linear,
}

fn main() {}
