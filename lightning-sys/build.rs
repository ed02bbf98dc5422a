//! Compiles the C++ shim over libtorch (`csrc/`: the tensor ops tch leaves out, autocast,
//! pinned memory, CUDA streams) and links it, and publishes what a dependent's own shim needs.
//!
//! libtorch is the one torch-sys found: its lib dir comes from torch-sys's `links = "tch"`
//! metadata (`DEP_TCH_LIBTORCH_LIB`), falling back to `$LIBTORCH/lib`; headers are
//! `$LIBTORCH_INCLUDE/include` (torch-sys's override), else the `include/` next to that lib dir.
//! Flags are torch-sys's (`-std=c++17 -D_GLIBCXX_USE_CXX11_ABI=$LIBTORCH_CXX11_ABI`, default 1).
//!
//! The CUDA part (`csrc/cuda_shim.cpp`: libtorch's current stream, with `-DUSE_CUDA`) is
//! compiled when libtorch has `libtorch_cuda.so` and the CUDA headers are found:
//! `$CUDA_HOME/include`, or the pip packages next to the torch package (`nvidia/cu13/include`,
//! from `nvidia-cuda-runtime`, `nvidia-cuda-crt` and `nvidia-cuda-cccl`).
//! `LIGHTNING_SYS_CUDA=0` turns it off, `=1` makes missing headers a build error.
//!
//! Published to dependents (`links = "lightning_sys"`, read as `DEP_LIGHTNING_SYS_<KEY>`):
//! `include` (this `csrc/`, with `lsys_common.h`, the C++ error bridge), `libtorch_lib`,
//! `libtorch_include`, `cxx11_abi`, `cuda_roots` (where CUDA headers were looked for,
//! `:`-separated) and, when the CUDA part was compiled, `cuda_include` (its include dirs).

use std::env;
use std::path::{Path, PathBuf};

fn env_rerun(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn libtorch_lib_dir() -> PathBuf {
    if let Some(lib) = env_rerun("DEP_TCH_LIBTORCH_LIB") {
        return PathBuf::from(lib);
    }
    if let Some(lib) = env_rerun("LIBTORCH_LIB") {
        return PathBuf::from(lib).join("lib");
    }
    if let Some(root) = env_rerun("LIBTORCH") {
        return PathBuf::from(root).join("lib");
    }
    panic!(
        "lightning-sys: libtorch not found (no DEP_TCH_LIBTORCH_LIB from torch-sys, no LIBTORCH); \
         run scripts/setup.sh or set LIBTORCH to the torch package directory"
    );
}

/// Where CUDA headers may be: `$CUDA_HOME/include`, `$CUDA_PATH/include`, and the pip packages
/// next to the torch package whose `lib/` is `lib`.
fn cuda_roots(lib: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env_rerun(var) {
            roots.push(PathBuf::from(home).join("include"));
        }
    }
    // lib = <site-packages>/torch/lib: the pip CUDA packages live in <site-packages>/nvidia.
    // Resolve links first: the repo's `.libtorch` is a link to the venv's torch package, and
    // its parent is the repo, not site-packages.
    let real = lib.canonicalize().unwrap_or_else(|_| lib.to_owned());
    if let Some(site) = real.parent().and_then(Path::parent) {
        roots.push(site.join("nvidia/cu13/include"));
        roots.push(site.join("nvidia/nccl/include"));
    }
    roots
}

