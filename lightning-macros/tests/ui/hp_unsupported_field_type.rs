use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
struct Config {
    hidden: i64,
    timeout: std::time::Duration,
    started: std::time::Instant,
}

fn main() {}
