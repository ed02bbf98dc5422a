//! Manual optimization: what `training_step` gets when the module turns automatic
//! optimization off (Lightning's `self.optimizers()`, `self.lr_schedulers()`,
//! `self.manual_backward`, `toggle_optimizer`, `clip_gradients`).
//!
//! The trainer lends its optimizers and grad scaler to the step's [`StepContext`] for the
//! duration of `training_step` and takes them back afterwards, with the number of optimizer
//! steps taken (Lightning's `manual_optimization.optim_step_progress`, which is also its
//! `global_step` in this mode).
//!
//! [`StepContext`]: super::StepContext

use super::error::ModuleError;
use super::OptimizerConfig;
use crate::error::{Error, Result};
use crate::optim::{clip_gradients, ClipAlgorithm, LrScheduler, Optimizer};
use crate::precision::GradScaler;
use tch::Tensor;

/// The optimizers of `configure_optimizers` with the precision plugin's grad scaler: what the
/// trainer owns during a `fit` and lends, whole, to a manual-optimization step.
pub(crate) struct Optimizers {
    /// The optimizers and their schedulers.
    pub config: OptimizerConfig,
    /// The grad scaler of `16-mixed`.
    pub scaler: Option<GradScaler>,
}

impl Optimizers {
    /// `loss` scaled by the grad scaler (16-mixed), else `loss` itself.
    pub fn scale(&self, loss: Tensor) -> Tensor {
        match &self.scaler {
            Some(s) => s.scale(&loss),
            None => loss,
        }
    }
}

/// What a distributed strategy does before each backward of a manual step (DDP: re-arm its
/// reducer, as Lightning's `DDPStrategy.pre_backward` calls `prepare_for_backward` for every
/// `manual_backward`).
pub(crate) trait BackwardSync: Send {
    /// Before `loss.backward()`.
    fn before_backward(&mut self, loss: &Tensor) -> Result<()>;
    /// The strategy object back, for the trainer to take it back after the step.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

/// What the trainer lends a manual-optimization step.
pub(crate) struct ManualOptim {
    /// The trainer's optimizers and scaler, for this `training_step`.
    pub lent: Optimizers,
    /// Optimizer steps taken in this `training_step` (skipped AMP steps count, as Lightning).
    pub steps: i64,
    /// `requires_grad` of every optimizer's parameters before `toggle` (Lightning's
    /// `_param_requires_grad_state`), keyed by the tensor's data pointer.
    toggled: Vec<(usize, Tensor, bool)>,
    /// The distributed strategy's gradient sync (DDP), lent for this step.
    pub sync: Option<Box<dyn BackwardSync>>,
}

impl std::fmt::Debug for ManualOptim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualOptim")
            .field("optimizers", &self.lent.config.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl ManualOptim {
    pub fn new(lent: Optimizers) -> Self {
        ManualOptim {
            lent,
            steps: 0,
            toggled: Vec::new(),
            sync: None,
        }
    }

    /// Optimizer `i` and the grad scaler, borrowed together.
    fn optimizer(&mut self, i: usize) -> Result<(&mut dyn Optimizer, &mut Option<GradScaler>)> {
        let Optimizers { config, scaler } = &mut self.lent;
        let n = config.len();
        let e = config
            .entries_mut()
            .get_mut(i)
            .ok_or_else(|| out_of_range("optimizer", i, n))?;
        Ok((e.optimizer.as_mut(), scaler))
    }

    /// `loss` scaled by the grad scaler (16-mixed), back-propagated (under DDP, the gradients
    /// averaged over the ranks by the reducer during the backward).
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        let scaled = self.lent.scale(loss.shallow_clone());
        if let Some(s) = &mut self.sync {
            s.before_backward(&scaled)?;
        }
        scaled
            .f_backward()
            .map_err(|e| ModuleError::Backward(e).into())
    }
}

fn out_of_range(what: &'static str, index: usize, count: usize) -> Error {
    ModuleError::IndexOutOfRange { what, index, count }.into()
}

/// The module's optimizers during a manual-optimization `training_step`
/// ([`StepContext::optimizers`](super::StepContext::optimizers)), by index in
/// `configure_optimizers`'s order. Steps go through the precision plugin (the grad scaler
/// under `16-mixed`) and are counted as Lightning counts them.
pub struct ManualOptimizers<'a> {
    m: &'a mut ManualOptim,
}

impl<'a> ManualOptimizers<'a> {
    pub(crate) fn new(m: &'a mut ManualOptim) -> Self {
        ManualOptimizers { m }
    }

    /// How many optimizers.
    pub fn len(&self) -> usize {
        self.m.lent.config.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.m.lent.config.is_empty()
    }

    /// Optimizer `i` itself (its learning rates, state, parameters).
    pub fn get(&mut self, i: usize) -> Result<&mut dyn Optimizer> {
        Ok(self.m.optimizer(i)?.0)
    }

