//! Code shared by the workspace's examples, benches and integration tests (not a public API):
//! the digits data shipped in `data/` (`digits`), the GAN of `examples/gan.rs` (`gan`),
//! which the manual-optimization tests also train, and the image folder and CNN of
//! `examples/images.rs` (`images`), which the data-loading tests train. Test support lives in `lightning-testkit`.

pub mod digits;
pub mod gan;
pub mod images;

use tch::{Kind, Tensor};

/// A classifier's cross-entropy loss and accuracy on `targets` (class indices), as the digits
/// and image examples log them.
pub fn loss_and_accuracy(logits: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let loss = logits.cross_entropy_for_logits(targets);
    let acc = logits
        .argmax(-1, false)
        .eq_tensor(targets)
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    (loss, acc)
}
