//! Tensor ops that tch's generated API leaves out, called the way `torch.optim` calls them.
//!
//! tch drops the `value` / `alpha` scalars of `addcmul_`, `addcdiv_` and `add_`, so a port of
//! `torch.optim` on tch needs an extra elementwise pass (and a temporary) per scaled term, and
//! tch cannot set a gradient to `None`. These go to the same ATen kernels PyTorch runs, so the
//! results are bit for bit those of the PyTorch code they mirror.
//!
//! ```
//! use tch::{Kind, Tensor};
//! let mut v = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
//! let g = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
//! lightning_sys::ops::addcmul_(&mut v, &g, &g, 0.5)?;
//! assert_eq!(Vec::<f32>::try_from(&v).unwrap(), [0.5, 2.0, 4.5]);
//! # Ok::<(), tch::TchError>(())
//! ```

use std::ffi::c_char;

use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

use crate::shim::check;

unsafe extern "C" {
    fn lsys_addcmul_(
        s: *mut C_tensor,
        t1: *const C_tensor,
        t2: *const C_tensor,
        value: f64,
    ) -> *mut c_char;
    fn lsys_addcdiv_(
        s: *mut C_tensor,
        t1: *const C_tensor,
        t2: *const C_tensor,
        value: f64,
    ) -> *mut c_char;
    fn lsys_add_(s: *mut C_tensor, other: *const C_tensor, alpha: f64) -> *mut c_char;
    fn lsys_add(
        s: *const C_tensor,
        other: *const C_tensor,
        alpha: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn lsys_grad_set_to_none(param: *mut C_tensor) -> *mut c_char;
    fn lsys_grad_set(param: *mut C_tensor, grad: *const C_tensor) -> *mut c_char;
    fn lsys_same_variable(a: *const C_tensor, b: *const C_tensor) -> std::ffi::c_int;
    fn lsys_register_grad_hook(t: *mut C_tensor, f: HookFn, tag: u64) -> *mut c_char;
    fn lsys_set_post_accumulate_grad_hook(
        t: *mut C_tensor,
        f: Option<HookFn>,
        tag: u64,
    ) -> *mut c_char;
    fn lsys_empty_pinned(
        dtype_of: *const C_tensor,
        sizes: *const i64,
        ndim: usize,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn lsys_autocast_enter(device_type: i8, dtype: i8, prev: *mut AutocastPrev) -> *mut c_char;
    fn lsys_autocast_exit(device_type: i8, prev: *const AutocastPrev) -> *mut c_char;
}

/// The autocast state of one device type before [`Autocast::enter`] (`lsys_autocast_prev`).
#[repr(C)]
#[derive(Debug, Default)]
struct AutocastPrev {
    dtype: i8,
    enabled: bool,
    cache_enabled: bool,
}

/// `t += value * t1 * t2` in place (`torch.Tensor.addcmul_(t1, t2, value=value)`).
pub fn addcmul_(t: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<(), TchError> {
    // SAFETY: the pointers are live tch tensors (at::Tensor*) for the whole call; the shim
    // changes only `t`'s storage, never the handle objects.
    check("addcmul_", unsafe {
        lsys_addcmul_(t.as_mut_ptr(), t1.as_ptr(), t2.as_ptr(), value)
    })
}

/// `t += value * t1 / t2` in place (`torch.Tensor.addcdiv_(t1, t2, value=value)`).
pub fn addcdiv_(t: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) -> Result<(), TchError> {
    // SAFETY: as in `addcmul_`.
    check("addcdiv_", unsafe {
        lsys_addcdiv_(t.as_mut_ptr(), t1.as_ptr(), t2.as_ptr(), value)
    })
}

/// `t += alpha * other` in place (`torch.Tensor.add_(other, alpha=alpha)`).
pub fn add_(t: &mut Tensor, other: &Tensor, alpha: f64) -> Result<(), TchError> {
    // SAFETY: as in `addcmul_`.
    check("add_", unsafe {
        lsys_add_(t.as_mut_ptr(), other.as_ptr(), alpha)
    })
}

/// `t + alpha * other` as a new tensor (`torch.Tensor.add(other, alpha=alpha)`).
pub fn add(t: &Tensor, other: &Tensor, alpha: f64) -> Result<Tensor, TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as in `addcmul_`; on success `out` is a new heap at::Tensor that we own.
    check("add", unsafe {
        lsys_add(t.as_ptr(), other.as_ptr(), alpha, &mut out)
    })?;
    // SAFETY: the shim allocated `out` with `new at::Tensor`, as tch's own outputs are.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// An uninitialized tensor in page-locked (pinned) host memory, `torch.empty(size, dtype=kind,
/// pin_memory=True)`: from the CUDA caching host allocator, so a block freed by an earlier
/// snapshot is reused, and without the pageable tensor and copy that `Tensor::pin_memory`
/// makes first. Device-to-host and host-to-device copies with it run at full bus speed.
///
/// # Errors
/// Where libtorch has no pinned-memory allocator (no CUDA), ATen's message.
pub fn empty_pinned(size: &[i64], kind: Kind) -> Result<Tensor, TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // The dtype travels as an empty tensor of it (tch keeps its ScalarType codes private).
    let dtype_of = Tensor::f_empty([0], (kind, Device::Cpu))?;
    // SAFETY: `dtype_of` and `size` are live for the call; on success `out` is a new heap
    // at::Tensor we own.
    check("empty_pinned", unsafe {
        lsys_empty_pinned(dtype_of.as_ptr(), size.as_ptr(), size.len(), &mut out)
    })?;
    // SAFETY: the shim allocated `out` with `new at::Tensor`, as tch's own outputs are.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Sets `param.grad` to `None` (`zero_grad(set_to_none=True)`): the next backward stores its
/// gradient instead of adding it to a zeroed one, and `param.grad()` is undefined until then.
pub fn set_grad_to_none(param: &Tensor) -> Result<(), TchError> {
    // SAFETY: `param` is a live tch tensor; resetting its grad slot changes the autograd
    // metadata it shares with every handle of the same variable, as torch's does.
    check("set_grad_to_none", unsafe {
        lsys_grad_set_to_none(param.as_ptr() as *mut C_tensor)
    })
}

/// Sets `param.grad` to `grad` (same size), shared by every handle of the variable: how a
/// sharded strategy hands the optimizer its reduced gradient shard.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<(), TchError> {
    // SAFETY: live tch tensors; the grad slot is autograd metadata shared by the variable's
    // handles, as `param.grad = grad` in torch.
    check("set_grad", unsafe {
        lsys_grad_set(param.as_ptr() as *mut C_tensor, grad.as_ptr())
    })
}

/// Whether `a` and `b` are handles of one variable (the same `TensorImpl`), as an optimizer's
/// parameter and the module's are.
pub fn same_variable(a: &Tensor, b: &Tensor) -> bool {
    // SAFETY: reads two live tensors' impl pointers.
    unsafe { lsys_same_variable(a.as_ptr(), b.as_ptr()) != 0 }
}

/// An autograd hook: called with the tag it was registered with, on the thread driving the
/// backward. It must not unwind (catch panics inside).
pub type HookFn = extern "C" fn(tag: u64);

/// `t.register_hook(...)` on a tensor that requires grad: `f(tag)` runs when `t`'s gradient
/// has been computed, before the ops that made `t` run their backward (the gradient is not
/// changed). The hook lives as long as `t`'s autograd node.
pub fn register_grad_hook(t: &Tensor, f: HookFn, tag: u64) -> Result<(), TchError> {
    // SAFETY: `t` is a live tch tensor; the hook keeps only `f` (a plain function) and `tag`.
    check("register_grad_hook", unsafe {
        lsys_register_grad_hook(t.as_ptr() as *mut C_tensor, f, tag)
    })
}

/// `t.register_post_accumulate_grad_hook(...)` on a leaf (one per tensor; `None` removes
/// it): `f(tag)` runs after a backward has accumulated into `t.grad`.
pub fn set_post_accumulate_grad_hook(
    t: &Tensor,
    f: Option<HookFn>,
    tag: u64,
) -> Result<(), TchError> {
    // SAFETY: as `register_grad_hook`; the hook is stored in the variable's autograd meta.
    check("set_post_accumulate_grad_hook", unsafe {
        lsys_set_post_accumulate_grad_hook(t.as_ptr() as *mut C_tensor, f, tag)
    })
}

/// `torch.autocast(device_type, dtype)` for as long as the guard lives: ops on that device
/// type that autocast covers (matmul, linear, conv, ...) run in `kind`; dropping the guard
/// restores the previous state, as leaving the `with` block does. tch's own autocast covers
/// CUDA only; this one takes the CPU too (`bf16` or `f16`, as `torch.autocast("cpu")`).
///
/// Autocast state is per thread, so the guard stays on the thread that made it.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use lightning_sys::ops::Autocast;
/// let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
/// {
///     let _bf16 = Autocast::enter(Device::Cpu, Kind::BFloat16)?;
///     assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
/// }
/// assert_eq!(a.matmul(&a).kind(), Kind::Float);
/// # Ok::<(), tch::TchError>(())
/// ```
#[derive(Debug)]
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device_type: i8,
    prev: AutocastPrev,
    // Autocast state is thread-local: the guard must not move to another thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Enters autocast to `kind` (`Half` or `BFloat16`) for `device`'s type (CPU or CUDA).
    pub fn enter(device: Device, kind: Kind) -> Result<Autocast, TchError> {
        let device_type = match device {
            Device::Cpu => 0,
            Device::Cuda(_) => 1,
            Device::Mps => 13,
            other => {
                return Err(TchError::Torch(format!(
                    "autocast: unsupported device {other:?} (expected cpu, cuda or mps)"
                )))
            }
        };
        // c10::ScalarType codes.
        let dtype = match kind {
            Kind::Half => 5,
            Kind::BFloat16 => 15,
            other => {
                return Err(TchError::Torch(format!(
                    "autocast: unsupported dtype {other:?} (expected Half or BFloat16)"
                )))
            }
        };
        let mut prev = AutocastPrev::default();
        // SAFETY: plain setters of libtorch's thread-local autocast state; `prev` is a live
        // out-parameter of the C layout the shim declares.
        check("autocast", unsafe {
            lsys_autocast_enter(device_type, dtype, &mut prev)
        })?;
        Ok(Autocast {
            device_type,
            prev,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores the state `enter` saved, on the same thread. The setters do not
        // throw for a device type `enter` accepted, so there is no error to report here.
        let err = unsafe { lsys_autocast_exit(self.device_type, &self.prev) };
        let _ = check("autocast exit", err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t).expect("f32 tensor")
    }

    #[test]
    fn scaled_ops_compute_what_torch_computes() {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        let (a, b, c) = (
            Tensor::randn([1000], opts),
            Tensor::randn([1000], opts),
            Tensor::rand([1000], opts) + 0.5,
        );
        // ATen evaluates self + value * t1 * t2 and self + value * t1 / t2 left to right:
        // the same bits as scaling t1 first.
        let mut x = a.copy();
        addcmul_(&mut x, &b, &c, 0.001).expect("addcmul_");
        let mut y = a.copy();
        let _ = y.addcmul_(&(&b * 0.001), &c);
        assert_eq!(vals(&x), vals(&y));
        let mut x = a.copy();
        addcdiv_(&mut x, &b, &c, -0.3).expect("addcdiv_");
        let mut y = a.copy();
        let _ = y.addcdiv_(&(&b * -0.3), &c);
        assert_eq!(vals(&x), vals(&y));
        // add's alpha may be fused (one rounding) where the CPU has FMA: close to a + 0.7 b,
        // and the out-of-place op equals the in-place one.
        let mut x = a.copy();
        add_(&mut x, &b, 0.7).expect("add_");
        let reference = &a + &b * 0.7;
        for (got, want) in vals(&x).iter().zip(vals(&reference)) {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
        assert_eq!(vals(&add(&a, &b, 0.7).expect("add")), vals(&x));
        // alpha = 1 is the plain sum.
        let mut x = a.copy();
        add_(&mut x, &b, 1.0).expect("add_");
        assert_eq!(vals(&x), vals(&(&a + &b)));
    }

    #[test]
    fn autocast_nests_and_restores_per_device_type() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        {
            let _outer = Autocast::enter(Device::Cpu, Kind::BFloat16).expect("bf16");
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            {
                let _inner = Autocast::enter(Device::Cpu, Kind::Half).expect("f16");
                assert_eq!(a.matmul(&a).kind(), Kind::Half);
            }
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            // ops autocast keeps in f32 stay f32
            assert_eq!(a.sum(Kind::Float).kind(), Kind::Float);
        }
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        // CUDA autocast does not touch CPU ops.
        let _cuda = Autocast::enter(Device::Cuda(0), Kind::Half).expect("cuda state");
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        let err = Autocast::enter(Device::Cpu, Kind::Int).expect_err("int autocast");
        assert!(err.to_string().contains("Half or BFloat16"), "{err}");
    }

    #[test]
    fn a_shape_mismatch_is_an_error_naming_the_op() {
        let mut x = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let y = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let err = addcmul_(&mut x, &y, &y, 1.0).expect_err("mismatched shapes");
        assert!(err.to_string().contains("addcmul_"), "{err}");
    }

    #[test]
    fn hooks_fire_on_the_output_gradient_then_after_accumulation() {
        static SEEN: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());
        extern "C" fn record(tag: u64) {
            SEEN.lock().unwrap_or_else(|e| e.into_inner()).push(tag);
        }
        let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = &w * 3.0;
        register_grad_hook(&y, record, 1).unwrap();
        set_post_accumulate_grad_hook(&w, Some(record), 2).unwrap();
        y.sum(Kind::Float).backward();
        assert_eq!(
            *SEEN.lock().unwrap(),
            [1, 2],
            "output hook, then post-accumulate"
        );
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), [3.0, 3.0]);
        // removed: a second backward records nothing more
        set_post_accumulate_grad_hook(&w, None, 0).unwrap();
        (&w * 2.0).sum(Kind::Float).backward();
        assert_eq!(*SEEN.lock().unwrap(), [1, 2]);
        let e = set_post_accumulate_grad_hook(&y, Some(record), 3).unwrap_err();
        assert!(e.to_string().contains("leaf"), "{e}");
    }

    #[test]
    fn set_grad_to_none_undefines_the_gradient_and_backward_stores_a_new_one() {
        let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 3.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        set_grad_to_none(&w).expect("reset");
        assert!(!w.grad().defined());
        (&w * 2.0).sum(Kind::Float).backward();
        assert_eq!(vals(&w.grad()), [2.0, 2.0]);
    }

    #[test]
    fn empty_pinned_is_page_locked_with_a_gpu_and_an_error_without() {
        for kind in [
            Kind::Float,
            Kind::BFloat16,
            Kind::Half,
            Kind::Int64,
            Kind::Uint8,
        ] {
            match empty_pinned(&[3, 5], kind) {
                Ok(t) => {
                    assert!(tch::Cuda::is_available(), "pinned memory without CUDA?");
                    assert_eq!(
                        (t.size(), t.kind(), t.device()),
                        (vec![3, 5], kind, Device::Cpu)
                    );
                    assert!(t.is_pinned(Device::Cuda(0)), "{kind:?} not page-locked");
                }
                Err(e) => {
                    assert!(!tch::Cuda::is_available(), "{kind:?} with a GPU: {e}");
                    assert!(e.to_string().contains("empty_pinned: "), "{e}");
                }
            }
        }
    }
}