    /// `opt.step()`: under `16-mixed` the scaler unscales (unless
    /// [`clip_gradients`](Self::clip_gradients) did), skips the step when a gradient is
    /// inf/NaN, and updates its scale (as Lightning's precision plugin does for each manual
    /// step). Returns whether the optimizer stepped; the step counts either way.
    pub fn step(&mut self, i: usize) -> Result<bool> {
        let (opt, scaler) = self.m.optimizer(i)?;
        let stepped = match scaler {
            Some(s) => {
                let stepped = s.step(opt)?;
                s.update()?;
                stepped
            }
            None => {
                opt.step()?;
                true
            }
        };
        self.m.steps += 1;
        Ok(stepped)
    }

    /// `opt.zero_grad()` (gradients set to `None`, as torch's default).
    pub fn zero_grad(&mut self, i: usize) -> Result<()> {
        self.get(i)?.zero_grad();
        Ok(())
    }

    /// Lightning's `toggle_optimizer`: only optimizer `i`'s parameters require gradients
    /// (the others' `requires_grad` is saved and turned off) until [`untoggle`](Self::untoggle).
    pub fn toggle(&mut self, i: usize) -> Result<()> {
        let n = self.m.lent.config.len();
        if i >= n {
            return Err(out_of_range("optimizer", i, n));
        }
        let mut saved: Vec<(usize, Tensor, bool)> = Vec::new();
        for e in self.m.lent.config.entries() {
            for p in e.optimizer.params() {
                let key = p.data_ptr() as usize;
                if saved.iter().all(|(k, _, _)| *k != key) {
                    saved.push((key, p.shallow_clone(), p.requires_grad()));
                    let _ = p.set_requires_grad(false);
                }
            }
        }
        for p in self.m.lent.config.entries()[i].optimizer.params() {
            let key = p.data_ptr() as usize;
            if let Some((_, _, was)) = saved.iter().find(|(k, _, _)| *k == key) {
                let _ = p.set_requires_grad(*was);
            }
        }
        self.m.toggled = saved;
        Ok(())
    }

    /// Lightning's `untoggle_optimizer`: restores the `requires_grad` that
    /// [`toggle`](Self::toggle) saved, for every parameter outside optimizer `i`.
    pub fn untoggle(&mut self, i: usize) -> Result<()> {
        let n = self.m.lent.config.len();
        if i >= n {
            return Err(out_of_range("optimizer", i, n));
        }
        let own: Vec<usize> = self.m.lent.config.entries()[i]
            .optimizer
            .params()
            .iter()
            .map(|p| p.data_ptr() as usize)
            .collect();
        for (key, p, was) in std::mem::take(&mut self.m.toggled) {
            if !own.contains(&key) {
                let _ = p.set_requires_grad(was);
            }
        }
        Ok(())
    }

    /// Lightning's `self.clip_gradients(opt, gradient_clip_val, gradient_clip_algorithm)`:
    /// clips optimizer `i`'s gradients, unscaled first under `16-mixed` (its `step` then does
    /// not unscale again).
    pub fn clip_gradients(&mut self, i: usize, value: f64, algorithm: ClipAlgorithm) -> Result<()> {
        let (opt, scaler) = self.m.optimizer(i)?;
        if let Some(s) = scaler {
            let _found_inf = s.unscale_(&*opt)?;
        }
        Ok(clip_gradients(&opt.params(), value, algorithm)?)
    }
}

/// The module's LR schedulers during a manual-optimization `training_step`
/// ([`StepContext::lr_schedulers`](super::StepContext::lr_schedulers)), by index in checkpoint
/// order (optimizer by optimizer). In manual optimization the trainer steps none of them, as
/// Lightning: the step calls [`step`](Self::step) when it wants.
pub struct ManualSchedulers<'a> {
    m: &'a mut ManualOptim,
}

impl<'a> ManualSchedulers<'a> {
    pub(crate) fn new(m: &'a mut ManualOptim) -> Self {
        ManualSchedulers { m }
    }

    /// How many schedulers (over all optimizers).
    pub fn len(&self) -> usize {
        self.m.lent.config.schedulers().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `sch.step()` on scheduler `i`, setting its optimizer's learning rates.
    pub fn step(&mut self, i: usize) -> Result<()> {
        let n = self.len();
        let (o, j) = self
            .m
            .lent
            .config
            .entries()
            .iter()
            .enumerate()
            .flat_map(|(o, e)| (0..e.schedulers.len()).map(move |j| (o, j)))
            .nth(i)
            .ok_or_else(|| out_of_range("LR scheduler", i, n))?;
        let e = &mut self.m.lent.config.entries_mut()[o];
        e.schedulers[j].scheduler.step(e.optimizer.as_mut());
        Ok(())
    }

    /// Scheduler `i` itself (`last_lr`, state).
    pub fn get(&self, i: usize) -> Result<&dyn LrScheduler> {
        let n = self.len();
        self.m
            .lent
            .config
            .schedulers()
            .nth(i)
            .map(|(_, s)| s.scheduler.as_ref())
            .ok_or_else(|| out_of_range("LR scheduler", i, n))
    }
}
