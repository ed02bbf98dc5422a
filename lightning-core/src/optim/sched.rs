//! LR schedulers with `torch.optim.lr_scheduler`'s lr sequences and state layout.
//!
//! Each step computes the next lr from the group's current lr as torch's chainable `get_lr`
//! does (`lr * gamma` at a step boundary, cosine's ratio recurrence, ...), so the lrs equal
//! torch's bit for bit (`tests/optim/sched.rs` compares them exactly); the closed forms
//! (torch's `_get_closed_form_lr`) serve where torch uses them: `OneCycleLR`, and each later
//! schedule of a `SequentialLR` at its milestone. Construction performs torch's initial step:
//! after `new`, the optimizer's lrs are the schedule's values at epoch 0 and
//! `last_epoch == 0`.

use super::{LrScheduler, OptimError, Optimizer};
use crate::value::{Dict, Key, Value};
use std::f64::consts::PI;

/// How [`Schedule::OneCycle`] anneals between phase endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anneal {
    /// Cosine annealing (torch's default).
    Cos,
    /// Linear annealing.
    Linear,
}

impl Anneal {
    /// torch's name of the strategy (`"cos"`, `"linear"`).
    pub fn name(self) -> &'static str {
        match self {
            Anneal::Cos => "cos",
            Anneal::Linear => "linear",
        }
    }

    /// The interpolation weight at progress `t` in [0, 1] (SWALR's `anneal_func`).
    fn weight(self, t: f64) -> f64 {
        match self {
            Anneal::Cos => (1.0 - (PI * t).cos()) / 2.0,
            Anneal::Linear => t,
        }
    }
}

/// SWALR's `get_lr` for one group: from its current `lr` towards `swa_lr`, at step
/// `step_count - 1` of the annealing.
fn swa_next(lr: f64, swa_lr: f64, step_count: i64, anneal_epochs: i64, anneal: Anneal) -> f64 {
    let mut step = step_count - 1;
    if anneal_epochs == 0 {
        step = step.max(1);
    }
    let span = anneal_epochs.max(1) as f64;
    let prev_alpha = anneal.weight(((step - 1) as f64 / span).clamp(0.0, 1.0));
    let prev_lr = if prev_alpha == 1.0 {
        swa_lr
    } else {
        (lr - prev_alpha * swa_lr) / (1.0 - prev_alpha)
    };
    let alpha = anneal.weight((step as f64 / span).clamp(0.0, 1.0));
    swa_lr * alpha + prev_lr * (1.0 - alpha)
}

/// `OneCycleLR`'s settings (torch's defaults via [`OneCycle::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycle {
    /// Peak lr of each param group (one value is used for every group).
    pub max_lrs: Vec<f64>,
    /// Total number of steps in the cycle.
    pub total_steps: i64,
    /// Fraction of the cycle spent increasing the lr (default 0.3).
    pub pct_start: f64,
    /// Annealing strategy (default cosine).
    pub anneal_strategy: Anneal,
    /// Cycle momentum (SGD's momentum or Adam's beta1) inversely to the lr (default true).
    pub cycle_momentum: bool,
    /// Lower momentum boundary (default 0.85).
    pub base_momentum: f64,
    /// Upper momentum boundary (default 0.95).
    pub max_momentum: f64,
    /// initial_lr = max_lr / div_factor (default 25).
    pub div_factor: f64,
    /// min_lr = initial_lr / final_div_factor (default 1e4).
    pub final_div_factor: f64,
    /// Use torch's three-phase variant.
    pub three_phase: bool,
}

impl OneCycle {
    /// torch's defaults for a peak lr and a step count.
    pub fn new(max_lr: f64, total_steps: i64) -> Self {
        OneCycle {
            max_lrs: vec![max_lr],
            total_steps,
            pct_start: 0.3,
            anneal_strategy: Anneal::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }

    /// (end_step, start, end) per phase, with lr endpoints 0 = initial, 1 = max, 2 = min and
    /// momentum endpoints 0 = max_momentum, 1 = base_momentum.
    fn phases(&self) -> Vec<(f64, usize, usize, usize, usize)> {
        let t = self.total_steps as f64;
        if self.three_phase {
            vec![
                ((self.pct_start * t) - 1.0, 0, 1, 0, 1),
                ((2.0 * self.pct_start * t) - 2.0, 1, 0, 1, 0),
                (t - 1.0, 0, 2, 0, 0),
            ]
        } else {
            vec![
                ((self.pct_start * t) - 1.0, 0, 1, 0, 1),
                (t - 1.0, 1, 2, 1, 0),
            ]
        }
    }

    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        match self.anneal_strategy {
            Anneal::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
            Anneal::Linear => (end - start) * pct + start,
        }
    }

