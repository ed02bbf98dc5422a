//! Build script of the workspace packages with binaries (the root package, lightning-ckpt):
//! the one call a user's crate makes too (see lightning-build).

fn main() {
    lightning_build::link_libtorch();
}
