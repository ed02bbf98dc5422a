//! Links lightning-core's own tests and benches against libtorch, and publishes libtorch's
//! `lib/` directory to the build scripts of packages depending on lightning-core (cargo `links`
//! metadata: `DEP_LIGHTNING_CORE_LIBTORCH_LIB`), which `lightning_build::link_libtorch` reads.

fn main() {
    if let Some(lib) = lightning_build::link_libtorch() {
        println!("cargo:libtorch_lib={}", lib.display());
    }
}
