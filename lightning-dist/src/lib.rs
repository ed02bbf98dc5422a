//! The engine of distributed data-parallel training for lightning-rs: libtorch's own c10d
//! behind a safe API. Nothing here reimplements communication; every collective is c10d's,
//! as PyTorch's `DistributedDataParallel` and Lightning's `strategy="ddp"` use it.
//!
//! - [`Store`]: c10d's `TCPStore`, the rendezvous (`set`/`get`/`add`/`wait`).
//! - [`ProcessGroup`]: a Gloo (CPU) or NCCL (CUDA) group and its collectives
//!   (`all_reduce`, `broadcast`, `all_gather`, `barrier`, `broadcast_coalesced`).
//! - [`Reducer`]: DDP's bucketed gradient averaging, hooked into autograd.
//! - [`ClusterEnv`]: where this process sits in the job (our launcher, `torchrun`, SLURM) and
//!   the rendezvous store that implies.
//! - [`cuda`]: libtorch's current CUDA stream (custom kernels launch on it).
//! - [`ops`]: the few tensor ops tch leaves out (`addcmul_` with `value`, `grad = None`), which
//!   the optimizers need to run `torch.optim`'s exact kernels; they share the shim's build.
//!
//! The C++ side is a small shim (`csrc/`) compiled against the libtorch torch-sys links; every
//! C++ exception becomes a [`DistError`] naming the operation, never an abort or an unwind.

#![warn(missing_docs)]

pub mod cuda;
mod env;
mod error;
mod ffi;
pub mod ops;
mod process_group;
mod reducer;
mod store;

pub use env::{first_slurm_host, ClusterEnv, ClusterKind, Env, EnvError};
pub use error::{DistError, Result};
pub use process_group::{
    nccl_build_status, nccl_compiled, Backend, ProcessGroup, ReduceOp, BROADCAST_BUCKET_BYTES,
};
pub use reducer::{Reducer, ReducerOptions, DEFAULT_BUCKET_CAP_BYTES, DEFAULT_FIRST_BUCKET_BYTES};
pub use store::{Store, StoreOptions};
