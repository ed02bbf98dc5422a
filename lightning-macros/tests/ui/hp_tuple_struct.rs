use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config(i64, f64);

fn main() {}