    /// (lr, momentum) for a group at `step`.
    fn at(&self, initial: f64, step: i64) -> (f64, f64) {
        let max_lr = initial * self.div_factor;
        let lrs = [initial, max_lr, initial / self.final_div_factor];
        let moms = [self.max_momentum, self.base_momentum];
        let phases = self.phases();
        let mut start_step = 0.0;
        let s = step as f64;
        for (i, &(end_step, a, b, ma, mb)) in phases.iter().enumerate() {
            if s <= end_step || i == phases.len() - 1 {
                let pct = (s - start_step) / (end_step - start_step);
                return (
                    self.anneal(lrs[a], lrs[b], pct),
                    self.anneal(moms[ma], moms[mb], pct),
                );
            }
            start_step = end_step;
        }
        (initial, self.max_momentum)
    }
}

/// A function of the epoch (or step) for [`Schedule::Lambda`] and
/// [`Schedule::Multiplicative`] (torch's `lr_lambda`). Like a Python function, it is not
/// saved: the state holds `lr_lambdas: [None, ...]`, as torch writes for functions.
#[derive(Clone)]
pub struct LrLambda(pub std::sync::Arc<dyn Fn(i64) -> f64 + Send + Sync>);

impl LrLambda {
    /// Wraps `f`.
    pub fn new(f: impl Fn(i64) -> f64 + Send + Sync + 'static) -> Self {
        LrLambda(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for LrLambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LrLambda(..)")
    }
}

impl PartialEq for LrLambda {
    /// The same function object.
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A learning-rate schedule (torch's scheduler classes).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `StepLR`: lr * gamma every `step_size` epochs.
    Step {
        /// Period of decay.
        step_size: i64,
        /// Multiplicative factor.
        gamma: f64,
    },
    /// `MultiStepLR`: lr * gamma at each milestone.
    MultiStep {
        /// Epochs at which to decay (a repeated milestone decays twice, as torch's Counter).
        milestones: Vec<i64>,
        /// Multiplicative factor.
        gamma: f64,
    },
    /// `ExponentialLR`: lr * gamma every epoch.
    Exponential {
        /// Multiplicative factor.
        gamma: f64,
    },
    /// `CosineAnnealingLR`.
    CosineAnnealing {
        /// Half period, in epochs.
        t_max: i64,
        /// Minimum lr.
        eta_min: f64,
    },
    /// `LinearLR`: the factor goes linearly from `start_factor` to `end_factor` over
    /// `total_iters` epochs (a linear warmup when `end_factor` is 1).
    Linear {
        /// Factor at epoch 0 (torch default 1/3).
        start_factor: f64,
        /// Factor from `total_iters` on (torch default 1.0).
        end_factor: f64,
        /// Length of the ramp (torch default 5).
        total_iters: i64,
    },
    /// `OneCycleLR`.
    OneCycle(OneCycle),
    /// `LambdaLR`: `base_lr * f(epoch)`.
    Lambda(LrLambda),
    /// `MultiplicativeLR`: each step multiplies the lr by `f(epoch)`.
    Multiplicative(LrLambda),
    /// `torch.optim.swa_utils.SWALR`: anneals each group's lr to its `swa_lr` over
    /// `anneal_epochs` steps (cosine or linear), then holds it. Stochastic weight averaging's
    /// schedule.
    Swa {
        /// The lr to anneal to: one value for every group, or one per group.
        swa_lrs: Vec<f64>,
        /// Steps of the annealing phase (torch's default 10).
        anneal_epochs: i64,
        /// Cosine (torch's default) or linear annealing.
        anneal: Anneal,
    },
    /// `SequentialLR`: `schedules[i]` runs from `milestones[i-1]` (restarting at epoch 0).
    Sequential {
        /// The schedules, in order.
        schedules: Vec<Schedule>,
        /// One fewer than `schedules`: the epochs where the next schedule starts.
        milestones: Vec<i64>,
    },
}

impl Schedule {
    /// A linear warmup from `start_factor * lr` to `lr` over `warmup` steps, then `then`
    /// (`SequentialLR([LinearLR(start_factor, 1.0, warmup), then], [warmup])`).
    pub fn warmup_then(warmup: i64, start_factor: f64, then: Schedule) -> Schedule {
        Schedule::Sequential {
            schedules: vec![
                Schedule::Linear {
                    start_factor,
                    end_factor: 1.0,
                    total_iters: warmup,
                },
                then,
            ],
            milestones: vec![warmup],
        }
    }

