//! The engine of `strategy="ddp"` (lightning-core's `distributed` feature): the process group
//! (one per process, shared by every `Trainer` of the program, as `torch.distributed` is), the
//! launch of the other local ranks, and DDP's reducer around the module.

use crate::distributed::{ClusterEnv, LocalLaunch};
use crate::error::{Error, Result};
use crate::trainer::strategy::{Accelerator, DdpOptions};
use crate::trainer::TrainerConfig;
use lightning_dist::{ProcessGroup, Reducer, ReducerOptions, Store};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tch::{Device, Tensor};

/// The job this process belongs to: its place, its process group, and (on the launching
/// rank) the local ranks it started.
pub(crate) struct World {
    pub env: ClusterEnv,
    pub pg: ProcessGroup,
    /// The job's rendezvous store (FSDP's saves exchange what each rank wrote through it).
    pub store: Store,
    launch: Mutex<Option<LocalLaunch>>,
    timeout: Duration,
}

// c10d's process groups are thread-safe; the handle is only used from the training thread.
unsafe impl Send for World {}
unsafe impl Sync for World {}

static WORLD: OnceLock<Arc<World>> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

fn dist_err(e: lightning_dist::DistError) -> Error {
    Error::Config(format!("distributed: {e}"))
}

impl World {
    /// The job's world, set up on the first call of the process (launching the other local
    /// ranks when nothing else did) and shared afterwards.
    pub fn get(cfg: &TrainerConfig, opts: &DdpOptions) -> Result<Arc<World>> {
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = WORLD.get() {
            return Ok(w.clone());
        }
        let mut env = ClusterEnv::from_process(cfg.devices, cfg.num_nodes)
            .map_err(|e| Error::Config(e.to_string()))?;
        let launch = if env.must_launch() {
            let l = LocalLaunch::start(&env).map_err(|e| Error::Config(e.to_string()))?;
            env.master_port = Some(l.port);
            Some(l)
        } else {
            None
        };
        let port = match env.master_port {
            Some(p) => p,
            // A job of one process (FSDP on one device): its own store on a free port.
            None if env.world_size == 1 => 0,
            None => {
                return Err(Error::Config(
                    "strategy=\"ddp\": MASTER_PORT is not set for this rank".into(),
                ));
            }
        };
        let store = env.store(port, opts.timeout).map_err(dist_err)?;
        let pg = match cfg.accelerator.resolve() {
            Accelerator::Cuda => ProcessGroup::nccl(&store, env.rank, env.world_size, opts.timeout),
            _ => ProcessGroup::gloo(&store, env.rank, env.world_size, opts.timeout),
        }
        .map_err(dist_err)?;
        let world = Arc::new(World {
            env,
            pg,
            store,
            launch: Mutex::new(launch),
            timeout: opts.timeout,
        });
        let _ = WORLD.set(world.clone());
        Ok(world)
    }

    /// The device of this rank: `cuda:<local_rank>` on GPUs, else the CPU.
    pub fn device(&self, cfg: &TrainerConfig) -> Device {
        match cfg.accelerator.resolve() {
            Accelerator::Cuda => Device::Cuda(self.env.local_rank),
            _ => Device::Cpu,
        }
    }

