use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(default = 0.1, range = 1.0)]
    dropout: f64,
    #[hparam(default = 0.1, range = 0.0..=1.0, range = 0.0..1.0)]
    p: f64,
}

fn main() {}
