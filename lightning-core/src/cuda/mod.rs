//! Fused CUDA kernels for the optimizer hot path, compiled at run time by NVRTC (cudarc,
//! dynamically loaded) and launched over tch tensors' device memory.
//!
//! - Kernel sources are the `.cu` files in `kernels/` (embedded with `include_str!`), compiled
//!   once per process into one module per device.
//! - Multi-tensor launches: a table of pointers and sizes (an int64 tensor on the device,
//!   uploaded once and cached while the pointers stay the same) and a block-to-chunk map let
//!   one launch update many tensors; aligned tensors use float4 (16-byte) accesses.
//! - Stream: kernels launch on libtorch's current stream of the device
//!   ([`lightning_sys::cuda::current_stream`]), as a PyTorch C++ extension does, so they are
//!   ordered with libtorch's work on any stream a program makes current, without a
//!   synchronization. (Only a lightning-sys shim built without CUDA headers falls back to the
//!   legacy default stream, with a warning.)
//! - Pinned host memory ([`pinned_host`]) comes from lightning-sys too
//!   ([`lightning_sys::ops::empty_pinned`]: libtorch's caching host allocator).
//! - NVRTC is looked up by cudarc's default names first; when that fails (a machine with only
//!   the pip-installed CUDA runtime), `libnvrtc.so.13` next to the loaded libtorch
//!   (`site-packages/nvidia/cu13/lib`) or in `$LIGHTNING_RS_NVRTC` is loaded by path, so
//!   kernel sources compile to PTX even without a GPU.
//! - Loading: the sources are assembled for the device's own architecture (`sm_XY`, a cubin:
//!   no PTX JIT in the driver, and it loads even when the NVRTC found is newer than the
//!   driver); PTX for the driver to JIT is the fallback.

pub(crate) mod fused;

use cudarc::driver::{CudaContext, CudaFunction};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// The kernel sources: (file name, text). `common.cuh` is prepended to each.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("adam.cu", include_str!("kernels/adam.cu")),
    ("sgd.cu", include_str!("kernels/sgd.cu")),
    ("amp.cu", include_str!("kernels/amp.cu")),
    ("norm.cu", include_str!("kernels/norm.cu")),
];

const COMMON: &str = include_str!("kernels/common.cuh");

/// Every kernel entry point the sources define (one per element type).
pub const KERNEL_NAMES: &[&str] = &[
    "adam_f32",
    "adam_f16",
    "adam_bf16",
    "sgd_f32",
    "sgd_f16",
    "sgd_bf16",
    "unscale_f32",
    "unscale_f16",
    "unscale_bf16",
    "sumsq_f32",
    "sumsq_f16",
    "sumsq_bf16",
    "clip_f32",
    "clip_f16",
    "clip_bf16",
];

/// Elements per block of a multi-tensor launch (must match `CHUNK` in `common.cuh`).
pub(crate) const CHUNK: i64 = 65536;
/// int64 slots per tensor in a launch table (must match `TSLOTS`).
pub(crate) const TSLOTS: usize = 8;

/// Errors loading NVRTC/the driver, compiling or launching kernels.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No NVRTC library could be loaded (names the places tried).
    #[error("NVRTC not found (tried the default library names and {0})")]
    NoNvrtc(String),
    /// NVRTC rejected a kernel source (with its log).
    #[error("NVRTC failed to compile {file}: {log}")]
    Compile {
        /// The `.cu` file.
        file: String,
        /// NVRTC's log.
        log: String,
    },
    /// A CUDA driver call failed, or no driver/GPU is present.
    #[error("CUDA driver: {0}")]
    Driver(String),
}