    fn check(&self) -> Result<(), OptimError> {
        let bad = |m: String| Err(OptimError::Config(m));
        match self {
            Schedule::Step { step_size, .. } if *step_size <= 0 => {
                bad(format!("StepLR step_size must be > 0, got {step_size}"))
            }
            Schedule::CosineAnnealing { t_max, .. } if *t_max <= 0 => {
                bad(format!("CosineAnnealingLR T_max must be > 0, got {t_max}"))
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if !(*start_factor > 0.0 && *start_factor <= 1.0) {
                    bad(format!("Starting multiplicative factor expected to be greater than 0 and less or equal to 1, got {start_factor}"))
                } else if !(0.0..=1.0).contains(end_factor) {
                    bad(format!("Ending multiplicative factor expected to be between 0 and 1, got {end_factor}"))
                } else if *total_iters < 0 {
                    bad(format!(
                        "LinearLR total_iters must be >= 0, got {total_iters}"
                    ))
                } else {
                    Ok(())
                }
            }
            Schedule::OneCycle(o) => {
                if o.total_steps <= 0 {
                    bad(format!(
                        "OneCycleLR total_steps must be > 0, got {}",
                        o.total_steps
                    ))
                } else if !(0.0..=1.0).contains(&o.pct_start) {
                    bad(format!(
                        "Expected float between 0 and 1 pct_start, but got {}",
                        o.pct_start
                    ))
                } else if o.max_lrs.is_empty() {
                    bad("OneCycleLR needs at least one max_lr".into())
                } else {
                    Ok(())
                }
            }
            Schedule::Swa {
                swa_lrs,
                anneal_epochs,
                ..
            } => {
                if *anneal_epochs < 0 {
                    bad(format!(
                        "anneal_epochs must be equal or greater than 0, got {anneal_epochs}"
                    ))
                } else if swa_lrs.is_empty() {
                    bad("SWALR needs at least one swa_lr".into())
                } else {
                    Ok(())
                }
            }
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                if schedules.iter().any(|s| matches!(s, Schedule::Swa { .. })) {
                    return bad("SWALR cannot be part of a SequentialLR here".into());
                }
                if schedules.is_empty() {
                    return bad(
                        "SequentialLR expects at least one scheduler, but got no scheduler.".into(),
                    );
                }
                if milestones.len() + 1 != schedules.len() {
                    return bad(format!(
                        "Sequential Schedulers expects number of schedulers provided to be one more than the number of milestone points, but got number of schedulers {} and the number of milestones to be equal to {}",
                        schedules.len(),
                        milestones.len()
                    ));
                }
                schedules.iter().try_for_each(Schedule::check)
            }
            _ => Ok(()),
        }
    }

