//! Optimizers (SGD, Adam, AdamW) and LR schedulers with `torch.optim`'s state layout, so
//! their state goes into checkpoints and Python can load it.
//!
//! API contract (the trainer codes against it; bodies are filled in by the optimizer work).

use crate::value::Value;
use tch::Tensor;

mod adam;
mod clip;
pub(crate) mod common;
mod plateau;
mod sched;
mod sgd;

pub(crate) use adam::AdamState;
pub use adam::{Adam, AdamConfig, AdamWConfig};
pub(crate) use clip::clip_gradients;
pub use clip::{clip_grad_norm, clip_grad_value, ClipAlgorithm};
pub use plateau::{PlateauConfig, PlateauMode, ReduceLROnPlateau, ThresholdMode};
pub use sched::{Anneal, LrLambda, OneCycle, Schedule, Scheduler};
pub use sgd::{Sgd, SgdConfig};

/// Errors building or restoring optimizers and schedulers.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A state_dict did not match the optimizer (names what and where).
    #[error("optimizer state: {0}")]
    State(String),
    /// An invalid hyperparameter (e.g. negative lr).
    #[error("invalid optimizer setting: {0}")]
    Config(String),
    /// A libtorch or CUDA failure.
    #[error("optimizer backend: {0}")]
    Backend(String),
}

/// An optimizer over a set of parameter tensors, in param groups.
pub trait Optimizer: Send {
    /// One update from the parameters' `.grad()`s.
    fn step(&mut self) -> Result<(), OptimError>;
    /// Drops every parameter's gradient (`None`), as torch's default `zero_grad()` does.
    fn zero_grad(&mut self);
    /// Every parameter, in param-group order (the order of `state` indices).
    fn params(&self) -> Vec<Tensor>;
    /// The learning rate of each param group.
    fn lrs(&self) -> Vec<f64>;
    /// Sets the learning rate of one param group (used by schedulers).
    fn set_lr(&mut self, group: usize, lr: f64);
    /// `torch.optim.Optimizer.state_dict()` layout: `{"state": {i: {...}}, "param_groups": [...]}`.
    fn state_dict(&self) -> Value;
    /// Restores from [`Optimizer::state_dict`]'s layout (ours or Python's).
    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError>;
    /// The momentum of one param group (SGD's `momentum`, Adam's `betas[0]`), if it has one;
    /// used by `OneCycleLR`'s momentum cycling.
    fn momentum(&self, _group: usize) -> Option<f64> {
        None
    }
    /// Sets the momentum of one param group (no-op for optimizers without one).
    fn set_momentum(&mut self, _group: usize, _momentum: f64) {}
    /// The `torch.optim` class this optimizer stands for (`"Adam"`, `"AdamW"`, `"SGD"`):
    /// Lightning's `LearningRateMonitor` names its metrics after it (`lr-Adam`).
    fn class_name(&self) -> &'static str {
        "Optimizer"
    }
}

/// When a scheduler steps: after every optimizer step or at every epoch end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Interval {
    /// After every `frequency` optimizer steps.
    Step,
    /// At the end of every `frequency` epochs (Lightning's default).
    #[default]
    Epoch,
}

/// A learning-rate scheduler with `torch.optim.lr_scheduler`'s state layout.
pub trait LrScheduler: Send {
    /// Advances one step (an epoch or a batch, by the trainer's `interval`) and sets the lrs.
    fn step(&mut self, opt: &mut dyn Optimizer);
    /// Advances one step given the monitored metric (`ReduceLROnPlateau.step(metric)`); a
    /// scheduler that needs none ignores it.
    fn step_with(&mut self, opt: &mut dyn Optimizer, _metric: f64) {
        self.step(opt);
    }
    /// Whether it steps on a monitored metric (Lightning's `reduce_on_plateau`): the trainer
    /// then steps it with the value its config's `monitor` names.
    fn needs_metric(&self) -> bool {
        false
    }
    /// The lrs after the last step (`get_last_lr()`).
    fn last_lr(&self) -> Vec<f64>;
    /// The scheduler's `__dict__` as torch saves it.
    fn state_dict(&self) -> Value;
    /// Restores from [`LrScheduler::state_dict`]'s layout.
    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError>;
}
