//! Gradient clipping by global norm and by value (`torch.nn.utils.clip_grad_norm_` /
//! `clip_grad_value_`).

use super::common::backend;
use super::OptimError;
use tch::Tensor;

/// Gradient clipping by total norm or by value (`gradient_clip_algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClipAlgorithm {
    /// Scale all gradients so their total 2-norm is at most the clip value.
    #[default]
    Norm,
    /// Clamp every gradient element to `[-v, v]`.
    Value,
}

/// Clips the gradients of `params` as the trainer's `gradient_clip_algorithm` says
/// (`torch.nn.utils.clip_grad_norm_` with the 2-norm, or `clip_grad_value_`).
pub(crate) fn clip_gradients(
    params: &[Tensor],
    value: f64,
    algo: ClipAlgorithm,
) -> Result<(), OptimError> {
    match algo {
        ClipAlgorithm::Norm => clip_grad_norm(params, value, 2.0).map(drop),
        ClipAlgorithm::Value => clip_grad_value(params, value),
    }
}

/// `torch.linalg.vector_norm(t, ord)` over all elements.
fn vector_norm(t: &Tensor, ord: f64) -> Result<Tensor, tch::TchError> {
    t.f_flatten(0, -1)?.f_norm_scalaropt_dim(ord, [0i64], false)
}

/// Scales the gradients of `params` so that their global `norm_type`-norm is at most
/// `max_norm`; returns the total norm before clipping as a 0-dim tensor (as torch does: no
/// host sync). Params without a gradient are skipped. On CUDA with f32 gradients and the
/// 2-norm, one fused kernel pair does it (see [`crate::cuda`]).
///
/// ```
/// use lightning_core::optim::clip_grad_norm;
/// let w = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// (&w * tch::Tensor::from_slice(&[3.0f32, 4.0])).sum(tch::Kind::Float).backward();
/// let n = clip_grad_norm(&[w.shallow_clone()], 1.0, 2.0)?;
/// assert!((n.double_value(&[]) - 5.0).abs() < 1e-6);
/// assert!((w.grad().norm().double_value(&[]) - 1.0).abs() < 1e-5);
/// # Ok::<(), lightning_core::optim::OptimError>(())
/// ```
pub fn clip_grad_norm(
    params: &[Tensor],
    max_norm: f64,
    norm_type: f64,
) -> Result<Tensor, OptimError> {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return Ok(Tensor::from(0.0f32));
    }
    if norm_type == 2.0 && crate::cuda::fused_grads_supported(&grads) {
        return crate::cuda::fused::clip_grad_norm(&grads, max_norm);
    }
    let norms = grads
        .iter()
        .map(|g| vector_norm(g, norm_type))
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let total = Tensor::f_stack(&norms, 0)
        .and_then(|s| vector_norm(&s, norm_type))
        .map_err(backend)?;
    let coef = total
        .f_add_scalar(1e-6)
        .and_then(|d| d.f_reciprocal())
        .and_then(|r| r.f_mul_scalar(max_norm))
        .and_then(|c| c.f_clamp_max(1.0))
        .map_err(backend)?;
    for g in &grads {
        let mut g = g.shallow_clone();
        let _ = g
            .f_mul_(&coef.f_to_device(g.device()).map_err(backend)?)
            .map_err(backend)?;
    }
    Ok(total)
}

/// Clamps every gradient of `params` to `[-clip_value, clip_value]`.
pub fn clip_grad_value(params: &[Tensor], clip_value: f64) -> Result<(), OptimError> {
    if clip_value.is_nan() || clip_value < 0.0 {
        return Err(OptimError::Config(format!(
            "clip_value must be >= 0, got {clip_value}"
        )));
    }
    let _guard = tch::no_grad_guard();
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.f_clamp_(-clip_value, clip_value).map_err(backend)?;
        }
    }
    Ok(())
}