    /// The next lr of one group as torch's `step()` computes it (its chainable `get_lr`):
    /// from the group's current `lr`, step by step, so the bits match torch's, where the
    /// closed form [`Schedule::lr`] differs in the last bits. `initial`: the constructor's
    /// step. `OneCycleLR` is closed-form in torch too; `SequentialLR` starts each later
    /// schedule at its milestone from the closed form at 0, as torch does.
    fn next_lr(&self, lr: f64, base: f64, epoch: i64, initial: bool) -> f64 {
        match self {
            Schedule::Step { step_size, gamma } => {
                if epoch == 0 || epoch % step_size != 0 {
                    lr
                } else {
                    lr * gamma
                }
            }
            Schedule::MultiStep { milestones, gamma } => {
                match milestones.iter().filter(|&&m| m == epoch).count() {
                    0 => lr,
                    n => lr * gamma.powf(n as f64),
                }
            }
            Schedule::Exponential { gamma } => match initial {
                true => lr,
                false => lr * gamma,
            },
            Schedule::CosineAnnealing { t_max, eta_min } => {
                let t = *t_max as f64;
                if initial {
                    lr
                } else if (epoch - 1 - t_max).rem_euclid(2 * t_max) == 0 {
                    lr + (base - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * epoch as f64 / t).cos())
                        / (1.0 + (PI * (epoch - 1) as f64 / t).cos())
                        * (lr - eta_min)
                        + eta_min
                }
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if epoch == 0 {
                    lr * start_factor
                } else if initial || epoch > *total_iters {
                    lr
                } else {
                    lr * (1.0
                        + (end_factor - start_factor)
                            / (*total_iters as f64 * start_factor
                                + (epoch - 1) as f64 * (end_factor - start_factor)))
                }
            }
            Schedule::OneCycle(_) => self.lr(base, epoch),
            // computed by `Scheduler::advance` from the step count and the group's swa_lr
            Schedule::Swa { .. } => lr,
            Schedule::Lambda(f) => base * (f.0)(epoch),
            Schedule::Multiplicative(f) => match initial {
                true => lr,
                false => lr * (f.0)(epoch),
            },
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let (i, sub) = sequential_pos(milestones, epoch);
                if i > 0 && sub == 0 {
                    schedules[i].lr(base, 0)
                } else {
                    schedules[i].next_lr(lr, base, sub, initial)
                }
            }
        }
    }

    /// The lr for one group at `epoch` from its `base` (initial) lr: torch's
    /// `_get_closed_form_lr`.
    fn lr(&self, base: f64, epoch: i64) -> f64 {
        let e = epoch.max(0);
        match self {
            Schedule::Step { step_size, gamma } => base * gamma.powi((e / step_size) as i32),
            Schedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= e).count() as i32)
            }
            Schedule::Exponential { gamma } => base * gamma.powi(e as i32),
            Schedule::CosineAnnealing { t_max, eta_min } => {
                eta_min + (base - eta_min) * (1.0 + (PI * e as f64 / *t_max as f64).cos()) / 2.0
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                let frac = if *total_iters == 0 {
                    1.0
                } else {
                    e.min(*total_iters) as f64 / *total_iters as f64
                };
                base * (start_factor + (end_factor - start_factor) * frac)
            }
            Schedule::OneCycle(o) => o.at(base, e.min(o.total_steps)).0,
            // SWALR has no closed form in torch: its target (the state's `_last_lr` is used
            // whenever a file has one)
            Schedule::Swa { .. } => base,
            Schedule::Lambda(f) => base * (f.0)(e),
            Schedule::Multiplicative(f) => (1..=e).fold(base, |lr, k| lr * (f.0)(k)),
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                let (i, sub) = sequential_pos(milestones, e);
                schedules[i].lr(base, sub)
            }
        }
    }

    /// The torch class-specific part of the scheduler's `__dict__`.
    fn own_state(
        &self,
        base_lrs: &[f64],
        last_epoch: i64,
        last_lr: &[f64],
        step_count: i64,
    ) -> Dict {
        let mut d = Dict::new();
        let mut put = |k: &str, v: Value| {
            d.insert(Key::Str(k.into()), v);
        };
        match self {
            Schedule::Step { step_size, gamma } => {
                put("step_size", Value::Int(*step_size));
                put("gamma", Value::Float(*gamma));
            }
            Schedule::MultiStep { milestones, gamma } => {
                let mut counter = Dict::new();
                for m in milestones {
                    let c = counter
                        .get(&Key::Int(*m))
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    counter.insert(Key::Int(*m), Value::Int(c + 1));
                }
                put("milestones", Value::Dict(counter));
                put("gamma", Value::Float(*gamma));
            }
            Schedule::Exponential { gamma } => put("gamma", Value::Float(*gamma)),
            Schedule::Swa {
                anneal_epochs,
                anneal,
                ..
            } => {
                put("_anneal_strategy", Value::Str(anneal.name().into()));
                put("anneal_epochs", Value::Int(*anneal_epochs));
            }
            // A function is not saved (torch writes None for each group's plain function).
            Schedule::Lambda(_) | Schedule::Multiplicative(_) => put(
                "lr_lambdas",
                Value::List(base_lrs.iter().map(|_| Value::None).collect()),
            ),
            Schedule::CosineAnnealing { t_max, eta_min } => {
                put("T_max", Value::Int(*t_max));
                put("eta_min", Value::Float(*eta_min));
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                put("start_factor", Value::Float(*start_factor));
                put("end_factor", Value::Float(*end_factor));
                put("total_iters", Value::Int(*total_iters));
            }
            Schedule::OneCycle(o) => {
                put("total_steps", Value::Int(o.total_steps));
                let names = ["initial_lr", "max_lr", "min_lr"];
                let mnames = ["max_momentum", "base_momentum"];
                let phases = o
                    .phases()
                    .into_iter()
                    .enumerate()
                    .map(|(i, (end, a, b, ma, mb))| {
                        let mut p = Dict::new();
                        let last = i == o.phases().len() - 1;
                        p.insert(
                            "end_step".into(),
                            if last {
                                Value::Int(o.total_steps - 1)
                            } else {
                                Value::Float(end)
                            },
                        );
                        p.insert("start_lr".into(), Value::Str(names[a].into()));
                        p.insert("end_lr".into(), Value::Str(names[b].into()));
                        p.insert("start_momentum".into(), Value::Str(mnames[ma].into()));
                        p.insert("end_momentum".into(), Value::Str(mnames[mb].into()));
                        Value::Dict(p)
                    })
                    .collect();
                put("_schedule_phases", Value::List(phases));
                put(
                    "_anneal_func_type",
                    Value::Str(o.anneal_strategy.name().into()),
                );
                put("cycle_momentum", Value::Bool(o.cycle_momentum));
            }
            Schedule::Sequential {
                schedules,
                milestones,
            } => {
                put(
                    "_milestones",
                    Value::List(milestones.iter().map(|&m| Value::Int(m)).collect()),
                );
                put("last_epoch", Value::Int(last_epoch));
                put("_last_lr", floats(last_lr));
                let (cur, sub) = sequential_pos(milestones, last_epoch.max(0));
                let subs = schedules
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let start = if i == 0 { 0 } else { milestones[i - 1] };
                        let e = match i.cmp(&cur) {
                            std::cmp::Ordering::Less => milestones[i] - 1 - start,
                            std::cmp::Ordering::Equal => sub,
                            std::cmp::Ordering::Greater => -1,
                        };
                        let lr: Vec<f64> = base_lrs.iter().map(|&b| s.lr(b, e)).collect();
                        Value::Dict(s.full_state(base_lrs, e, &lr, (e + 1).max(1)))
                    })
                    .collect();
                put("_schedulers", Value::List(subs));
            }
        }
        let _ = step_count;
        d
    }

    /// The whole `__dict__` (class fields, then LRScheduler's common ones).
    fn full_state(
        &self,
        base_lrs: &[f64],
        last_epoch: i64,
        last_lr: &[f64],
        step_count: i64,
    ) -> Dict {
        let mut d = self.own_state(base_lrs, last_epoch, last_lr, step_count);
        if matches!(self, Schedule::Sequential { .. }) {
            return d;
        }
        d.insert("base_lrs".into(), floats(base_lrs));
        d.insert("last_epoch".into(), Value::Int(last_epoch));
        d.insert("_step_count".into(), Value::Int(step_count));
        d.insert("_is_initial".into(), Value::Bool(false));
        d.insert("_get_lr_called_within_step".into(), Value::Bool(false));
        d.insert("_last_lr".into(), floats(last_lr));
        d
    }
}

