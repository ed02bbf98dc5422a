//! DDP's gradient reducer: c10d's `Reducer`, driven as `DistributedDataParallel` drives it.

use std::ptr::NonNull;

use tch::Tensor;

use crate::error::{DistError, Result};
use crate::ffi::{self, check, tensor_ptrs};
use crate::process_group::ProcessGroup;

/// DDP's default bucket cap (`bucket_cap_mb=None`): 25 MiB.
pub const DEFAULT_BUCKET_CAP_BYTES: usize = 25 * 1024 * 1024;
/// DDP's default first bucket (`dist._DEFAULT_FIRST_BUCKET_BYTES`): 1 MiB.
pub const DEFAULT_FIRST_BUCKET_BYTES: usize = 1024 * 1024;

/// Options of a [`Reducer`], named as `DistributedDataParallel`'s arguments.
#[derive(Clone, Debug)]
pub struct ReducerOptions {
    /// Bucket cap in MiB. `None` (DDP's default): 25 MiB with a 1 MiB first bucket; `Some(x)`:
    /// every bucket, the first included, holds up to `x` MiB (as DDP with `bucket_cap_mb=x`).
    pub bucket_cap_mb: Option<f64>,
    /// Traverse the autograd graph from the outputs given to
    /// [`Reducer::prepare_for_backward`] and mark parameters it does not reach as ready, so
    /// a forward that skips parameters does not stall the reduction. Costs a graph walk per
    /// step; leave off when every parameter gets a gradient.
    pub find_unused_parameters: bool,
    /// Make the `.grad` tensors views into the communication buckets (saves a copy and
    /// memory). `.grad` must then only be zeroed in place (`p.grad().zero_()`): tch's
    /// `Tensor::zero_grad` (which lightning-core's optimizers call) does `detach_()` first,
    /// which libtorch refuses on a view, and panics.
    pub gradient_as_bucket_view: bool,
    /// DDP's `init_sync`: at construction, check that every rank has parameters of the same
    /// shapes, then broadcast rank 0's values into everyone's parameters. Buffers (running
    /// statistics) are not the reducer's: broadcast them with
    /// [`ProcessGroup::broadcast_coalesced`].
    pub init_sync: bool,
}

impl Default for ReducerOptions {
    fn default() -> Self {
        ReducerOptions {
            bucket_cap_mb: None,
            find_unused_parameters: false,
            gradient_as_bucket_view: false,
            init_sync: true,
        }
    }
}

/// c10d's DDP `Reducer` over a model's parameters: after `backward()`, every parameter's
/// `.grad` holds the mean over ranks of the ranks' gradients, reduced in buckets while the
/// backward pass still runs, exactly as PyTorch's `DistributedDataParallel`.
///
/// One training step, as DDP's `forward` and `backward` do it:
///
/// ```no_run
/// # use lightning_dist::{ProcessGroup, Reducer, ReducerOptions};
/// # fn step(pg: &ProcessGroup, params: &[tch::Tensor], x: &tch::Tensor) -> lightning_dist::Result<()> {
/// let mut reducer = Reducer::new(pg, params, &ReducerOptions::default())?; // once
/// reducer.prepare_for_forward()?;
/// let loss = x.matmul(&params[0]).sum(tch::Kind::Float); // the model's forward
/// reducer.prepare_for_backward(&[&loss])?;
/// loss.backward(); // gradients are averaged across ranks when this returns
/// # Ok(()) }
/// ```
///
/// The all-reduce runs inside `backward()` (autograd hooks, then c10d's finalize callback), so a
/// communication failure (a peer gone, the group's timeout) is an error of the backward call:
/// tch's `backward()` panics on it, `f_backward()` returns it. The reducer is then unusable;
/// drop it (and the group) and stop.
///
/// Gradient accumulation (DDP's `no_sync()`): with
/// [`set_require_backward_grad_sync(false)`](Reducer::set_require_backward_grad_sync) (or
/// inside [`no_sync`](Reducer::no_sync)) the two `prepare_*` calls skip the reducer, so
/// `backward()` only accumulates local gradients; the next synced step reduces the
/// accumulated sums. Skipping the two calls yourself does the same.
pub struct Reducer {
    raw: NonNull<ffi::LdistReducer>,
    require_backward_grad_sync: bool,
    num_params: usize,
}

// SAFETY: the c10d Reducer is used from the autograd engine's threads already (its hooks run
// there, under its own mutex); moving the owning handle between threads is fine. It is not
// Sync: the prepare calls must not race each other.
unsafe impl Send for Reducer {}

