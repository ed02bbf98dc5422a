//! Adam and AdamW with `torch.optim.Adam`'s math (`_single_tensor_adam`) and state layout.

use super::common::{self, backend, check_nonneg, Group, LrConfig};
use super::{OptimError, Optimizer};
use crate::value::{Dict, Key, Value};
use lightning_sys::ops;
use tch::Tensor;

/// Hyperparameters of [`Adam`] (one param group). `Default` gives `torch.optim.Adam`'s
/// defaults; [`AdamConfig::adamw`] gives `torch.optim.AdamW`'s.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and its square.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability (default 1e-8).
    pub eps: f64,
    /// Weight decay: L2 penalty for Adam, decoupled decay for AdamW.
    pub weight_decay: f64,
    /// Use the AMSGrad variant (keeps `max_exp_avg_sq`).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing.
    pub maximize: bool,
    /// AdamW: decay the weights directly (`p *= 1 - lr * weight_decay`) instead of adding
    /// `weight_decay * p` to the gradient.
    pub decoupled_weight_decay: bool,
    /// On CUDA, use the fused multi-tensor kernel (default true; CPU always uses tch ops).
    pub fused: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
            fused: true,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Default::default()
        }
    }

    fn check(&self) -> Result<(), OptimError> {
        check_nonneg("learning rate", self.lr)?;
        check_nonneg("epsilon", self.eps)?;
        check_nonneg("weight_decay", self.weight_decay)?;
        for (i, b) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return Err(OptimError::Config(format!(
                    "Invalid beta parameter at index {i}: {b} (expected 0 <= beta < 1)"
                )));
            }
        }
        Ok(())
    }
}

/// `torch.optim.AdamW`'s config type (the same struct; build it with [`AdamConfig::adamw`]).
pub type AdamWConfig = AdamConfig;

/// Per-parameter state: `step`, `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq` for AMSGrad).
#[derive(Debug)]
pub(crate) struct AdamState {
    pub step: f64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub max_exp_avg_sq: Option<Tensor>,
}

impl AdamState {
    /// Zero state (moments like [`moment_like`]).
    fn new(p: &Tensor, amsgrad: bool) -> Self {
        let z = || moment_like(p);
        AdamState {
            step: 0.0,
            exp_avg: z(),
            exp_avg_sq: z(),
            max_exp_avg_sq: amsgrad.then(z),
        }
    }
}

/// A zero moment for `p`: f32 for f16/bf16 parameters (mixed-precision master state, as the
/// fused kernels expect), else `p`'s dtype.
pub(crate) fn moment_like(p: &Tensor) -> Tensor {
    match p.kind() {
        tch::Kind::Half | tch::Kind::BFloat16 => p.zeros_like().to_kind(tch::Kind::Float),
        _ => p.zeros_like(),
    }
}

/// Adam / AdamW over tch tensors, with `torch.optim`'s update order and state layout.
///
/// ```
/// use lightning_core::optim::{Adam, AdamConfig, Optimizer};
/// let w = tch::Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let mut opt = Adam::adamw(vec![w.shallow_clone()], AdamConfig { lr: 0.1, ..AdamConfig::adamw() })?;
/// (&w * &w).sum(tch::Kind::Float).backward();
/// opt.step()?;
/// opt.zero_grad();
/// assert!(w.double_value(&[0]) < 1.0);
/// # Ok::<(), lightning_core::optim::OptimError>(())
/// ```
#[derive(Debug)]
pub struct Adam {
    pub(crate) groups: Vec<Group<AdamConfig>>,
    pub(crate) state: Vec<Option<AdamState>>,
    /// Param indices in the order their state was created (torch's `state` dict order).
    pub(crate) order: Vec<usize>,
}

impl Adam {
    /// One param group with `cfg` (Adam semantics unless `cfg.decoupled_weight_decay`).
    pub fn new(params: Vec<Tensor>, cfg: AdamConfig) -> Result<Self, OptimError> {
        Self::with_groups(vec![(params, cfg)])
    }

    /// AdamW: like [`Adam::new`] with `decoupled_weight_decay` forced on.
    pub fn adamw(params: Vec<Tensor>, cfg: AdamWConfig) -> Result<Self, OptimError> {
        Self::new(
            params,
            AdamConfig {
                decoupled_weight_decay: true,
                ..cfg
            },
        )
    }

    /// Several param groups, each with its own hyperparameters (`state` indices run over the
    /// groups' params in order, as in torch).
    pub fn with_groups(groups: Vec<(Vec<Tensor>, AdamConfig)>) -> Result<Self, OptimError> {
        let (out, n) = Group::build(groups)?;
        Ok(Adam {
            groups: out,
            state: (0..n).map(|_| None).collect(),
            order: Vec::new(),
        })
    }

    /// The hyperparameters of param group `i`.
    pub fn config(&self, i: usize) -> Option<&AdamConfig> {
        self.groups.get(i).map(|g| &g.cfg)
    }