    /// Waits for every rank at this point.
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.pg
            .barrier()
            .map_err(|e| Error::Config(format!("barrier ({what}): {e}")))
    }

    /// Averages, over the ranks, the values logged with `sync_dist` (one all-reduce for all of
    /// a step's values).
    pub fn sync_logged(&self, logged: &mut [crate::lightning_module::Logged]) -> Result<()> {
        let idx: Vec<usize> = (0..logged.len()).filter(|&i| logged[i].sync_dist).collect();
        if idx.is_empty() {
            return Ok(());
        }
        let mut values: Vec<f64> = idx.iter().map(|&i| logged[i].value).collect();
        self.sum(&mut values)?;
        let n = self.env.world_size as f64;
        for (&i, v) in idx.iter().zip(values) {
            logged[i].value = v / n;
        }
        Ok(())
    }

    /// Sums `values` over the ranks, in place (every rank gets the same sums).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut t = [Tensor::from_slice(values)];
        self.pg
            .all_reduce(&mut t, lightning_dist::ReduceOp::Sum)
            .map_err(dist_err)?;
        for (i, v) in values.iter_mut().enumerate() {
            *v = t[0].double_value(&[i as i64]);
        }
        Ok(())
    }

    /// Whether each flag is true on any rank (every rank gets the same answers), in one
    /// all-reduce.
    pub fn any_of<const N: usize>(&self, flags: [bool; N]) -> Result<[bool; N]> {
        let mut t = [Tensor::from_slice(&flags.map(i64::from))];
        self.pg
            .all_reduce(&mut t, lightning_dist::ReduceOp::Max)
            .map_err(dist_err)?;
        let mut out = [false; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = t[0].int64_value(&[i as i64]) != 0;
        }
        Ok(out)
    }

    /// A local rank that already failed, as an error naming it.
    pub fn failed_rank(&self) -> Option<Error> {
        let mut l = self.launch.lock().unwrap_or_else(|e| e.into_inner());
        l.as_mut()
            .and_then(LocalLaunch::failed)
            .map(|e| Error::Config(e.to_string()))
    }
}

/// Waits for the local ranks this process launched to finish (at most the strategy's
/// timeout), and returns the first failure. Call it at the end of a program that trained with
/// `strategy="ddp"` so rank 0 exits non-zero when another rank failed; a no-op elsewhere.
pub fn finish_distributed() -> Result<()> {
    let Some(w) = WORLD.get() else {
        return Ok(());
    };
    let launch = w.launch.lock().unwrap_or_else(|e| e.into_inner()).take();
    match launch {
        Some(l) => l.wait(w.timeout).map_err(|e| Error::Config(e.to_string())),
        None => Ok(()),
    }
}

/// DDP around one module for one `fit`: parameters and buffers broadcast from rank 0, then
/// gradients averaged by c10d's reducer during backward.
pub(crate) struct Ddp {
    pub world: Arc<World>,
    reducer: Reducer,
    find_unused: bool,
}

impl Ddp {
    /// Wraps the module's parameters (those that require gradients) and broadcasts its
    /// buffers from rank 0.
    pub fn wrap(
        world: Arc<World>,
        opts: &DdpOptions,
        params: &[Tensor],
        buffers: &[Tensor],
    ) -> Result<Ddp> {
        let params: Vec<Tensor> = params
            .iter()
            .filter(|p| p.requires_grad())
            .map(Tensor::shallow_clone)
            .collect();
        let reducer = Reducer::new(
            &world.pg,
            &params,
            &ReducerOptions {
                bucket_cap_mb: opts.bucket_cap_mb,
                find_unused_parameters: opts.find_unused_parameters,
                ..ReducerOptions::default()
            },
        )
        .map_err(dist_err)?;
        if !buffers.is_empty() {
            world.pg.broadcast_coalesced(buffers, 0).map_err(dist_err)?;
        }
        Ok(Ddp {
            world,
            reducer,
            find_unused: opts.find_unused_parameters,
        })
    }

    /// Before the forward of a batch: `sync` is false on micro-batches that accumulate
    /// gradients without stepping (DDP's `no_sync`).
    pub fn before_forward(&mut self, sync: bool) -> Result<()> {
        self.reducer.set_require_backward_grad_sync(sync);
        if sync {
            self.reducer.prepare_for_forward().map_err(dist_err)?;
        }
        Ok(())
    }

    /// Before every backward of a manual-optimization step (several per forward).
    pub fn before_manual_backward(&mut self, loss: &Tensor) -> Result<()> {
        self.before_backward(loss, true)
    }

    /// After the forward, before `backward()` of `loss`.
    pub fn before_backward(&mut self, loss: &Tensor, sync: bool) -> Result<()> {
        if !sync {
            return Ok(());
        }
        let outputs: Vec<&Tensor> = if self.find_unused { vec![loss] } else { vec![] };
        self.reducer
            .prepare_for_backward(&outputs)
            .map_err(dist_err)
    }
}

impl crate::lightning_module::BackwardSync for Ddp {
    fn before_backward(&mut self, loss: &Tensor) -> Result<()> {
        self.before_manual_backward(loss)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}