fn driver_err(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// Directories that may hold `libnvrtc.so.13` besides the default search path.
fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("LIGHTNING_RS_NVRTC") {
        out.push(PathBuf::from(p));
    }
    // Next to the libtorch this process loaded: <site-packages>/torch/lib -> nvidia/cu13/lib.
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps")
        && let Some(path) = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libtorch_cpu.so"))
    {
        let lib = PathBuf::from(path);
        if let Some(site) = lib
            .parent()
            .and_then(|l| l.parent())
            .and_then(|t| t.parent())
        {
            for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
                out.push(site.join(sub).join("libnvrtc.so.13"));
            }
        }
    }
    for dir in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda-13.0/targets/x86_64-linux/lib",
    ] {
        out.push(PathBuf::from(dir).join("libnvrtc.so.13"));
    }
    out
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`; the handle is kept for the process.
fn dlopen_global(path: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: loading an NVIDIA runtime library by path; its initializers only set up the
    // library itself.
    !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
}

/// Makes NVRTC loadable: cudarc's default lookup, else `dlopen` of a known path with
/// `RTLD_GLOBAL` (cudarc's later lookup by soname then finds the loaded library).
pub fn ensure_nvrtc() -> Result<(), CudaError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: probing for a shared library; loading NVRTC runs no user code.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Ok(());
        }
        let tried = nvrtc_candidates();
        for path in &tried {
            if !path.exists() {
                continue;
            }
            // NVRTC dlopens its builtins library by soname at compile time: load the one
            // next to it first so that lookup finds it.
            if let Some(dir) = path.parent()
                && let Ok(entries) = std::fs::read_dir(dir)
            {
                for e in entries.flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with("libnvrtc-builtins.so.") {
                        dlopen_global(&e.path());
                    }
                }
            }
            if dlopen_global(path) && unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok(());
            }
        }
        Err(tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "))
    })
    .clone()
    .map_err(CudaError::NoNvrtc)
}

/// The full source NVRTC compiles: `common.cuh` then every kernel file.
pub fn full_source() -> String {
    let mut s = String::from(COMMON);
    for (name, src) in KERNEL_SOURCES {
        s.push_str(&format!("\n// ---- {name} ----\n"));
        s.push_str(src);
    }
    s
}

/// Compiles the kernel sources to PTX for `arch` (e.g. `"compute_90"`). Works without a GPU.
pub fn compile_ptx(arch: &str) -> Result<String, CudaError> {
    let (ptx, _) = nvrtc_compile(arch, &[], Output::Ptx)?;
    // NVRTC's PTX ends with a NUL.
    let end = ptx.iter().position(|&b| b == 0).unwrap_or(ptx.len());
    Ok(String::from_utf8_lossy(&ptx[..end]).into_owned())
}

/// What [`nvrtc_compile`] takes from the compiled program.
enum Output {
    Ptx,
    Cubin,
}

/// Compiles [`full_source`] for `arch` with NVRTC (plus `extra` options) and returns the
/// `output` and NVRTC's log.
fn nvrtc_compile(
    arch: &str,
    extra: &[&str],
    output: Output,
) -> Result<(Vec<u8>, String), CudaError> {
    use cudarc::nvrtc::{result, sys};
    ensure_nvrtc()?;
    let compile_err = |log: String| CudaError::Compile {
        file: "kernels/*.cu".into(),
        log,
    };
    let src = std::ffi::CString::new(full_source())
        .map_err(|e| compile_err(format!("kernel source holds a NUL byte: {e}")))?;
    let name = c"lightning_rs_kernels.cu";
    let prog = result::create_program(&src, Some(name)).map_err(|e| compile_err(e.to_string()))?;
    let mut opts = vec![
        "--std=c++17".to_owned(),
        format!("--gpu-architecture={arch}"),
    ];
    opts.extend(extra.iter().map(|o| o.to_string()));
    // SAFETY: `prog` is live until destroyed below, and `src`/`name` outlive it.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| {
                std::ffi::CStr::from_ptr(l.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let out = compiled
            .map_err(|e| compile_err(format!("{e:?} ({arch}): {log}")))
            .and_then(|()| match output {
                Output::Ptx => result::get_ptx(prog)
                    .map(|p| p.into_iter().map(|c| c as u8).collect())
                    .map_err(|e| compile_err(format!("no PTX for {arch}: {e:?}"))),
                Output::Cubin => {
                    let mut size = 0usize;
                    sys::nvrtcGetCUBINSize(prog, &mut size)
                        .result()
                        .map_err(|e| compile_err(format!("no cubin for {arch}: {e:?}")))?;
                    let mut image = vec![0u8; size];
                    sys::nvrtcGetCUBIN(prog, image.as_mut_ptr().cast())
                        .result()
                        .map_err(|e| compile_err(format!("no cubin for {arch}: {e:?}")))?;
                    Ok(image)
                }
            });
        let _ = result::destroy_program(prog);
        out.map(|out| (out, log))
    }
}

/// The kernels assembled by NVRTC for one GPU architecture (SASS in an ELF cubin), with
/// ptxas's report of each kernel's registers, stack and spills.
#[derive(Debug, Clone)]
pub struct Cubin {
    /// The cubin image, loadable with `cuModuleLoadData`.
    pub image: Vec<u8>,
    /// NVRTC's log, ptxas's `-v` report included.
    pub log: String,
}

/// What ptxas reported for one kernel of a [`Cubin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    /// The kernel's entry name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of stack frame per thread.
    pub stack_bytes: u32,
    /// Bytes of register spill stores plus spill loads.
    pub spill_bytes: u32,
}

