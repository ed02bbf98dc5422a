use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(default = "x", range = 0..3)]
    name: String,
}

fn main() {}
