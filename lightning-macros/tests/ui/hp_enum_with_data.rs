use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone)]
enum Act {
    Relu,
    LeakyRelu(f64),
}

fn main() {}