impl Cubin {
    /// Each kernel's resources as ptxas reported them (`Function properties for NAME`, then
    /// `N bytes stack frame, N bytes spill stores, N bytes spill loads` and `Used N
    /// registers`), in the order of the report.
    pub fn resources(&self) -> Vec<KernelResources> {
        fn num_before(line: &str, what: &str) -> Option<u32> {
            let end = line.find(what)?;
            line[..end].split_whitespace().last()?.parse().ok()
        }
        let mut out: Vec<KernelResources> = Vec::new();
        for line in self.log.lines() {
            if let Some(rest) = line.split("Function properties for ").nth(1) {
                out.push(KernelResources {
                    name: rest.trim().to_owned(),
                    registers: 0,
                    stack_bytes: 0,
                    spill_bytes: 0,
                });
            } else if let Some(k) = out.last_mut() {
                if let Some(n) = num_before(line, "bytes stack frame") {
                    k.stack_bytes = n;
                    k.spill_bytes = num_before(line, "bytes spill stores").unwrap_or(0)
                        + num_before(line, "bytes spill loads").unwrap_or(0);
                }
                if let Some(n) = num_before(line, "registers") {
                    k.registers = n;
                }
            }
        }
        out
    }
}

/// Compiles and assembles the kernel sources for `arch` (e.g. `"sm_90"`) into a cubin, the
/// form the fused kernels are loaded in first: SASS needs no PTX JIT in the driver, so it
/// loads even when NVRTC is newer than the driver's CUDA version (CUDA's minor-version
/// compatibility), and the first launch does not wait for a JIT. Works without a GPU.
pub fn compile_cubin(arch: &str) -> Result<Cubin, CudaError> {
    let (image, log) = nvrtc_compile(arch, &["--ptxas-options=-v"], Output::Cubin)?;
    if image.is_empty() {
        return Err(CudaError::Compile {
            file: "kernels/*.cu".into(),
            log: format!("NVRTC gave an empty cubin for {arch}"),
        });
    }
    Ok(Cubin { image, log })
}

/// The compiled kernels loaded on one device.
pub(crate) struct Kernels {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    funcs: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    fn load(ordinal: usize) -> Result<Kernels, CudaError> {
        // SAFETY: probing for libcuda.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::Driver("libcuda not found".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err)?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err)?;
        // SASS for this GPU first (no driver JIT, loads even when NVRTC is newer than the
        // driver), PTX for the driver to JIT when NVRTC cannot assemble for this GPU.
        let cubin = compile_cubin(&format!("sm_{major}{minor}")).and_then(|c| {
            ctx.load_module(cudarc::nvrtc::Ptx::from_binary(c.image))
                .map_err(driver_err)
        });
        let module = match cubin {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(
                    "fused CUDA kernels: no cubin for sm_{major}{minor} ({e}); loading PTX"
                );
                let ptx = compile_ptx(&format!("compute_{major}{minor}"))?;
                ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                    .map_err(driver_err)?
            }
        };
        let mut funcs = HashMap::new();
        for &name in KERNEL_NAMES {
            funcs.insert(name, module.load_function(name).map_err(driver_err)?);
        }
        Ok(Kernels {
            ordinal,
            ctx,
            funcs,
        })
    }

    /// libtorch's current stream on this device: where [`Kernels::launch`] must run, so the
    /// kernel is ordered with torch's work as a PyTorch extension's is.
    pub(crate) fn stream(&self) -> *mut std::ffi::c_void {
        current_stream(self.ordinal)
    }

    /// Launches `name` with `blocks` blocks of 256 threads on `stream` (from
    /// [`Kernels::stream`]).
    ///
    /// # Safety
    /// `args` must match the kernel's parameters and point at live values; the device
    /// pointers in them must be valid for the kernel's accesses.
    pub(crate) unsafe fn launch(
        &self,
        name: &str,
        blocks: u32,
        stream: *mut std::ffi::c_void,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<(), CudaError> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| CudaError::Driver(format!("no kernel named {name}")))?;
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: the caller upholds this function's contract for `args`; `f` is a kernel of
        // this context, bound to the thread above, and `stream` belongs to the same device.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (blocks, 1, 1),
                (256, 1, 1),
                0,
                stream as cudarc::driver::sys::CUstream,
                args,
            )
        }
        .map_err(driver_err)
    }
}

/// libtorch's current stream on `ordinal`, or the legacy default stream (null) when
/// lightning-sys's shim was built without CUDA headers (said once as a warning): that is libtorch's
/// current stream unless the program switched streams.
fn current_stream(ordinal: usize) -> *mut std::ffi::c_void {
    match lightning_sys::cuda::current_stream(ordinal) {
        Ok(s) => s.0,
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "fused CUDA kernels launch on the legacy default stream: {e} \
                     (install CUDA headers, see scripts/setup.sh, and rebuild)"
                )
            });
            std::ptr::null_mut()
        }
    }
}

