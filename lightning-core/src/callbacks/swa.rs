//! Lightning 2.6's `StochasticWeightAveraging` callback: from `swa_epoch_start` on, the
//! optimizer's LR scheduler is swapped for torch's `SWALR` (annealing to `swa_lrs`) and at
//! the start of every epoch until the last the module's parameters join an equal-weight
//! average (torch's `AveragedModel` arithmetic). When training ends the module takes the
//! average. A module with batch norm gets one more epoch: the averaged weights run forward
//! over the training data without optimization while the batch-norm layers re-estimate their
//! running statistics as a cumulative average (PyTorch's `momentum=None`).
//!
//! The checkpoint holds the callback's state under `StochasticWeightAveraging` as Lightning
//! writes it: `n_averaged`, `latest_update_epoch`, `scheduler_state` (SWALR's state dict,
//! also in `lr_schedulers` once it runs) and `average_model_state` (the averaged module's
//! `state_dict`), so Lightning resumes ours and we resume Lightning's.

use super::{Callback, TrainerContext};
use crate::lightning_module::SchedulerConfig;
use crate::optim::{Anneal, Interval, LrScheduler, OptimError, Optimizer, Schedule, Scheduler};
use crate::traverse::TensorKind;
use crate::value::{Dict, Key, Value};
use crate::Error;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// When averaging starts (Lightning's `swa_epoch_start`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SwaStart {
    /// From this epoch on, counted from 1 (Lightning's int; must be >= 1).
    Epoch(i64),
    /// From epoch `int(fraction * max_epochs)` on (Lightning's float in [0, 1]; needs a
    /// `max_epochs`).
    Fraction(f64),
}

/// Lightning's `StochasticWeightAveraging(swa_lrs, swa_epoch_start=0.8, annealing_epochs=10,
/// annealing_strategy="cos", device="cpu")`.
///
/// Works with one optimizer and at most one LR scheduler (which SWALR replaces), and not
/// with `strategy="fsdp"` (as Lightning). Batch-norm statistics are re-estimated in the
/// extra epoch only by [`crate::layers::BatchNorm`] (tch's bare `nn::BatchNorm` has no batch
/// counter and keeps its momentum).
///
/// ```
/// use lightning_core::callbacks::{StochasticWeightAveraging, SwaStart};
/// let swa = StochasticWeightAveraging::new(0.01).swa_epoch_start(SwaStart::Epoch(3));
/// let trainer = lightning_core::trainer::Trainer::builder().max_epochs(5).callback(swa).build()?;
/// # Ok::<(), lightning_core::Error>(())
/// ```
pub struct StochasticWeightAveraging {
    swa_lrs: Vec<f64>,
    swa_epoch_start: SwaStart,
    annealing_epochs: i64,
    annealing_strategy: Anneal,
    device: Option<Device>,
    // --- one `fit` ---
    /// `swa_epoch_start` as an epoch counted from 1 (from `on_fit_start`).
    start: i64,
    /// The epoch limit before the batch-norm epoch was added (-1: none).
    max_epochs: i64,
    contains_batch_norm: bool,
    /// The averaged module: every persistent tensor in `state_dict` order (from `setup`).
    average: Option<Vec<(String, Tensor, TensorKind)>>,
    n_averaged: Option<i64>,
    init_n_averaged: i64,
    latest_update_epoch: i64,
    initialized: bool,
    /// SWALR, shared with the trainer's scheduler list.
    scheduler: Option<Arc<Mutex<Scheduler>>>,
    /// SWALR's state from a resumed checkpoint.
    scheduler_state: Option<Value>,
    /// Batch-norm layers average cumulatively (the batch-norm epoch is running).
    cumulative_bn: bool,
}

impl StochasticWeightAveraging {
    /// SWA annealing every param group's lr to `swa_lr`, Lightning's defaults otherwise
    /// (start at 0.8 of `max_epochs`, 10 cosine annealing epochs, the average on the CPU).
    pub fn new(swa_lr: f64) -> Self {
        StochasticWeightAveraging::with_lrs(vec![swa_lr])
    }

