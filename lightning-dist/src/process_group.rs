//! c10d process groups (Gloo, NCCL) and their collectives.

use std::ffi::c_int;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tch::Tensor;

use crate::error::{DistError, Result};
use crate::ffi::{self, check, millis, tensor_ptrs};
use crate::store::Store;

/// The buffer size of [`ProcessGroup::broadcast_coalesced`]: DDP's `broadcast_bucket_size`.
pub const BROADCAST_BUCKET_BYTES: usize = 250 * 1024 * 1024;

/// A reduction for [`ProcessGroup::all_reduce`] (c10d's `ReduceOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise mean over ranks. NCCL reduces it natively; c10d's Gloo has no AVG, so
    /// there it is a `Sum` followed by a division by the world size in place (floating-point
    /// and complex tensors only: an integer tensor is an error, before any communication).
    Avg,
    /// Element-wise product.
    Product,
    /// Element-wise minimum.
    Min,
    /// Element-wise maximum.
    Max,
}

impl ReduceOp {
    /// c10d's `RedOpType` number.
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Product => 2,
            ReduceOp::Min => 3,
            ReduceOp::Max => 4,
        }
    }
}

/// The communication backend behind a [`ProcessGroup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (and CUDA tensors through Gloo's CUDA path).
    Gloo,
    /// NCCL: CUDA tensors.
    Nccl,
}

/// Whether NCCL support was compiled in (CUDA headers were found at build time).
pub fn nccl_compiled() -> bool {
    // SAFETY: no arguments, no failure.
    unsafe { ffi::ldist_nccl_compiled() != 0 }
}

/// Why NCCL support is or is not compiled in, as the build script found it.
pub fn nccl_build_status() -> &'static str {
    env!("LIGHTNING_DIST_NCCL_STATUS")
}

/// Process-wide count of groups made, for their key prefixes in the store: every rank makes
/// its groups in the same order (c10d's rule), so the n-th group of every rank meets under
/// the same prefix, as torch.distributed's `PrefixStore(f"{group_count}/", store)`.
static GROUP_COUNT: AtomicU64 = AtomicU64::new(0);

/// A c10d `ProcessGroup`: `size()` processes that run collectives together.
///
/// Every collective waits for completion (`Work::wait`) and reports a failure of any rank,
/// a peer that went away, or the group's timeout as an error. All ranks must call the same
/// collectives in the same order with tensors of matching shapes and dtypes.
///
/// # Example
///
/// A group of one process (real groups run one process per rank, each with its own `rank`,
/// joining the store rank 0 hosts; see [`ClusterEnv`](crate::ClusterEnv)):
///
/// ```
/// use std::time::Duration;
/// use lightning_dist::{ProcessGroup, ReduceOp, Store};
/// use tch::{Kind, Tensor};
///
/// let timeout = Duration::from_secs(30);
/// let store = Store::server("127.0.0.1", 0, 1, timeout)?; // port 0: any free port
/// let pg = ProcessGroup::gloo(&store, 0, 1, timeout)?;
/// let mut grads = [Tensor::from_slice(&[1.0f32, 2.0]), Tensor::ones([3], (Kind::Float, tch::Device::Cpu))];
/// pg.all_reduce(&mut grads, ReduceOp::Avg)?;
/// assert_eq!(Vec::<f32>::try_from(&grads[0])?, [1.0, 2.0]);
/// let gathered = pg.all_gather(&Tensor::from_slice(&[7i64]))?;
/// assert_eq!(gathered.len(), 1);
/// pg.barrier()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ProcessGroup {
    raw: NonNull<ffi::LdistPg>,
    rank: usize,
    size: usize,
    backend: Backend,
}

// SAFETY: c10d process groups are used from several threads in PyTorch (DDP's autograd
// hooks run on the autograd engine's threads); the handle is never mutated from Rust.
unsafe impl Send for ProcessGroup {}
// SAFETY: as above.
unsafe impl Sync for ProcessGroup {}

type NewFn = unsafe extern "C" fn(
    *mut ffi::LdistStore,
    *const std::ffi::c_char,
    usize,
    c_int,
    c_int,
    i64,
    *mut *mut ffi::LdistPg,
) -> *mut std::ffi::c_char;

impl ProcessGroup {
    /// Joins a Gloo group of `world_size` ranks as `rank`, meeting the others through
    /// `store`. Blocks until every rank has joined (up to the store's timeout); `timeout`
    /// bounds each later collective.
    pub fn gloo(store: &Store, rank: usize, world_size: usize, timeout: Duration) -> Result<Self> {
        Self::new(
            "ProcessGroup::gloo",
            ffi::ldist_pg_new_gloo,
            Backend::Gloo,
            store,
            rank,
            world_size,
            timeout,
        )
    }

    /// Joins an NCCL group (CUDA tensors). Errors without a GPU ("no GPUs found"), when NCCL
    /// support was not compiled in ([`nccl_build_status`]), or when two ranks share one GPU
    /// (NCCL refuses that). `timeout` bounds each collective; note that c10d's NCCL watchdog
    /// tears the process down when a collective times out (`TORCH_NCCL_ASYNC_ERROR_HANDLING`).
    pub fn nccl(store: &Store, rank: usize, world_size: usize, timeout: Duration) -> Result<Self> {
        if !nccl_compiled() {
            return Err(DistError::InvalidArgument {
                op: "ProcessGroup::nccl",
                message: format!("NCCL support is {}", nccl_build_status()),
            });
        }
        Self::new(
            "ProcessGroup::nccl",
            ffi::ldist_pg_new_nccl,
            Backend::Nccl,
            store,
            rank,
            world_size,
            timeout,
        )
    }

