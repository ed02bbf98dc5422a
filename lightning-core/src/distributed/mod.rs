//! Distributed training's process side: where this process sits in the job
//! ([`ClusterEnv`]: our own launcher, `torchrun`, or SLURM) and Lightning's subprocess
//! launcher ([`LocalLaunch`]: rank 0 starts the other local ranks and watches them).

mod env;
mod launch;

pub use env::{first_slurm_host, ClusterEnv, ClusterKind, Env, EnvError};
pub use launch::{free_port, LaunchError, LocalLaunch};
