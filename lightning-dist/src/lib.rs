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
//!
//! The C++ side is a small shim (`csrc/`) compiled against the libtorch lightning-sys compiled
//! its own shim with (the tensor ops tch leaves out, autocast, pinned memory and CUDA streams
//! live there: nothing in them is distributed); every C++ exception becomes a [`DistError`]
//! naming the operation, never an abort or an unwind, through lightning-sys's error bridge.

#![warn(missing_docs)]

mod env;
mod error;
mod ffi;
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