/// The include dirs a CUDA build of the shim needs, or why there are none.
fn cuda_includes(lib: &Path, roots: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!(
            "{} has no libtorch_cuda.so (a CPU-only libtorch)",
            lib.display()
        ));
    }
    let find = |rel: &str| roots.iter().find(|r| r.join(rel).exists()).cloned();
    let mut dirs = Vec::new();
    let mut missing = Vec::new();
    for (header, package) in [
        ("cuda_runtime_api.h", "nvidia-cuda-runtime"),
        ("crt/host_defines.h", "nvidia-cuda-crt"),
    ] {
        match find(header) {
            Some(dir) => dirs.push(dir),
            None => missing.push(format!("{header} ({package})")),
        }
    }
    // CCCL (cuda/std/..., thrust, cub) is either in the include dir or in its cccl/ subdir.
    match roots.iter().find_map(|r| {
        [r.clone(), r.join("cccl")]
            .into_iter()
            .find(|d| d.join("cuda/std/version").exists())
    }) {
        Some(dir) => dirs.push(dir),
        None => missing.push("cuda/std/version (nvidia-cuda-cccl)".to_owned()),
    }
    if !missing.is_empty() {
        return Err(format!(
            "CUDA headers not found: {} (looked in {})",
            missing.join(", "),
            join(roots)
        ));
    }
    dirs.dedup();
    Ok(dirs)
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn main() {
    // The macros' trybuild cases build with `--cfg trybuild` and are only type-checked,
    // never linked: the shim is not needed there (its compile was most of their time).
    if env::var_os("CARGO_CFG_TRYBUILD").is_some() {
        println!("cargo:rustc-env=LIGHTNING_SYS_CUDA_STATUS=not built (type-checked only)");
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let csrc = manifest.join("csrc");
    for f in ["lsys.h", "lsys_common.h", "ops_shim.cpp", "cuda_shim.cpp"] {
        println!("cargo:rerun-if-changed={}", csrc.join(f).display());
    }

    let lib = libtorch_lib_dir();
    let include_root = match env_rerun("LIBTORCH_INCLUDE") {
        Some(dir) => PathBuf::from(dir).join("include"),
        None => lib
            .parent()
            .map(|p| p.join("include"))
            .expect("libtorch lib dir has a parent"),
    };
    assert!(
        include_root.join("ATen/autocast_mode.h").exists(),
        "lightning-sys: {} has no ATen headers; libtorch's headers are needed (set LIBTORCH_INCLUDE)",
        include_root.display()
    );
    let abi = env_rerun("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned());
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            // No C++ debug info: the shim is a thin layer of calls, and debug info over
            // libtorch's headers doubles its compile time (19 s vs 10 s for ops_shim.cpp).
            .debug(false)
            .include(&include_root)
            .include(include_root.join("torch/csrc/api/include"))
            .include(&csrc)
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT");
        b
    };

    let roots = cuda_roots(&lib);
    let cuda_wanted = env_rerun("LIGHTNING_SYS_CUDA");
    let cuda = match cuda_wanted.as_deref() {
        Some("0") => Err("disabled by LIGHTNING_SYS_CUDA=0".to_owned()),
        _ => cuda_includes(&lib, &roots),
    };
    let mut cuda_build = base();
    cuda_build.file(csrc.join("cuda_shim.cpp"));
    let status = match &cuda {
        Ok(dirs) => {
            cuda_build
                .includes(dirs)
                .flag("-DUSE_CUDA")
                .flag("-DLSYS_WITH_CUDA");
            println!("cargo:cuda_include={}", join(dirs));
            "compiled".to_owned()
        }
        Err(why) => {
            if cuda_wanted.as_deref() == Some("1") {
                panic!("lightning-sys: LIGHTNING_SYS_CUDA=1 but {why}");
            }
            println!("cargo:warning=lightning-sys: CUDA streams not compiled in: {why}");
            format!("not compiled in: {why}")
        }
    };
    println!("cargo:rustc-env=LIGHTNING_SYS_CUDA_STATUS={status}");
    cuda_build.compile("lsys_cuda");
    base().file(csrc.join("ops_shim.cpp")).compile("lsys_ops");

    println!("cargo:include={}", csrc.display());
    println!("cargo:libtorch_lib={}", lib.display());
    println!("cargo:libtorch_include={}", include_root.display());
    println!("cargo:cxx11_abi={abi}");
    println!("cargo:cuda_roots={}", join(&roots));

    // After the static shims (cc emitted them), the libraries they need. torch-sys links these
    // too, but the shim must come before them on the link line.
    println!("cargo:rustc-link-search=native={}", lib.display());
    if cuda.is_ok() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    for l in ["torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    // This package's tests run without LD_LIBRARY_PATH, with libtorch_cuda loaded so CUDA
    // works (an rpath to libtorch, as every package with binaries gets it).
    lightning_build::link_libtorch();
}
