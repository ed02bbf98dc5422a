//! Distributed training's process side: where this process sits in the job
//! ([`ClusterEnv`], from the engine crate: our own launcher, `torchrun`, or SLURM) and Lightning's subprocess
//! launcher ([`LocalLaunch`]: rank 0 starts the other local ranks and watches them).

mod launch;

pub use launch::{free_port, LaunchError, LocalLaunch};
pub use lightning_dist::{first_slurm_host, ClusterEnv, ClusterKind, Env, EnvError};
