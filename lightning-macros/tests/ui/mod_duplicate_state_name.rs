use lightning_core::prelude::*;

#[lightning_module]
struct Net {
    fc: tch::nn::Linear,
    #[state(rename = "fc")]
    head: tch::nn::Linear,
}

fn main() {}
