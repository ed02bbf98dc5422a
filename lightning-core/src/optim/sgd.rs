//! SGD with momentum, dampening, Nesterov, weight decay and maximize (`torch.optim.SGD`).

use super::common::{self, backend, check_nonneg, Group, LrConfig};
use super::{OptimError, Optimizer};
use crate::value::{Dict, Key, Value};
use lightning_sys::ops;
use tch::Tensor;

/// Hyperparameters of [`Sgd`] (one param group); `Default` is torch's (lr 1e-3, no momentum).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0: plain SGD, no state).
    pub momentum: f64,
    /// Dampening for momentum.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0).
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing.
    pub maximize: bool,
    /// On CUDA, use the fused multi-tensor kernel (default true).
    pub fused: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
            fused: true,
        }
    }
}

impl SgdConfig {
    fn check(&self) -> Result<(), OptimError> {
        check_nonneg("learning rate", self.lr)?;
        check_nonneg("momentum", self.momentum)?;
        check_nonneg("weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(OptimError::Config(
                "Nesterov momentum requires a momentum and zero dampening".into(),
            ));
        }
        Ok(())
    }
}

/// SGD over tch tensors with `torch.optim.SGD`'s math and state (`momentum_buffer`).
///
/// ```
/// use lightning_core::optim::{Optimizer, Sgd, SgdConfig};
/// let w = tch::Tensor::ones([2], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let mut opt = Sgd::new(vec![w.shallow_clone()], SgdConfig { lr: 0.5, momentum: 0.9, ..Default::default() })?;
/// w.sum(tch::Kind::Float).backward();
/// opt.step()?;
/// assert_eq!(w.double_value(&[0]), 0.5);
/// # Ok::<(), lightning_core::optim::OptimError>(())
/// ```
#[derive(Debug)]
pub struct Sgd {
    pub(crate) groups: Vec<Group<SgdConfig>>,
    pub(crate) momentum_buffer: Vec<Option<Tensor>>,
    /// Param indices in the order their buffer was created (torch's `state` dict order).
    pub(crate) order: Vec<usize>,
}

impl Sgd {
    /// One param group with `cfg`.
    pub fn new(params: Vec<Tensor>, cfg: SgdConfig) -> Result<Self, OptimError> {
        Self::with_groups(vec![(params, cfg)])
    }

    /// Several param groups, each with its own hyperparameters.
    pub fn with_groups(groups: Vec<(Vec<Tensor>, SgdConfig)>) -> Result<Self, OptimError> {
        let (out, n) = Group::build(groups)?;
        Ok(Sgd {
            groups: out,
            momentum_buffer: (0..n).map(|_| None).collect(),
            order: Vec::new(),
        })
    }

    /// The hyperparameters of param group `i`.
    pub fn config(&self, i: usize) -> Option<&SgdConfig> {
        self.groups.get(i).map(|g| &g.cfg)
    }
}

/// The tch-ops update of one parameter: `_single_tensor_sgd`'s ops in its order, with the same
/// `alpha`s (through [`lightning_sys::ops`] where tch drops them).
pub(crate) fn sgd_update_ops(
    p: &mut Tensor,
    grad: &Tensor,
    buf: &mut Option<Tensor>,
    c: &SgdConfig,
) -> Result<(), tch::TchError> {
    let mut grad = if c.maximize {
        grad.f_neg()?
    } else {
        grad.shallow_clone()
    };
    if c.weight_decay != 0.0 {
        grad = ops::add(&grad, p, c.weight_decay)?;
    }
    if c.momentum != 0.0 {
        let b = match buf {
            None => buf.insert(grad.f_detach_copy()?),
            Some(b) => {
                let _ = b.f_mul_scalar_(c.momentum)?;
                ops::add_(b, &grad, 1.0 - c.dampening)?;
                b
            }
        };
        grad = if c.nesterov {
            ops::add(&grad, b, c.momentum)?
        } else {
            b.shallow_clone()
        };
    }
    ops::add_(p, &grad, -c.lr)?;
    Ok(())
}

impl Optimizer for Sgd {
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
                if g.cfg.momentum != 0.0 && self.momentum_buffer[i].is_none() {
                    self.order.push(i);
                }
                if g.cfg.fused && crate::cuda::fused_param_supported(p, &grad) {
                    fused.push(i);
                    continue;
                }
                let mut p = p.shallow_clone();
                sgd_update_ops(&mut p, &grad, &mut self.momentum_buffer[i], &g.cfg)
                    .map_err(backend)?;
            }
            if !fused.is_empty() {
                let base = idx - g.params.len();
                crate::cuda::fused::sgd_step(
                    &g.params,
                    base,
                    &fused,
                    &mut self.momentum_buffer,
                    &g.cfg,
                )?;
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
        self.groups.get(group).map(|g| g.cfg.momentum)
    }

    fn class_name(&self) -> &'static str {
        "SGD"
    }

    fn set_momentum(&mut self, group: usize, momentum: f64) {
        if let Some(g) = self.groups.get_mut(group) {
            g.cfg.momentum = momentum;
        }
    }

    fn state_dict(&self) -> Value {
        let mut state = Dict::new();
        for &i in &self.order {
            if let Some(b) = &self.momentum_buffer[i] {
                let mut d = Dict::new();
                d.insert("momentum_buffer".into(), Value::Tensor(b.shallow_clone()));
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
                    ("momentum", Value::Float(c.momentum)),
                    ("dampening", Value::Float(c.dampening)),
                    ("weight_decay", Value::Float(c.weight_decay)),
                    ("nesterov", Value::Bool(c.nesterov)),
                    ("maximize", Value::Bool(c.maximize)),
                    ("foreach", Value::None),
                    ("differentiable", Value::Bool(false)),
                    ("fused", Value::None),
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
        let mut cfgs = Vec::new();
        for (gi, (gd, g)) in parsed.groups.iter().zip(&self.groups).enumerate() {
            let cfg = SgdConfig {
                lr: common::hp_f64(gd, "lr", gi)?,
                momentum: common::hp_f64(gd, "momentum", gi)?,
                dampening: common::hp_f64(gd, "dampening", gi)?,
                weight_decay: common::hp_f64(gd, "weight_decay", gi)?,
                nesterov: common::hp_bool(gd, "nesterov", gi, false)?,
                maximize: common::hp_bool(gd, "maximize", gi, false)?,
                fused: g.cfg.fused,
            };
            let extra = common::extra_keys(
                gd,
                &[
                    "lr",
                    "momentum",
                    "dampening",
                    "weight_decay",
                    "nesterov",
                    "maximize",
                    "foreach",
                    "differentiable",
                    "fused",
                ],
            );
            cfgs.push((cfg, extra));
        }
        let params = self.params();
        let mut bufs = Vec::with_capacity(params.len());
        for (i, (p, s)) in params.iter().zip(&parsed.per_param).enumerate() {
            bufs.push(match s {
                Some(s)
                    if matches!(
                        s.get(&Key::Str("momentum_buffer".into())),
                        Some(Value::Tensor(_))
                    ) =>
                {
                    Some(common::state_tensor(s, "momentum_buffer", i, p)?)
                }
                _ => None,
            });
        }
        for (g, (cfg, extra)) in self.groups.iter_mut().zip(cfgs) {
            g.cfg = cfg;
            g.extra = extra;
        }
        self.order = parsed
            .order
            .into_iter()
            .filter(|&i| bufs[i].is_some())
            .collect();
        self.momentum_buffer = bufs;
        Ok(())
    }
}

impl LrConfig for SgdConfig {
    fn validate(&self) -> Result<(), OptimError> {
        self.check()
    }
    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }
}