    /// Mutable hyperparameters of param group `i`.
    pub fn config_mut(&mut self, i: usize) -> Option<&mut AdamConfig> {
        self.groups.get_mut(i).map(|g| &mut g.cfg)
    }
}

/// The tch-ops update of one parameter: `_single_tensor_adam`'s ops in its order, with the
/// same scalars (through [`lightning_sys::ops`] where tch drops them), so the same kernels
/// run and the result is bit for bit `torch.optim.Adam(foreach=False)`'s.
pub(crate) fn adam_update_ops(
    p: &mut Tensor,
    grad: &Tensor,
    st: &mut AdamState,
    c: &AdamConfig,
) -> Result<(), tch::TchError> {
    let (beta1, beta2) = c.betas;
    // Low-precision params keep f32 moments: compute in the moments' dtype.
    let grad = &grad.f_to_kind(st.exp_avg.kind())?;
    let mut grad = if c.maximize {
        grad.f_neg()?
    } else {
        grad.shallow_clone()
    };
    if c.weight_decay != 0.0 {
        if c.decoupled_weight_decay {
            let _ = p.f_mul_scalar_(1.0 - c.lr * c.weight_decay)?;
        } else {
            grad = ops::add(&grad, &p.f_to_kind(grad.kind())?, c.weight_decay)?;
        }
    }
    let _ = st.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
    let _ = st.exp_avg_sq.f_mul_scalar_(beta2)?;
    ops::addcmul_(&mut st.exp_avg_sq, &grad, &grad, 1.0 - beta2)?;
    let step = st.step;
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = c.lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    let v = match &mut st.max_exp_avg_sq {
        Some(m) => {
            // torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            let _ = m.f_maximum_out(&m.shallow_clone(), &st.exp_avg_sq)?;
            m.shallow_clone()
        }
        None => st.exp_avg_sq.shallow_clone(),
    };
    // (v.sqrt() / bias_correction2_sqrt).add_(eps): the division in place on sqrt's result
    // (the same values, one temporary fewer than torch's).
    let mut denom = v.f_sqrt()?;
    let _ = denom.f_div_scalar_(bias_correction2_sqrt)?;
    let _ = denom.f_add_scalar_(c.eps)?;
    // A low-precision parameter takes the f32 update as torch's in-place op does (computed in
    // f32, stored in the parameter's dtype).
    ops::addcdiv_(p, &st.exp_avg, &denom, -step_size)?;
    Ok(())
}

impl Optimizer for Adam {
    fn step(&mut self) -> Result<(), OptimError> {
        let _guard = tch::no_grad_guard();
        let mut idx = 0;
        for g in &self.groups {
            let mut fused: Vec<usize> = Vec::new();
            for p in &g.params {
                let i = idx;
                idx += 1;
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                if self.state[i].is_none() {
                    self.order.push(i);
                }
                let st = self.state[i].get_or_insert_with(|| AdamState::new(p, g.cfg.amsgrad));
                st.step += 1.0;
                if g.cfg.fused && crate::cuda::fused_param_supported(p, &grad) {
                    fused.push(i);
                    continue;
                }
                let mut p = p.shallow_clone();
                adam_update_ops(&mut p, &grad, st, &g.cfg).map_err(backend)?;
            }
            if !fused.is_empty() {
                let base = idx - g.params.len();
                crate::cuda::fused::adam_step(&g.params, base, &fused, &mut self.state, &g.cfg)?;
            }
        }
        Ok(())
    }

    fn zero_grad(&mut self) {
        Group::zero_grads(&mut self.groups);
    }

    fn params(&self) -> Vec<Tensor> {
        Group::all_params(&self.groups)
    }

    fn lrs(&self) -> Vec<f64> {
        self.groups.iter().map(|g| g.cfg.lr).collect()
    }

    fn set_lr(&mut self, group: usize, lr: f64) {
        Group::set_lr(&mut self.groups, group, lr);
    }

    fn momentum(&self, group: usize) -> Option<f64> {
        self.groups.get(group).map(|g| g.cfg.betas.0)
    }

