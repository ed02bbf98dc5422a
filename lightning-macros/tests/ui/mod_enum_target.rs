use lightning_core::prelude::*;

#[lightning_module]
enum Net {
    A(tch::nn::Linear),
}

fn main() {}