    /// SWA with one lr per param group of the optimizer.
    pub fn with_lrs(swa_lrs: Vec<f64>) -> Self {
        StochasticWeightAveraging {
            swa_lrs,
            swa_epoch_start: SwaStart::Fraction(0.8),
            annealing_epochs: 10,
            annealing_strategy: Anneal::Cos,
            device: Some(Device::Cpu),
            start: 1,
            max_epochs: -1,
            contains_batch_norm: false,
            average: None,
            n_averaged: None,
            init_n_averaged: 0,
            latest_update_epoch: -1,
            initialized: false,
            scheduler: None,
            scheduler_state: None,
            cumulative_bn: false,
        }
    }

    /// When averaging starts.
    pub fn swa_epoch_start(mut self, start: SwaStart) -> Self {
        self.swa_epoch_start = start;
        self
    }

    /// Epochs of SWALR's annealing phase.
    pub fn annealing_epochs(mut self, epochs: i64) -> Self {
        self.annealing_epochs = epochs;
        self
    }

    /// Cosine (default) or linear annealing.
    pub fn annealing_strategy(mut self, anneal: Anneal) -> Self {
        self.annealing_strategy = anneal;
        self
    }

    /// Where the average lives (`None`: the module's device; default the CPU).
    pub fn device(mut self, device: Option<Device>) -> Self {
        self.device = device;
        self
    }

    /// The averaged weights by name (after `fit` started).
    pub fn averaged(&self) -> Option<Vec<(String, Tensor)>> {
        self.average.as_deref().map(super::named_handles)
    }

    /// How many models the average holds.
    pub fn n_averaged(&self) -> i64 {
        self.n_averaged.unwrap_or(self.init_n_averaged)
    }

    /// Lightning's constructor checks, reported all at once.
    fn check(&self) -> crate::Result<()> {
        let mut errors = Vec::new();
        match self.swa_epoch_start {
            SwaStart::Epoch(e) if e < 1 => errors.push(format!(
                "swa_epoch_start should be a >0 integer or a float between 0 and 1, got {e}"
            )),
            SwaStart::Fraction(f) if !(0.0..=1.0).contains(&f) => errors.push(format!(
                "swa_epoch_start should be a >0 integer or a float between 0 and 1, got {f}"
            )),
            _ => {}
        }
        if self.swa_lrs.is_empty() || self.swa_lrs.iter().any(|&lr| lr.is_nan() || lr <= 0.0) {
            errors.push(format!(
                "The `swa_lrs` should a positive float, or a list of positive floats, got {:?}",
                self.swa_lrs
            ));
        }
        if self.annealing_epochs < 0 {
            errors.push(format!(
                "anneal_epochs must be equal or greater than 0, got {}",
                self.annealing_epochs
            ));
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(Error::Config(format!(
                "StochasticWeightAveraging: {}",
                errors.join("; ")
            ))),
        }
    }

    /// 0-based first averaged epoch.
    fn swa_start(&self) -> i64 {
        (self.start - 1).max(0)
    }

    /// 0-based last averaged epoch (`i64::MAX` without an epoch limit).
    fn swa_end(&self) -> i64 {
        match self.max_epochs {
            -1 => i64::MAX,
            e => e - 1,
        }
    }

    fn in_swa(&self, epoch: i64) -> bool {
        self.swa_start() <= epoch && epoch <= self.swa_end()
    }

    /// The module's parameters as `update_parameters` and `transfer_weights` see them.
    fn parameters(t: &TrainerContext<'_>) -> Vec<(String, Tensor)> {
        t.module_state()
            .into_iter()
            .filter(|(_, _, k)| *k == TensorKind::Parameter)
            .map(|(n, x, _)| (n, x))
            .collect()
    }

