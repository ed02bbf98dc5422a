use lightning_core::prelude::*;

#[lightning_module]
struct Net {
    #[state(buffer, persistant = false)]
    mask: tch::Tensor,
}

fn main() {}
