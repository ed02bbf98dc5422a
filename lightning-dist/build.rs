//! Compiles the C++ shim over libtorch's c10d and the few tensor ops tch leaves out (`csrc/`)
//! and links it.
//!
//! libtorch is the one torch-sys found: its lib dir comes from torch-sys's `links = "tch"`
//! metadata (`DEP_TCH_LIBTORCH_LIB`), falling back to `$LIBTORCH/lib`; headers are
//! `$LIBTORCH_INCLUDE/include` (torch-sys's override), else the `include/` next to that lib dir.
//! Flags are torch-sys's (`-std=c++17 -D_GLIBCXX_USE_CXX11_ABI=$LIBTORCH_CXX11_ABI`, default 1)
//! plus `-DUSE_C10D_GLOO` with the vendored gloo stub headers (`csrc/gloo-stub`).
//!
//! The CUDA part (`csrc/cuda_shim.cpp`: NCCL and libtorch's current stream, with `-DUSE_C10D_NCCL -DUSE_CUDA`) is compiled when libtorch has
//! `libtorch_cuda.so` and the CUDA headers are found: `$CUDA_HOME/include`, or the pip packages
//! next to the torch package (`nvidia/cu13/include`, from `nvidia-cuda-runtime`,
//! `nvidia-cuda-crt` and `nvidia-cuda-cccl`, and `nvidia/nccl/include`). `LIGHTNING_DIST_NCCL=0`
//! turns it off, `=1` makes missing headers a build error.

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
        "lightning-dist: libtorch not found (no DEP_TCH_LIBTORCH_LIB from torch-sys, no LIBTORCH); \
         run scripts/setup.sh or set LIBTORCH to the torch package directory"
    );
}

/// The include dirs a CUDA build of the shim needs, or why there are none.
fn cuda_includes(lib: &Path) -> Result<Vec<PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!(
            "{} has no libtorch_cuda.so (a CPU-only libtorch)",
            lib.display()
        ));
    }
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
    let find = |rel: &str| roots.iter().find(|r| r.join(rel).exists()).cloned();
    let mut dirs = Vec::new();
    let mut missing = Vec::new();
    for (header, package) in [
        ("cuda_runtime_api.h", "nvidia-cuda-runtime"),
        ("crt/host_defines.h", "nvidia-cuda-crt"),
        ("nccl.h", "nvidia-nccl-cu13"),
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
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    dirs.dedup();
    Ok(dirs)
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let csrc = manifest.join("csrc");
    for f in [
        "ldist.h",
        "common.h",
        "c10d_shim.cpp",
        "cuda_shim.cpp",
        "ops_shim.cpp",
    ] {
        println!("cargo:rerun-if-changed={}", csrc.join(f).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        csrc.join("gloo-stub").display()
    );

    let lib = libtorch_lib_dir();
    let include_root = match env_rerun("LIBTORCH_INCLUDE") {
        Some(dir) => PathBuf::from(dir).join("include"),
        None => lib
            .parent()
            .map(|p| p.join("include"))
            .expect("libtorch lib dir has a parent"),
    };
    let c10d = include_root.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    assert!(
        c10d.exists(),
        "lightning-dist: {} not found; libtorch's headers are needed (set LIBTORCH_INCLUDE)",
        c10d.display()
    );
    let abi = env_rerun("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned());

    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .include(&include_root)
            .include(include_root.join("torch/csrc/api/include"))
            .include(csrc.join("gloo-stub"))
            .include(&csrc)
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .flag("-DUSE_C10D_GLOO");
        b
    };

    let nccl_wanted = env_rerun("LIGHTNING_DIST_NCCL");
    let nccl = match nccl_wanted.as_deref() {
        Some("0") => Err("disabled by LIGHTNING_DIST_NCCL=0".to_owned()),
        _ => cuda_includes(&lib),
    };
    let mut nccl_build = base();
    nccl_build.file(csrc.join("cuda_shim.cpp"));
    let status = match &nccl {
        Ok(dirs) => {
            nccl_build
                .includes(dirs)
                .flag("-DUSE_C10D_NCCL")
                .flag("-DUSE_CUDA")
                .flag("-DLDIST_WITH_NCCL");
            "compiled".to_owned()
        }
        Err(why) => {
            if nccl_wanted.as_deref() == Some("1") {
                panic!("lightning-dist: LIGHTNING_DIST_NCCL=1 but {why}");
            }
            println!("cargo:warning=lightning-dist: NCCL not compiled in: {why}");
            format!("not compiled in: {why}")
        }
    };
    println!("cargo:rustc-env=LIGHTNING_DIST_NCCL_STATUS={status}");
    nccl_build.compile("ldist_nccl");
    base()
        .file(csrc.join("c10d_shim.cpp"))
        .file(csrc.join("ops_shim.cpp"))
        .compile("ldist_c10d");

    // After the static shims (cc emitted them), the libraries they need. torch-sys links these
    // too, but the shim must come before them on the link line.
    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl.is_ok() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    for l in ["torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
    // This package's tests, examples and binaries run without LD_LIBRARY_PATH (as
    // build/link_torch.rs does for the root package), with libtorch_cuda loaded so CUDA works.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