fn floats(v: &[f64]) -> Value {
    Value::List(v.iter().map(|&x| Value::Float(x)).collect())
}

/// Which sub-schedule of a SequentialLR is active at `epoch`, and its own epoch.
fn sequential_pos(milestones: &[i64], epoch: i64) -> (usize, i64) {
    let i = milestones.partition_point(|&m| m <= epoch);
    let start = if i == 0 { 0 } else { milestones[i - 1] };
    (i, epoch - start)
}

/// A scheduler driving an optimizer's lrs by a [`Schedule`].
///
/// ```
/// use lightning_core::optim::{LrScheduler, Optimizer, Scheduler, Schedule, Sgd, SgdConfig};
/// let w = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let mut opt = Sgd::new(vec![w], SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut s = Scheduler::new(&mut opt, Schedule::Step { step_size: 2, gamma: 0.5 })?;
/// s.step(&mut opt);
/// s.step(&mut opt);
/// assert_eq!(opt.lrs(), vec![0.05]);
/// # Ok::<(), lightning_core::optim::OptimError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Scheduler {
    schedule: Schedule,
    base_lrs: Vec<f64>,
    last_epoch: i64,
    step_count: i64,
    last_lr: Vec<f64>,
}

impl Scheduler {
    /// Attaches `schedule` to `opt` (its current lrs become `base_lrs`, as torch's
    /// `initial_lr`) and performs torch's initial step.
    pub fn new(opt: &mut dyn Optimizer, schedule: Schedule) -> Result<Self, OptimError> {
        let base_lrs = Scheduler::checked_base_lrs(opt, &schedule)?;
        Ok(Scheduler::start(opt, schedule, base_lrs, -1))
    }