type KernelCache = Mutex<HashMap<usize, Result<Arc<Kernels>, String>>>;

/// The kernels for a CUDA device ordinal, compiled and loaded on first use.
pub(crate) fn kernels(ordinal: usize) -> Result<Arc<Kernels>, CudaError> {
    static CACHE: OnceLock<KernelCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(ordinal)
        .or_insert_with(|| {
            Kernels::load(ordinal).map(Arc::new).map_err(|e| {
                tracing::warn!("fused CUDA kernels unavailable, using tch ops: {e}");
                e.to_string()
            })
        })
        .clone()
        .map_err(CudaError::Driver)
}

/// Whether the fused kernels handle this parameter: a contiguous f32/f16/bf16 CUDA tensor
/// whose device has the kernels loaded.
pub fn fused_supported(p: &Tensor) -> bool {
    match p.device() {
        Device::Cuda(i) => {
            matches!(p.kind(), Kind::Float | Kind::Half | Kind::BFloat16)
                && p.is_contiguous()
                && kernels(i).is_ok()
        }
        _ => false,
    }
}

/// Whether the fused optimizer kernels handle a parameter and its gradient: both supported,
/// same dtype, device and length (the kernels read both as dense arrays).
pub fn fused_param_supported(p: &Tensor, grad: &Tensor) -> bool {
    grad.kind() == p.kind()
        && grad.device() == p.device()
        && grad.numel() == p.numel()
        && grad.is_contiguous()
        && fused_supported(p)
}

/// Whether the fused kernels handle these gradients (all supported, one device, one dtype).
pub fn fused_grads_supported(grads: &[Tensor]) -> bool {
    let Some(first) = grads.first() else {
        return false;
    };
    grads
        .iter()
        .all(|g| g.device() == first.device() && g.kind() == first.kind() && fused_supported(g))
}

/// Whether a CUDA device is usable by tch and by our kernels (for tests and benches).
pub fn available() -> bool {
    tch::Cuda::is_available() && kernels(0).is_ok()
}

/// Page-locked host memory for copies to or from a GPU (`torch.empty(size, dtype=kind,
/// pin_memory=True)`): allocated as such from the CUDA caching host allocator, which reuses
/// freed blocks, not through `Tensor::pin_memory`, which first makes a pageable tensor and
/// copies it. `None` where pinned memory cannot be had (no CUDA; said once as a warning): the
/// caller then uses pageable memory, which is slower and otherwise the same.
pub fn pinned_host(size: &[i64], kind: Kind) -> Option<Tensor> {
    lightning_sys::ops::empty_pinned(size, kind)
        .map_err(|e| {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("host memory for GPU copies is pageable: no pinned memory ({e})")
            });
        })
        .ok()
}

/// The variable that says a GPU must be present (`scripts/gpu_check.sh` sets it on the GPU
/// machine): tests and benches then fail where they would otherwise skip their GPU part.
pub const EXPECT_GPU_ENV: &str = "LIGHTNING_RS_EXPECT_GPU";

/// Whether [`EXPECT_GPU_ENV`] is set (to anything but empty or `0`).
pub fn gpu_expected() -> bool {
    std::env::var(EXPECT_GPU_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// When a GPU is expected ([`gpu_expected`]) but tch sees no CUDA device or the fused kernels
/// do not load on `cuda:0`: what is missing, so that a GPU run that would silently fall back
/// (to no GPU part, or to the tch-ops optimizer path) fails instead. `None` otherwise.
pub fn expected_gpu_missing() -> Option<String> {
    if !gpu_expected() {
        return None;
    }
    if !tch::Cuda::is_available() {
        return Some(format!(
            "{EXPECT_GPU_ENV} is set but tch::Cuda::is_available() is false"
        ));
    }
    kernels(0)
        .err()
        .map(|e| format!("{EXPECT_GPU_ENV} is set but the fused CUDA kernels did not load: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_is_read_per_kernel() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'adam_f32' for 'sm_90'\n\
ptxas info    : Function properties for adam_f32\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 58 registers, used 0 barriers, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'sgd_f32' for 'sm_90'\n\
ptxas info    : Function properties for sgd_f32\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 30 registers, used 0 barriers, 392 bytes cmem[0]\n";
        let c = Cubin {
            image: vec![0x7f],
            log: log.into(),
        };
        let r = c.resources();
        assert_eq!(
            r,
            vec![
                KernelResources {
                    name: "adam_f32".into(),
                    registers: 58,
                    stack_bytes: 8,
                    spill_bytes: 16
                },
                KernelResources {
                    name: "sgd_f32".into(),
                    registers: 30,
                    stack_bytes: 0,
                    spill_bytes: 0
                },
            ]
        );
    }
}
