//! Shared build script for every package that links binaries against libtorch.
//!
//! Rust links with `--as-needed`, which drops `libtorch_cuda.so` (nothing references it
//! directly), so `tch::Cuda::is_available()` would be false even on a GPU machine. We force
//! it in with `--no-as-needed` when it exists, and add an rpath to libtorch's `lib/` so
//! binaries and tests run without `LD_LIBRARY_PATH`.
//!
//! Requires a direct dependency on `torch-sys` (its `links = "tch"` key exports
//! `DEP_TCH_LIBTORCH_LIB` to direct dependents only).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set; no rpath to libtorch emitted");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
