use lightning_core::prelude::*;

#[lightning_module]
struct Net {
    fc: tch::nn::Linear,
    steps: usize,
}

fn main() {}