impl Reducer {
    /// Builds the reducer over `params` (leaves that require grad, all on one device), as DDP's
    /// constructor: with [`ReducerOptions::init_sync`], verifies shapes across ranks and
    /// broadcasts rank 0's values first (a collective: every rank must call this). Buckets
    /// follow `compute_bucket_assignment_by_size`: one bucket for the first step, then
    /// rebuilt in gradient-ready order (first bucket 1 MiB, then the cap) unless
    /// `find_unused_parameters`, which buckets by the caps from the start.
    pub fn new(pg: &ProcessGroup, params: &[Tensor], opts: &ReducerOptions) -> Result<Self> {
        const OP: &str = "Reducer::new";
        let (cap, first) = match opts.bucket_cap_mb {
            None => (DEFAULT_BUCKET_CAP_BYTES, DEFAULT_FIRST_BUCKET_BYTES),
            Some(mb) if mb.is_finite() && mb > 0.0 => {
                let bytes = (mb * 1024.0 * 1024.0) as usize;
                (bytes.max(1), bytes.max(1))
            }
            Some(mb) => {
                return Err(DistError::InvalidArgument {
                    op: OP,
                    message: format!("bucket_cap_mb must be positive, got {mb}"),
                })
            }
        };
        let ptrs = tensor_ptrs(params.iter());
        let mut raw = std::ptr::null_mut();
        // SAFETY: live group and tensors; `raw` is written on success only.
        check(OP, unsafe {
            ffi::ldist_reducer_new(
                pg.raw(),
                ptrs.as_ptr(),
                ptrs.len(),
                cap as i64,
                first as i64,
                opts.find_unused_parameters.into(),
                opts.gradient_as_bucket_view.into(),
                opts.init_sync.into(),
                &mut raw,
            )
        })?;
        Ok(Reducer {
            raw: NonNull::new(raw).expect("the shim returned no reducer"),
            require_backward_grad_sync: true,
            num_params: params.len(),
        })
    }

    /// The number of parameters the reducer covers.
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// DDP's pre-forward: call before the forward pass. When syncing (and grad mode is on),
    /// `prepare_for_forward`; then, with grad mode on, rebuilds the buckets once after the
    /// first backward (a collective). Returns whether the buckets were rebuilt now.
    pub fn prepare_for_forward(&mut self) -> Result<bool> {
        let mut rebuilt = 0;
        // SAFETY: live handle, valid out pointer.
        check("Reducer::prepare_for_forward", unsafe {
            ffi::ldist_reducer_pre_forward(
                self.raw.as_ptr(),
                self.require_backward_grad_sync.into(),
                &mut rebuilt,
            )
        })?;
        Ok(rebuilt != 0)
    }

    /// DDP's post-forward: call after the forward pass, before `backward()`, with the tensors
    /// the forward produced (only read with `find_unused_parameters`). A no-op when not
    /// syncing or when grad mode is off; otherwise the next `backward()` reduces gradients.
    pub fn prepare_for_backward(&mut self, outputs: &[&Tensor]) -> Result<()> {
        // SAFETY: no arguments.
        let grad_mode = unsafe { ffi::ldist_grad_mode_enabled() != 0 };
        if !self.require_backward_grad_sync || !grad_mode {
            return Ok(());
        }
        let ptrs = tensor_ptrs(outputs.iter().copied());
        // SAFETY: live handle and tensors borrowed for the call.
        check("Reducer::prepare_for_backward", unsafe {
            ffi::ldist_reducer_prepare_for_backward(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len())
        })
    }

    /// DDP's `require_backward_grad_sync`: `false` turns the next steps into local gradient
    /// accumulation (see the type's docs).
    pub fn set_require_backward_grad_sync(&mut self, sync: bool) {
        self.require_backward_grad_sync = sync;
    }

    /// Whether steps currently reduce gradients.
    pub fn require_backward_grad_sync(&self) -> bool {
        self.require_backward_grad_sync
    }

    /// DDP's `no_sync()` context: runs `f` with gradient sync off, then restores the previous
    /// setting.
    pub fn no_sync<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let old = self.require_backward_grad_sync;
        self.require_backward_grad_sync = false;
        let out = f(self);
        self.require_backward_grad_sync = old;
        out
    }

    /// The number of gradient buckets (after the first step: the rebuilt layout).
    pub fn bucket_count(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: live handle, valid out pointer.
        check("Reducer::bucket_count", unsafe {
            ffi::ldist_reducer_bucket_count(self.raw.as_ptr(), &mut n)
        })?;
        Ok(n)
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and freed once; the shim removes the autograd hooks.
        unsafe { ffi::ldist_reducer_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer")
            .field("num_params", &self.num_params)
            .field(
                "require_backward_grad_sync",
                &self.require_backward_grad_sync,
            )
            .finish_non_exhaustive()
    }
}
