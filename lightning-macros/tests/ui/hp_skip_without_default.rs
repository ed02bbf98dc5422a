use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    hidden: i64,
    #[hparam(skip)]
    verbose: bool,
}

fn main() {}
