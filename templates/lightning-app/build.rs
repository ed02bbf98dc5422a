// Adds an rpath to libtorch (so the binary starts without LD_LIBRARY_PATH) and keeps
// libtorch_cuda linked; see lightning-build's docs.
fn main() {
    lightning_build::link_libtorch();
}
