//! Code shared by the workspace's examples, benches and integration tests (not a public API):
//! the digits data shipped in `data/` (`digits`), the GAN of `examples/gan.rs` (`gan`),
//! which the manual-optimization tests also train, and the image folder and CNN of
//! `examples/images.rs` (`images`), which the data-loading tests train. Test support lives in `lightning-testkit`.

pub mod digits;
pub mod gan;
pub mod images;