    /// Checks `schedule` against `opt` and returns torch's `base_lrs` for a new scheduler.
    fn checked_base_lrs(opt: &dyn Optimizer, schedule: &Schedule) -> Result<Vec<f64>, OptimError> {
        schedule.check()?;
        let n = opt.lrs().len();
        Ok(match schedule {
            Schedule::OneCycle(o) => {
                if o.max_lrs.len() != 1 && o.max_lrs.len() != n {
                    return Err(OptimError::Config(format!(
                        "expected 1 or {n} values for max_lr, got {}",
                        o.max_lrs.len()
                    )));
                }
                if o.cycle_momentum && opt.momentum(0).is_none() {
                    return Err(OptimError::Config(
                        "optimizer must support momentum or beta1 with `cycle_momentum` option enabled".into(),
                    ));
                }
                (0..n)
                    .map(|g| o.max_lrs[g.min(o.max_lrs.len() - 1)] / o.div_factor)
                    .collect()
            }
            Schedule::Swa { swa_lrs, .. } if swa_lrs.len() != 1 && swa_lrs.len() != n => {
                return Err(OptimError::Config(format!(
                    "swa_lr must have the same length as optimizer.param_groups: swa_lr has {}, \
                     optimizer.param_groups has {n}",
                    swa_lrs.len()
                )));
            }
            _ => opt.lrs(),
        })
    }

    /// torch's constructor with `last_epoch >= 0` (a scheduler taking over mid-run): the
    /// groups' `initial_lr` are `initial_lrs` (the `base_lrs`), the counter starts at
    /// `last_epoch`, and the initial step follows. Stochastic weight averaging starts its
    /// SWALR this way, as Lightning's callback does.
    pub fn starting_at(
        opt: &mut dyn Optimizer,
        schedule: Schedule,
        initial_lrs: Vec<f64>,
        last_epoch: i64,
    ) -> Result<Self, OptimError> {
        let n = Scheduler::checked_base_lrs(opt, &schedule)?.len();
        if initial_lrs.len() != n {
            return Err(OptimError::Config(format!(
                "{} initial lrs given for {n} param groups",
                initial_lrs.len()
            )));
        }
        Ok(Scheduler::start(opt, schedule, initial_lrs, last_epoch))
    }