    /// `"AdamW"` when the (first) group decays weights decoupled, else `"Adam"`.
    fn class_name(&self) -> &'static str {
        match self.groups.first() {
            Some(g) if g.cfg.decoupled_weight_decay => "AdamW",
            _ => "Adam",
        }
    }

    fn set_momentum(&mut self, group: usize, momentum: f64) {
        if let Some(g) = self.groups.get_mut(group) {
            g.cfg.betas.0 = momentum;
        }
    }

    fn state_dict(&self) -> Value {
        let mut state = Dict::new();
        for &i in &self.order {
            if let Some(s) = &self.state[i] {
                let mut d = Dict::new();
                d.insert("step".into(), Value::Tensor(common::step_tensor(s.step)));
                d.insert("exp_avg".into(), Value::Tensor(s.exp_avg.shallow_clone()));
                d.insert(
                    "exp_avg_sq".into(),
                    Value::Tensor(s.exp_avg_sq.shallow_clone()),
                );
                if let Some(m) = &s.max_exp_avg_sq {
                    d.insert("max_exp_avg_sq".into(), Value::Tensor(m.shallow_clone()));
                }
                state.insert(Key::Int(i as i64), Value::Dict(d));
            }
        }
        let mut groups = Vec::new();
        let mut first = 0;
        for g in &self.groups {
            let c = &g.cfg;
            groups.push(common::group_value(
                vec![
                    ("lr", Value::Float(c.lr)),
                    (
                        "betas",
                        Value::Tuple(vec![Value::Float(c.betas.0), Value::Float(c.betas.1)]),
                    ),
                    ("eps", Value::Float(c.eps)),
                    ("weight_decay", Value::Float(c.weight_decay)),
                    ("amsgrad", Value::Bool(c.amsgrad)),
                    ("maximize", Value::Bool(c.maximize)),
                    ("foreach", Value::None),
                    ("capturable", Value::Bool(false)),
                    ("differentiable", Value::Bool(false)),
                    ("fused", Value::None),
                    (
                        "decoupled_weight_decay",
                        Value::Bool(c.decoupled_weight_decay),
                    ),
                ],
                &g.extra,
                first,
                g.params.len(),
            ));
            first += g.params.len();
        }
        let mut sd = Dict::new();
        sd.insert("state".into(), Value::Dict(state));
        sd.insert("param_groups".into(), Value::List(groups));
        Value::Dict(sd)
    }

    fn load_state_dict(&mut self, sd: &Value) -> Result<(), OptimError> {
        let sizes: Vec<usize> = self.groups.iter().map(|g| g.params.len()).collect();
        let parsed = common::parse_state_dict(sd, &sizes)?;
        // Parse everything first so a bad state leaves the optimizer untouched.
        let mut cfgs = Vec::new();
        for (gi, (gd, g)) in parsed.groups.iter().zip(&self.groups).enumerate() {
            let betas = gd
                .get(&Key::Str("betas".into()))
                .and_then(Value::as_seq)
                .filter(|b| b.len() == 2)
                .and_then(|b| Some((b[0].as_f64()?, b[1].as_f64()?)))
                .ok_or_else(|| {
                    OptimError::State(format!(
                        "param_groups[{gi}][\"betas\"] must be a pair of floats"
                    ))
                })?;
            let decoupled = common::hp_bool(
                gd,
                "decoupled_weight_decay",
                gi,
                g.cfg.decoupled_weight_decay,
            )?;
            let cfg = AdamConfig {
                lr: common::hp_f64(gd, "lr", gi)?,
                betas,
                eps: common::hp_f64(gd, "eps", gi)?,
                weight_decay: common::hp_f64(gd, "weight_decay", gi)?,
                amsgrad: common::hp_bool(gd, "amsgrad", gi, false)?,
                maximize: common::hp_bool(gd, "maximize", gi, false)?,
                decoupled_weight_decay: decoupled,
                fused: g.cfg.fused,
            };
            let extra = common::extra_keys(
                gd,
                &[
                    "lr",
                    "betas",
                    "eps",
                    "weight_decay",
                    "amsgrad",
                    "maximize",
                    "foreach",
                    "capturable",
                    "differentiable",
                    "fused",
                    "decoupled_weight_decay",
                ],
            );
            cfgs.push((cfg, extra));
        }
        let params = self.params();
        let mut states = Vec::with_capacity(params.len());
        for (i, (p, s)) in params.iter().zip(&parsed.per_param).enumerate() {
            let amsgrad = {
                let mut acc = 0;
                let gi = sizes.iter().position(|&n| {
                    acc += n;
                    i < acc
                });
                gi.map(|gi| cfgs[gi].0.amsgrad).unwrap_or(false)
            };
            states.push(match s {
                None => None,
                Some(s) => Some(AdamState {
                    step: common::state_step(s, i)?,
                    exp_avg: common::state_tensor(s, "exp_avg", i, &moment_like(p))?,
                    exp_avg_sq: common::state_tensor(s, "exp_avg_sq", i, &moment_like(p))?,
                    max_exp_avg_sq: if amsgrad {
                        Some(common::state_tensor(
                            s,
                            "max_exp_avg_sq",
                            i,
                            &moment_like(p),
                        )?)
                    } else {
                        None
                    },
                }),
            });
        }
        for (g, (cfg, extra)) in self.groups.iter_mut().zip(cfgs) {
            g.cfg = cfg;
            g.extra = extra;
        }
        self.state = states;
        self.order = parsed.order;
        Ok(())
    }
}

impl LrConfig for AdamConfig {
    fn validate(&self) -> Result<(), OptimError> {
        self.check()
    }
    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }
}