    /// Lightning's `update_parameters`: the first update copies, later ones take the running
    /// mean `avg + (p - avg) / (n + 1)`.
    fn update_parameters(&mut self, module: &[(String, Tensor)]) {
        let (Some(average), Some(n)) = (&mut self.average, &mut self.n_averaged) else {
            return;
        };
        let _guard = tch::no_grad_guard();
        for (name, avg, kind) in average.iter_mut() {
            if *kind != TensorKind::Parameter {
                continue;
            }
            let Some((_, p)) = module.iter().find(|(m, _)| m == name) else {
                continue;
            };
            let p = p.detach().to_device(avg.device());
            if *n == 0 {
                avg.copy_(&p);
            } else {
                let count = Tensor::from(*n)
                    .to_kind(Kind::Int64)
                    .to_device(avg.device());
                let next = &*avg + (&p - &*avg) / (count + 1);
                avg.copy_(&next);
            }
        }
        *n += 1;
    }

    /// Lightning's `transfer_weights`: the module's parameters take the average's.
    fn transfer_weights(&self, module: &[(String, Tensor)]) {
        let Some(average) = &self.average else {
            return;
        };
        let _guard = tch::no_grad_guard();
        for (name, avg, kind) in average {
            if *kind != TensorKind::Parameter {
                continue;
            }
            if let Some((_, p)) = module.iter().find(|(m, _)| m == name) {
                let mut p = p.shallow_clone();
                p.copy_(&avg.to_device(p.device()));
            }
        }
    }

    /// Lightning's `reset_batch_norm_and_save_state`: running means to 0, variances to 1,
    /// batch counters to 0, and cumulative averaging on.
    fn reset_batch_norm(&mut self, t: &TrainerContext<'_>) {
        let _guard = tch::no_grad_guard();
        for (name, x, kind) in t.module_state() {
            if kind == TensorKind::Parameter {
                continue;
            }
            let mut x = x;
            if is_bn_buffer(&name, "running_mean") {
                let _ = x.zero_();
            } else if is_bn_buffer(&name, "running_var") {
                let _ = x.fill_(1.0);
            } else if is_bn_buffer(&name, "num_batches_tracked") {
                let _ = x.zero_();
            }
        }
        crate::layers::set_cumulative_batch_norm(true);
        self.cumulative_bn = true;
    }

    fn end_cumulative_bn(&mut self) {
        if self.cumulative_bn {
            crate::layers::set_cumulative_batch_norm(false);
            self.cumulative_bn = false;
        }
    }

    /// Swaps the first optimizer's scheduler for SWALR (or adds it), restoring a resumed
    /// checkpoint's SWALR state.
    fn start_swalr(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let epoch = t.run.current_epoch;
        let is_global_zero = t.run.is_global_zero;
        let last_epoch = match self.annealing_strategy {
            Anneal::Cos => t.run.max_epochs,
            Anneal::Linear => -1,
        };
        let config = t.optimizer_config().ok_or_else(|| {
            Error::Config("StochasticWeightAveraging: the trainer lends no optimizer".into())
        })?;
        let Some(entry) = config.entries_mut().first_mut() else {
            return Err(Error::Config(
                "SWA currently works with 1 `optimizer`.".into(),
            ));
        };
        let groups = entry.optimizer.lrs().len();
        let lrs = match self.swa_lrs.as_slice() {
            [one] => vec![*one; groups],
            many if many.len() == groups => many.to_vec(),
            many => {
                return Err(Error::Config(format!(
                    "StochasticWeightAveraging: {} swa_lrs for an optimizer with {groups} param \
                     groups",
                    many.len()
                )))
            }
        };
        let schedule = Schedule::Swa {
            swa_lrs: lrs.clone(),
            anneal_epochs: self.annealing_epochs,
            anneal: self.annealing_strategy,
        };
        let opt: &mut dyn Optimizer = entry.optimizer.as_mut();
        let mut swalr = Scheduler::starting_at(opt, schedule, lrs, last_epoch)
            .map_err(|e| Error::Config(format!("StochasticWeightAveraging: {e}")))?;
        match &self.scheduler_state {
            Some(state) => swalr.load_state_dict(state).map_err(|e| {
                Error::Config(format!(
                    "StochasticWeightAveraging: the checkpoint's scheduler_state: {e}"
                ))
            })?,
            None if epoch != self.swa_start() => crate::trainer::warn(
                "SWA is initializing after swa_start without any checkpoint data. This may be \
                 caused by loading a checkpoint from an older version of PyTorch Lightning.",
            ),
            None => {}
        }
        let shared = Arc::new(Mutex::new(swalr));
        let swa_config = SchedulerConfig::new(SharedScheduler(shared.clone()));
        match entry.schedulers.first_mut() {
            Some(old) => {
                if old.interval != Interval::Epoch || old.frequency != 1 {
                    crate::trainer::warn(&format!(
                        "SWA is currently only supported every epoch. Found interval {:?}, \
                         frequency {}",
                        old.interval, old.frequency
                    ));
                }
                if is_global_zero {
                    println!("Swapping the LR scheduler for `SWALR`");
                }
                *old = swa_config;
            }
            None => entry.schedulers.push(swa_config),
        }
        self.scheduler = Some(shared);
        Ok(())
    }
}