    /// The scheduler at `last_epoch` after torch's initial step.
    fn start(
        opt: &mut dyn Optimizer,
        schedule: Schedule,
        base_lrs: Vec<f64>,
        last_epoch: i64,
    ) -> Self {
        let mut s = Scheduler {
            schedule,
            base_lrs,
            last_epoch,
            step_count: 0,
            last_lr: Vec::new(),
        };
        s.advance(opt, true);
        s
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The epoch counter (`last_epoch`).
    pub fn last_epoch(&self) -> i64 {
        self.last_epoch
    }

    /// One step: the epoch advances and every group's lr follows (`initial`: the
    /// constructor's step).
    fn advance(&mut self, opt: &mut dyn Optimizer, initial: bool) {
        self.step_count += 1;
        self.last_epoch += 1;
        if let Schedule::OneCycle(o) = &self.schedule
            && self.last_epoch > o.total_steps
        {
            tracing::warn!(
                "OneCycleLR stepped {} times; the specified number of total steps is {} (lr held)",
                self.last_epoch,
                o.total_steps
            );
        }
        let current = opt.lrs();
        let lrs: Vec<f64> = match &self.schedule {
            Schedule::Swa {
                swa_lrs,
                anneal_epochs,
                anneal,
            } => current
                .iter()
                .enumerate()
                .map(|(g, &lr)| {
                    let swa_lr = swa_lrs[g.min(swa_lrs.len() - 1)];
                    swa_next(lr, swa_lr, self.step_count, *anneal_epochs, *anneal)
                })
                .collect(),
            _ => self
                .base_lrs
                .iter()
                .zip(&current)
                .map(|(&b, &lr)| self.schedule.next_lr(lr, b, self.last_epoch, initial))
                .collect(),
        };
        for (g, &lr) in lrs.iter().enumerate() {
            opt.set_lr(g, lr);
        }
        if let Schedule::OneCycle(o) = &self.schedule
            && o.cycle_momentum
        {
            for (g, &b) in self.base_lrs.iter().enumerate() {
                opt.set_momentum(g, o.at(b, self.last_epoch.min(o.total_steps)).1);
            }
        }
        self.last_lr = lrs;
    }
}

impl LrScheduler for Scheduler {
    fn step(&mut self, opt: &mut dyn Optimizer) {
        self.advance(opt, false);
    }

    fn last_lr(&self) -> Vec<f64> {
        self.last_lr.clone()
    }

    fn state_dict(&self) -> Value {
        Value::Dict(self.schedule.full_state(
            &self.base_lrs,
            self.last_epoch,
            &self.last_lr,
            self.step_count,
        ))
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let err = |m: String| OptimError::State(format!("lr scheduler: {m}"));
        let d = state
            .as_dict()
            .ok_or_else(|| err(format!("expected a dict, got {}", state.type_name())))?;
        let last_epoch = d
            .get(&Key::Str("last_epoch".into()))
            .and_then(Value::as_i64)
            .ok_or_else(|| err("missing int \"last_epoch\"".into()))?;
        let floats_of = |k: &str| -> Result<Option<Vec<f64>>, OptimError> {
            match d.get(&Key::Str(k.into())) {
                None => Ok(None),
                Some(v) => v
                    .as_seq()
                    .and_then(|s| s.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                    .map(Some)
                    .ok_or_else(|| err(format!("\"{k}\" must be a list of floats"))),
            }
        };
        let base_lrs = match floats_of("base_lrs")? {
            Some(b) => b,
            None => {
                // SequentialLR keeps base_lrs in its sub-schedulers.
                let subs = d
                    .get(&Key::Str("_schedulers".into()))
                    .and_then(Value::as_seq);
                match subs.and_then(|s| s.first()) {
                    Some(first) => first
                        .get("base_lrs")
                        .and_then(Value::as_seq)
                        .and_then(|s| s.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                        .ok_or_else(|| err("\"_schedulers[0]\" has no base_lrs".into()))?,
                    None => self.base_lrs.clone(),
                }
            }
        };
        if base_lrs.len() != self.base_lrs.len() {
            return Err(err(format!(
                "base_lrs has {} entries, this scheduler's optimizer has {} param groups",
                base_lrs.len(),
                self.base_lrs.len()
            )));
        }
        let last_lr = floats_of("_last_lr")?;
        let step_count = d
            .get(&Key::Str("_step_count".into()))
            .and_then(Value::as_i64)
            .unwrap_or(last_epoch + 1);
        self.base_lrs = base_lrs;
        self.last_epoch = last_epoch;
        self.step_count = step_count;
        self.last_lr = match last_lr {
            Some(l) => l,
            None => self
                .base_lrs
                .iter()
                .map(|&b| self.schedule.lr(b, last_epoch))
                .collect(),
        };
        Ok(())
    }
}
