//! The libtorch shim of lightning-rs: what tch does not expose, through a small C++ shim
//! (`csrc/`) compiled against the libtorch torch-sys links. Nothing here is distributed; the
//! single-process code of lightning-core (optimizers, mixed precision, CUDA kernels, pinned
//! checkpoint snapshots) uses it, and lightning-dist's c10d shim shares its error bridge.
//!
//! - [`ops`]: the few tensor ops tch leaves out (`addcmul_`/`addcdiv_`/`add_` with their
//!   scalars, `grad = None`), which the optimizers need to run `torch.optim`'s exact kernels;
//!   [`ops::Autocast`] (`torch.autocast` on the CPU too) and [`ops::empty_pinned`]
//!   (page-locked host memory).
//! - [`cuda`]: libtorch's current CUDA stream (custom kernels launch on it), pool streams.
//! - [`shim`]: the error bridge, for crates with their own shim over the same libtorch.
//!
//! Every C++ exception becomes an error naming the operation, never an abort or an unwind.

#![warn(missing_docs)]

pub mod cuda;
pub mod ops;
pub mod shim;