/// Whether `name` is the buffer `field` of a module (`bn.running_mean`, or `running_mean`
/// at the top).
fn is_bn_buffer(name: &str, field: &str) -> bool {
    name == field || name.ends_with(&format!(".{field}"))
}

/// A scheduler shared between the callback (whose checkpoint state holds its state dict)
/// and the trainer (which steps it).
struct SharedScheduler(Arc<Mutex<Scheduler>>);

impl SharedScheduler {
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        lock(&self.0)
    }
}

fn lock(m: &Mutex<Scheduler>) -> MutexGuard<'_, Scheduler> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LrScheduler for SharedScheduler {
    fn step(&mut self, opt: &mut dyn Optimizer) {
        self.lock().step(opt)
    }
    fn last_lr(&self) -> Vec<f64> {
        self.lock().last_lr()
    }
    fn state_dict(&self) -> Value {
        self.lock().state_dict()
    }
    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        self.lock().load_state_dict(state)
    }
}

impl Callback for StochasticWeightAveraging {
    fn state_key(&self) -> String {
        "StochasticWeightAveraging".into()
    }

    /// A copy of the module as it is now (before a resumed checkpoint's weights), as
    /// Lightning's deepcopy in `setup`; a new `fit` starts from nothing else.
    fn setup(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.check()?;
        if t.run.sharded {
            return Err(Error::Config(
                "SWA does not currently support sharded models.".into(),
            ));
        }
        self.end_cumulative_bn();
        let device = self.device;
        self.average = Some(
            t.module_state()
                .into_iter()
                .map(|(n, x, k)| {
                    let d = device.unwrap_or(x.device());
                    (n, x.detach().to_device(d).copy(), k)
                })
                .collect(),
        );
        self.n_averaged = None;
        self.init_n_averaged = 0;
        self.latest_update_epoch = -1;
        self.initialized = false;
        self.scheduler = None;
        self.scheduler_state = None;
        Ok(())
    }

