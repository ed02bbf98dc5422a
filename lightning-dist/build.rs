//! Compiles the C++ shim over libtorch's c10d (`csrc/`) and links it.
//!
//! libtorch, its headers, the C++ ABI flag and the CUDA headers are the ones lightning-sys
//! compiled its shim with (its `links = "lightning_sys"` metadata, `DEP_LIGHTNING_SYS_*`), so
//! both shims see the same libtorch; lightning-sys's `csrc/` also gives the shared error bridge
//! (`lsys_common.h`). Flags are torch-sys's (`-std=c++17 -D_GLIBCXX_USE_CXX11_ABI=...`) plus
//! `-DUSE_C10D_GLOO` with the vendored gloo stub headers (`csrc/gloo-stub`).
//!
//! The NCCL part (`csrc/nccl_shim.cpp`, with `-DUSE_C10D_NCCL -DUSE_CUDA`) is compiled when
//! lightning-sys compiled its CUDA part and `nccl.h` is found where it looked for CUDA headers
//! (`$CUDA_HOME/include`, or the pip package `nvidia/nccl/include` next to the torch package).
//! `LIGHTNING_DIST_NCCL=0` turns it off, `=1` makes a missing header a build error.

use std::env;
use std::path::PathBuf;

fn env_rerun(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

/// lightning-sys's published `key` (its build script always sets the ones read with this).
fn sys(key: &str) -> String {
    env_rerun(&format!("DEP_LIGHTNING_SYS_{key}")).unwrap_or_else(|| {
        panic!("lightning-dist: DEP_LIGHTNING_SYS_{key} not set (lightning-sys's build metadata)")
    })
}

fn paths(joined: &str) -> Vec<PathBuf> {
    joined
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The include dirs the NCCL part needs (lightning-sys's CUDA dirs and nccl.h's), or why there
/// are none.
fn nccl_includes() -> Result<Vec<PathBuf>, String> {
    let Some(cuda) = env_rerun("DEP_LIGHTNING_SYS_CUDA_INCLUDE") else {
        return Err("lightning-sys compiled no CUDA part (see its build warning)".to_owned());
    };
    let roots = paths(&sys("CUDA_ROOTS"));
    let Some(nccl) = roots.iter().find(|r| r.join("nccl.h").exists()) else {
        return Err(format!(
            "nccl.h (nvidia-nccl-cu13) not found (looked in {})",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let mut dirs = paths(&cuda);
    dirs.push(nccl.clone());
    dirs.dedup();
    Ok(dirs)
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let csrc = manifest.join("csrc");
    for f in ["ldist.h", "common.h", "c10d_shim.cpp", "nccl_shim.cpp"] {
        println!("cargo:rerun-if-changed={}", csrc.join(f).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        csrc.join("gloo-stub").display()
    );

    let include_root = PathBuf::from(sys("LIBTORCH_INCLUDE"));
    let c10d = include_root.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    assert!(
        c10d.exists(),
        "lightning-dist: {} not found; libtorch's headers are needed (set LIBTORCH_INCLUDE)",
        c10d.display()
    );
    let abi = sys("CXX11_ABI");
    let sys_include = PathBuf::from(sys("INCLUDE"));

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
            .include(csrc.join("gloo-stub"))
            .include(&csrc)
            .include(&sys_include)
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .flag("-DUSE_C10D_GLOO");
        b
    };

    let nccl_wanted = env_rerun("LIGHTNING_DIST_NCCL");
    let nccl = match nccl_wanted.as_deref() {
        Some("0") => Err("disabled by LIGHTNING_DIST_NCCL=0".to_owned()),
        _ => nccl_includes(),
    };
    let mut nccl_build = base();
    nccl_build.file(csrc.join("nccl_shim.cpp"));
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
        .compile("ldist_c10d");

    // The libraries the shims need (torch, torch_cpu, c10, and torch_cuda/c10_cuda when CUDA is
    // compiled in, which NCCL needs) follow on the link line from lightning-sys, a dependency.
    // This package's tests, examples and binaries run without LD_LIBRARY_PATH, with
    // libtorch_cuda loaded so CUDA works (an rpath to libtorch, as every package with binaries
    // gets it).
    lightning_build::link_libtorch();
}
