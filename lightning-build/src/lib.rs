//! One call in a `build.rs` makes a crate's binaries (and tests, examples, benches) that use
//! `lightning-core` find libtorch at run time, as pyo3's `pyo3-build-config` does for Python:
//!
//! ```toml
//! [dependencies]
//! lightning-core = "0.1"
//!
//! [build-dependencies]
//! lightning-build = "0.1"
//! ```
//!
//! ```text
//! // build.rs
//! fn main() {
//!     lightning_build::link_libtorch();
//! }
//! ```
//!
//! What it does, and why:
//! - **rpath**: libtorch is a set of shared libraries (`libtorch_cpu.so`, ...) outside the
//!   system's library path. Without an rpath a binary links, then fails at start with
//!   `error while loading shared libraries: libtorch_cpu.so` (exit code 127). It adds
//!   `-Wl,-rpath,<libtorch>/lib`, so no `LD_LIBRARY_PATH` is needed.
//! - **CUDA**: Rust links with `--as-needed`, which drops `libtorch_cuda.so` (nothing refers
//!   to it by name), and then `tch::Cuda::is_available()` is false on a GPU machine. When
//!   `libtorch_cuda.so` exists it is linked with `--no-as-needed`.
//!
//! Where libtorch is: `lightning-core` publishes the directory torch-sys built against (cargo
//! `links` metadata, read here as `DEP_LIGHTNING_CORE_LIBTORCH_LIB`), so a crate that
//! depends on `lightning-core` needs no `torch-sys` dependency of its own. Failing that,
//! `DEP_TCH_LIBTORCH_LIB` (a crate depending on `torch-sys` directly) and then `$LIBTORCH/lib`.
//! torch-sys itself finds libtorch from `LIBTORCH` (a libtorch directory, or a `torch` Python
//! package directory, which has the same `include/` and `lib/`) or, with
//! `LIBTORCH_USE_PYTORCH=1`, from the `torch` package of the `python` on the `PATH`.

use std::path::{Path, PathBuf};

/// The variables a libtorch directory is read from, in order (see the crate docs).
const SOURCES: [&str; 2] = ["DEP_LIGHTNING_CORE_LIBTORCH_LIB", "DEP_TCH_LIBTORCH_LIB"];

/// Prints the cargo instructions that link the current package's binaries against libtorch
/// (an rpath to its `lib/`, `libtorch_cuda` kept when present) and returns that directory;
/// `None`, with a cargo warning naming the fix, when libtorch's directory is not known.
/// Call it from `build.rs`.
pub fn link_libtorch() -> Option<PathBuf> {
    for var in SOURCES.iter().chain(&["LIBTORCH"]) {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Some(lib) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=lightning-build: libtorch's directory is unknown (no \
             DEP_LIGHTNING_CORE_LIBTORCH_LIB: does this package depend on lightning-core?, and no \
             LIBTORCH); binaries will need LD_LIBRARY_PATH to start"
        );
        return None;
    };
    for line in link_args(&lib, lib.join("libtorch_cuda.so").exists()) {
        println!("{line}");
    }
    Some(lib)
}

/// libtorch's `lib/` directory, from the variables cargo gives a build script (see the crate
/// docs), or `None`.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    SOURCES
        .iter()
        .find_map(|name| var(name).map(PathBuf::from))
        .or_else(|| var("LIBTORCH").map(|root| Path::new(&root).join("lib")))
}

/// The cargo instructions for libtorch in `lib`, with `libtorch_cuda` when `cuda`.
fn link_args(lib: &Path, cuda: bool) -> Vec<String> {
    let mut out = vec![format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display())];
    if cuda {
        out.push("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpath_always_and_cuda_only_when_present() {
        let lib = Path::new("/opt/libtorch/lib");
        assert_eq!(
            link_args(lib, false),
            ["cargo:rustc-link-arg=-Wl,-rpath,/opt/libtorch/lib"]
        );
        let with_cuda = link_args(lib, true);
        assert_eq!(with_cuda.len(), 2);
        assert!(with_cuda[1].contains("--no-as-needed,-ltorch_cuda,--as-needed"));
    }
}
