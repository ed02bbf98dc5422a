use lightning_core::prelude::*;

#[lightning_module]
struct Net {
    #[state(persistent = false)]
    mask: tch::Tensor,
}

fn main() {}