    fn on_fit_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let o = t.optimization(false);
        if o.optimizers.len() != 1 {
            return Err(Error::Config(
                "SWA currently works with 1 `optimizer`.".into(),
            ));
        }
        if o.schedulers.len() > 1 {
            return Err(Error::Config(
                "SWA currently not supported for more than 1 `lr_scheduler`.".into(),
            ));
        }
        let max_epochs = t.run.max_epochs;
        self.start = match self.swa_epoch_start {
            SwaStart::Epoch(e) => e,
            SwaStart::Fraction(_) if max_epochs == -1 => {
                return Err(Error::Config(
                    "SWA with `swa_epoch_start` as a float is not supported when \
                     `max_epochs=-1`. Please provide `swa_epoch_start` as an integer."
                        .into(),
                ))
            }
            SwaStart::Fraction(f) => (max_epochs as f64 * f) as i64,
        };
        self.contains_batch_norm = t
            .module_state()
            .iter()
            .any(|(n, _, k)| *k != TensorKind::Parameter && is_bn_buffer(n, "running_mean"));
        self.max_epochs = max_epochs;
        if self.contains_batch_norm && max_epochs != -1 {
            // one more epoch, to re-estimate the batch-norm statistics of the average
            t.extend_max_epochs(1);
        }
        Ok(())
    }

    fn on_train_epoch_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let epoch = t.run.current_epoch;
        if !self.initialized && self.in_swa(epoch) {
            self.initialized = true;
            self.start_swalr(t)?;
            if self.n_averaged.is_none() {
                self.n_averaged = Some(self.init_n_averaged);
            }
        }
        if self.in_swa(epoch) && epoch > self.latest_update_epoch {
            self.update_parameters(&Self::parameters(t));
            self.latest_update_epoch = epoch;
        }
        if self.max_epochs != -1 && epoch == self.swa_end() + 1 {
            // the batch-norm epoch: the average's weights, statistics from scratch, no steps
            self.transfer_weights(&Self::parameters(t));
            self.reset_batch_norm(t);
            t.skip_optimization_this_epoch();
        }
        Ok(())
    }

    fn on_train_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        // the trainer has counted the last epoch: `current_epoch - 1` is its index
        let last = t.run.current_epoch - 1;
        if self.contains_batch_norm && self.max_epochs != -1 && last == self.swa_end() + 1 {
            self.end_cumulative_bn();
        } else if last == self.swa_end() || self.max_epochs == -1 {
            self.transfer_weights(&Self::parameters(t));
        }
        self.end_cumulative_bn();
        Ok(())
    }

    fn on_exception(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.end_cumulative_bn();
        Ok(())
    }

    fn state_dict(&self) -> Value {
        let mut v = Value::dict();
        // (Lightning writes 0 when this fit has not averaged yet, also after a resume past
        // the averaging epochs; the count loaded is kept instead)
        v.insert("n_averaged", self.n_averaged());
        v.insert("latest_update_epoch", self.latest_update_epoch);
        v.insert(
            "scheduler_state",
            self.scheduler
                .as_ref()
                .map_or(Value::None, |s| lock(s).state_dict()),
        );
        let average = self.average.as_ref().map_or(Value::None, |a| {
            Value::OrderedDict(
                a.iter()
                    .map(|(n, x, _)| (Key::from(n.as_str()), Value::Tensor(x.shallow_clone())))
                    .collect::<Dict>(),
            )
        });
        v.insert("average_model_state", average);
        v
    }

    fn load_state_dict(&mut self, state: &Value) -> crate::Result<()> {
        let err = |m: &str| Error::Msg(format!("StochasticWeightAveraging: the saved state {m}"));
        self.init_n_averaged = state
            .get("n_averaged")
            .and_then(Value::as_i64)
            .ok_or_else(|| err("has no int n_averaged"))?;
        self.latest_update_epoch = state
            .get("latest_update_epoch")
            .and_then(Value::as_i64)
            .ok_or_else(|| err("has no int latest_update_epoch"))?;
        self.scheduler_state = state
            .get("scheduler_state")
            .filter(|s| !matches!(s, Value::None))
            .cloned();
        let saved = state.get("average_model_state").and_then(Value::as_dict);
        if let (Some(saved), Some(average)) = (saved, &mut self.average) {
            let _guard = tch::no_grad_guard();
            for (name, avg, _) in average.iter_mut() {
                let x = saved
                    .get(&Key::from(name.as_str()))
                    .and_then(Value::as_tensor)
                    .ok_or_else(|| err(&format!("average_model_state has no tensor {name}")))?;
                if x.size() != avg.size() {
                    return Err(err(&format!(
                        "average_model_state.{name} has shape {:?}, the module {:?}",
                        x.size(),
                        avg.size()
                    )));
                }
                avg.copy_(&x.to_device(avg.device()).to_kind(avg.kind()));
            }
        }
        Ok(())
    }

    fn replaces_lr_schedulers(&self) -> bool {
        self.scheduler_state.is_some()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
