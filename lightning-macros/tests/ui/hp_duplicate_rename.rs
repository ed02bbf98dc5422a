use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    lr: f64,
    #[hparam(rename = "lr")]
    learning_rate: f64,
}

fn main() {}
