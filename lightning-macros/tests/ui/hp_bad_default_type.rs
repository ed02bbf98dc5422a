use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(default = 1.5)]
    hidden: i64,
}

fn main() {}
