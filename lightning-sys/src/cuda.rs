//! libtorch's CUDA streams, which tch does not expose: the current stream of a device (where
//! custom kernels must launch to be ordered with libtorch's work, as PyTorch's own extensions
//! do with `at::cuda::getCurrentCUDAStream()`), a stream from libtorch's pool, and switching the
//! current stream (`torch.cuda.set_stream`).
//!
//! These need the CUDA part of the shim, compiled when CUDA's headers are found at build time
//! ([`build_status`] says whether they were); without it every call is an error.

use std::ffi::{c_char, c_int, c_void};

use tch::TchError;

unsafe extern "C" {
    fn lsys_current_cuda_stream(device: c_int, out: *mut *mut c_void) -> *mut c_char;
    fn lsys_cuda_pool_stream(device: c_int, out: *mut *mut c_void) -> *mut c_char;
    fn lsys_set_current_cuda_stream(device: c_int, stream: *mut c_void) -> *mut c_char;
    fn lsys_cuda_compiled() -> c_int;
}

/// Whether the CUDA part of the shim was compiled in (CUDA's headers were found at build time).
pub fn compiled() -> bool {
    // SAFETY: a constant query with no arguments.
    unsafe { lsys_cuda_compiled() != 0 }
}

/// Why the CUDA part of the shim is or is not compiled in: `"compiled"`, or `"not compiled in:
/// <reason>"` (no `libtorch_cuda.so`, headers not found, `LIGHTNING_SYS_CUDA=0`).
pub fn build_status() -> &'static str {
    env!("LIGHTNING_SYS_CUDA_STATUS")
}

/// A CUDA stream handle (`cudaStream_t` / `CUstream`; null is the legacy default stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHandle(pub *mut c_void);

// SAFETY: a stream handle is a plain identifier that CUDA accepts from any thread.
unsafe impl Send for StreamHandle {}
// SAFETY: as above; it is never dereferenced on the Rust side.
unsafe impl Sync for StreamHandle {}

fn ordinal(device: usize) -> Result<c_int, TchError> {
    c_int::try_from(device)
        .map_err(|_| TchError::Torch(format!("CUDA device index {device} is out of range")))
}

fn stream_of(
    op: &str,
    device: usize,
    f: unsafe extern "C" fn(c_int, *mut *mut c_void) -> *mut c_char,
) -> Result<StreamHandle, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `out` is a live out-parameter; the shim only writes a handle into it.
    crate::shim::check(op, unsafe { f(ordinal(device)?, &mut out) })?;
    Ok(StreamHandle(out))
}

/// libtorch's current stream on CUDA device `device` (`torch.cuda.current_stream`).
pub fn current_stream(device: usize) -> Result<StreamHandle, TchError> {
    stream_of("current CUDA stream", device, lsys_current_cuda_stream)
}

/// A stream from libtorch's pool on `device` (`torch.cuda.Stream()`); not made current.
pub fn pool_stream(device: usize) -> Result<StreamHandle, TchError> {
    stream_of("CUDA stream from the pool", device, lsys_cuda_pool_stream)
}

/// Makes `stream` libtorch's current stream on `device` (`torch.cuda.set_stream`).
pub fn set_current_stream(device: usize, stream: StreamHandle) -> Result<(), TchError> {
    // SAFETY: the handle came from `current_stream` or `pool_stream` (a live libtorch stream).
    crate::shim::check("set current CUDA stream", unsafe {
        lsys_set_current_cuda_stream(ordinal(device)?, stream.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_or_cuda_build_the_calls_are_errors_not_crashes() {
        if tch::Cuda::is_available() && compiled() {
            let s = current_stream(0).expect("current stream");
            let p = pool_stream(0).expect("pool stream");
            assert_ne!(s, p, "a pool stream is not the default stream");
            set_current_stream(0, p).expect("set");
            assert_eq!(current_stream(0).expect("current"), p);
            set_current_stream(0, s).expect("restore");
            assert_eq!(current_stream(0).expect("current"), s);
            return;
        }
        println!("SKIP (GPU part): no CUDA GPU or no CUDA in the shim; only the error path runs");
        if !compiled() {
            let err = current_stream(0).expect_err("no CUDA compiled in");
            assert!(err.to_string().contains("not compiled"), "{err}");
        } else {
            // Compiled with CUDA but no device: libtorch reports it, nothing aborts.
            assert!(current_stream(0).is_err());
        }
    }
}
