use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(defualt = 64)]
    hidden: i64,
}

fn main() {}
