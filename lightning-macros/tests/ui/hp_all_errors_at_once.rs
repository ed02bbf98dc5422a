use lightning_core::prelude::*;

// Three misuses, three errors in one compile.
#[derive(Hyperparameters, Clone)]
struct Config {
    #[hparam(skip)]
    a: i64,
    #[hparam(frobnicate)]
    b: i64,
    #[hparam(rename = "a.b")]
    c: i64,
}

fn main() {}