    fn new(
        op: &'static str,
        make: NewFn,
        backend: Backend,
        store: &Store,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let invalid = |message: String| DistError::InvalidArgument { op, message };
        if world_size == 0 || rank >= world_size {
            return Err(invalid(format!(
                "rank {rank} is not in a group of {world_size}"
            )));
        }
        let size = c_int::try_from(world_size)
            .map_err(|_| invalid(format!("world size {world_size} is too large")))?;
        let prefix = format!("{}/", GROUP_COUNT.fetch_add(1, Ordering::SeqCst));
        let mut raw = std::ptr::null_mut();
        // SAFETY: live store handle, valid (ptr, len) prefix; `raw` is written on success only.
        check(op, unsafe {
            make(
                store.raw(),
                prefix.as_ptr().cast(),
                prefix.len(),
                rank as c_int,
                size,
                millis(op, timeout)?,
                &mut raw,
            )
        })?;
        Ok(ProcessGroup {
            raw: NonNull::new(raw).expect("the shim returned no process group"),
            rank,
            size: world_size,
            backend,
        })
    }

    pub(crate) fn raw(&self) -> *mut ffi::LdistPg {
        self.raw.as_ptr()
    }

    /// This process's rank in the group.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn root(&self, op: &'static str, root: usize) -> Result<c_int> {
        if root >= self.size {
            return Err(DistError::InvalidArgument {
                op,
                message: format!("root {root} is not a rank of a group of {}", self.size),
            });
        }
        Ok(root as c_int)
    }

    /// Reduces each tensor element-wise across ranks, in place: afterwards every rank holds
    /// the result. Each tensor is its own reduction (all are started, then all awaited).
    /// Tensors must be contiguous (Gloo) and on the backend's device.
    pub fn all_reduce(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        let ptrs = tensor_ptrs(tensors.iter());
        // SAFETY: `ptrs` are live tensors borrowed for the call.
        check("all_reduce", unsafe {
            ffi::ldist_pg_all_reduce(self.raw(), ptrs.as_ptr(), ptrs.len(), op.code())
        })
    }

    /// Copies `root`'s tensors into every other rank's, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        let root = self.root("broadcast", root)?;
        let ptrs = tensor_ptrs(tensors.iter());
        // SAFETY: `ptrs` are live tensors borrowed for the call.
        check("broadcast", unsafe {
            ffi::ldist_pg_broadcast(self.raw(), ptrs.as_ptr(), ptrs.len(), root)
        })
    }

    /// Every rank's `tensor`, indexed by rank (same shape and dtype on every rank).
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        let mut out = vec![std::ptr::null_mut(); self.size];
        // SAFETY: `out` has one slot per rank; the shim fills them with tensors we own.
        let status = check("all_gather", unsafe {
            ffi::ldist_pg_all_gather(self.raw(), tensor.as_ptr(), out.as_mut_ptr())
        });
        // SAFETY: every non-null slot is a new `at::Tensor` handed over to us.
        let tensors: Vec<Tensor> = out
            .into_iter()
            .filter(|p| !p.is_null())
            .map(|p| unsafe { Tensor::from_ptr(p) })
            .collect();
        status?;
        Ok(tensors)
    }

    /// `torch.distributed.all_gather_into_tensor`: every rank's `input` concatenated into
    /// `output` in rank order (`output` holds world-size times `input`'s elements; both
    /// contiguous, same dtype). What FSDP gathers a sharded parameter with.
    pub fn all_gather_into(&self, output: &mut Tensor, input: &Tensor) -> Result<()> {
        // SAFETY: live tensors borrowed for the call.
        check("all_gather_into_tensor", unsafe {
            ffi::ldist_pg_all_gather_into(self.raw(), output.as_mut_ptr(), input.as_ptr())
        })
    }

    /// `torch.distributed.reduce_scatter_tensor`: `input` (world-size blocks of `output`'s
    /// size) reduced element-wise over the ranks; this rank receives block `rank` in
    /// `output`. `Avg` on Gloo is a sum then a division, as for [`Self::all_reduce`]. What
    /// FSDP reduces gradients with.
    pub fn reduce_scatter_into(
        &self,
        output: &mut Tensor,
        input: &Tensor,
        op: ReduceOp,
    ) -> Result<()> {
        // SAFETY: live tensors borrowed for the call.
        check("reduce_scatter_tensor", unsafe {
            ffi::ldist_pg_reduce_scatter_into(
                self.raw(),
                output.as_mut_ptr(),
                input.as_ptr(),
                op.code(),
            )
        })
    }

    /// Blocks until every rank has reached the barrier.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live handle.
        check("barrier", unsafe { ffi::ldist_pg_barrier(self.raw()) })
    }

    /// Copies `root`'s values into these tensors on every rank, flattened into buckets of
    /// [`BROADCAST_BUCKET_BYTES`] (c10d's `broadcast_coalesced`, what DDP does to parameters and
    /// buffers at start). Runs with grad mode off, so parameters (leaves that require grad)
    /// can be written. The tensors are written through storage they share with the caller's
    /// handles (tch's shallow copies of a `VarStore`'s variables see the new values).
    pub fn broadcast_coalesced(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let root = self.root("broadcast_coalesced", root)?;
        let ptrs = tensor_ptrs(tensors.iter());
        // SAFETY: `ptrs` are live tensors borrowed for the call.
        check("broadcast_coalesced", unsafe {
            ffi::ldist_pg_broadcast_coalesced(
                self.raw(),
                ptrs.as_ptr(),
                ptrs.len(),
                BROADCAST_BUCKET_BYTES,
                root,
            )
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and freed once (a Reducer keeps its own reference to the
        // c10d group).
        unsafe { ffi::ldist_pg_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}
