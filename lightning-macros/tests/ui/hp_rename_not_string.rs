use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(rename = hidden_size)]
    hidden: i64,
}

fn main() {}
