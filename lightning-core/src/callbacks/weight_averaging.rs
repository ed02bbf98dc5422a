//! Lightning 2.6's `WeightAveraging` callback and its `EMAWeightAveraging`: an averaged copy
//! of the module's weights (torch's `AveragedModel`), updated after optimizer steps, swapped
//! in for validation and copied into the module when training ends. Checkpoints hold the
//! averaged weights in `state_dict` (so `load_from_checkpoint` gives the averaged model), the
//! live ones in `current_model_state`, `averaging_state` with `n_averaged`, and the callback's
//! `latest_update_step` under its state key, Lightning's layout both ways.

use super::{Callback, TrainerContext};
use crate::value::{Dict, Key, Value};
use tch::{Kind, Tensor};

/// How the average is taken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Averaging {
    /// The equally weighted mean of every update (SWA: torch's default `avg_fn`).
    Mean,
    /// An exponential moving average: `decay * average + (1 - decay) * current`.
    Ema {
        /// The weight of the average (torch's default 0.999).
        decay: f64,
    },
}

/// Lightning's `WeightAveraging` (`WeightAveraging::new`: the mean, updated after every
/// step) and `EMAWeightAveraging` (`WeightAveraging::ema`).
///
/// ```
/// use lightning_core::callbacks::WeightAveraging;
/// let ema = WeightAveraging::ema(0.99).update_starting_at_step(100);
/// let trainer = lightning_core::trainer::Trainer::builder().callback(ema).build()?;
/// # Ok::<(), lightning_core::Error>(())
/// ```
pub struct WeightAveraging {
    averaging: Averaging,
    use_buffers: bool,
    update_every_n_steps: i64,
    update_starting_at_step: Option<i64>,
    update_starting_at_epoch: Option<i64>,
    /// The averaged copy of every parameter and buffer, by name (from `on_fit_start`).
    average: Option<Vec<(String, Tensor, bool)>>,
    n_averaged: i64,
    latest_update_step: i64,
    latest_update_epoch: i64,
    /// What a checkpoint said, applied at `on_fit_start`: the averaged weights, their count,
    /// and the live weights.
    loaded: Option<(Dict, i64, Option<Dict>)>,
}

impl WeightAveraging {
    /// `WeightAveraging()`: the equally weighted average, updated after every optimizer step.
    pub fn new() -> Self {
        WeightAveraging {
            averaging: Averaging::Mean,
            use_buffers: true,
            update_every_n_steps: 1,
            update_starting_at_step: None,
            update_starting_at_epoch: None,
            average: None,
            n_averaged: 0,
            latest_update_step: 0,
            latest_update_epoch: -1,
            loaded: None,
        }
    }

    /// `EMAWeightAveraging(decay=decay)`: an exponential moving average, updated after every
    /// step.
    pub fn ema(decay: f64) -> Self {
        WeightAveraging {
            averaging: Averaging::Ema { decay },
            ..WeightAveraging::new()
        }
    }

    /// Updates after every `n`-th step only (`EMAWeightAveraging`'s `update_every_n_steps`).
    pub fn update_every_n_steps(mut self, n: i64) -> Self {
        self.update_every_n_steps = n;
        self
    }

    /// No step updates before step index `step`.
    pub fn update_starting_at_step(mut self, step: i64) -> Self {
        self.update_starting_at_step = Some(step);
        self
    }

    /// Updates at the end of every epoch from index `epoch` on.
    pub fn update_starting_at_epoch(mut self, epoch: i64) -> Self {
        self.update_starting_at_epoch = Some(epoch);
        self
    }

    /// Whether buffers are averaged too (default true, as Lightning's).
    pub fn use_buffers(mut self, yes: bool) -> Self {
        self.use_buffers = yes;
        self
    }

    /// The averaged weights (after `fit` started), by name.
    pub fn averaged(&self) -> Option<Vec<(String, Tensor)>> {
        self.average.as_deref().map(super::named_handles)
    }

    /// Lightning's `should_update`.
    fn should_update(&self, step_idx: Option<i64>, epoch_idx: Option<i64>) -> bool {
        match self.averaging {
            Averaging::Mean => step_idx.is_some(),
            Averaging::Ema { .. } => {
                let by_step = step_idx.is_some_and(|s| {
                    self.update_starting_at_step.is_none_or(|start| s >= start)
                        && self.update_every_n_steps > 0
                        && s % self.update_every_n_steps == 0
                });
                let by_epoch = epoch_idx.is_some_and(|e| {
                    self.update_starting_at_epoch
                        .is_some_and(|start| e >= start)
                });
                by_step || by_epoch
            }
        }
    }

    /// `AveragedModel.update_parameters`: the first update copies, later ones average.
    fn update(&mut self, module: &[(String, Tensor)]) {
        let Some(average) = &mut self.average else {
            return;
        };
        let _guard = tch::no_grad_guard();
        for (name, avg, is_buffer) in average.iter_mut() {
            if *is_buffer && !self.use_buffers {
                continue;
            }
            let Some((_, cur)) = module.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let cur = cur.detach().to_device(avg.device());
            if self.n_averaged == 0 {
                avg.copy_(&cur);
                continue;
            }
            let next = match self.averaging {
                Averaging::Ema { decay } => &*avg * decay + &cur * (1.0 - decay),
                Averaging::Mean => {
                    let n = Tensor::from(self.n_averaged).to_device(avg.device());
                    &*avg + (&cur - &*avg) / (n + 1)
                }
            };
            avg.copy_(&next);
        }
        self.n_averaged += 1;
    }

    /// Exchanges the module's values with the average's.
    fn swap(&mut self, module: &[(String, Tensor)]) {
        let Some(average) = &mut self.average else {
            return;
        };
        let _guard = tch::no_grad_guard();
        for (name, avg, _) in average.iter_mut() {
            if let Some((_, cur)) = module.iter().find(|(n, _)| n == name) {
                let tmp = avg.copy();
                avg.copy_(cur);
                let mut cur = cur.shallow_clone();
                cur.copy_(&tmp);
            }
        }
    }
}

impl Default for WeightAveraging {
    fn default() -> Self {
        WeightAveraging::new()
    }
}

fn tensors_of(d: &Dict) -> impl Iterator<Item = (String, &Tensor)> {
    d.iter()
        .filter_map(|(k, v)| v.as_tensor().map(|t| (k.to_string(), t)))
}

impl Callback for WeightAveraging {
    fn state_key(&self) -> String {
        match self.averaging {
            Averaging::Mean => "WeightAveraging".into(),
            Averaging::Ema { .. } => "EMAWeightAveraging".into(),
        }
    }

    /// A new `fit` (or evaluation) starts from nothing: no average, nothing loaded.
    fn setup(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.average = None;
        self.loaded = None;
        Ok(())
    }

    /// Creates the average (a copy of the module, or what a resumed checkpoint held) and
    /// puts a resumed checkpoint's live weights into the module.
    fn on_fit_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let module = t.module_tensors();
        let _guard = tch::no_grad_guard();
        let loaded = self.loaded.take();
        let mut average = Vec::with_capacity(module.len());
        for (name, cur) in &module {
            let saved = loaded
                .as_ref()
                .and_then(|(avg, _, _)| tensors_of(avg).find(|(n, _)| n == name).map(|(_, t)| t));
            let avg = match saved {
                Some(s) if s.size() == cur.size() => {
                    s.to_device(cur.device()).to_kind(cur.kind()).copy()
                }
                _ => cur.detach().copy(),
            };
            // A buffer (or a frozen parameter) follows `use_buffers`.
            average.push((name.clone(), avg, !cur.requires_grad()));
        }
        if let Some((_, n, current)) = &loaded {
            self.n_averaged = *n;
            if let Some(cur) = current {
                for (name, live) in tensors_of(cur) {
                    if let Some((_, m)) = module.iter().find(|(n, _)| *n == name) {
                        let mut m = m.shallow_clone();
                        m.copy_(&live.to_device(m.device()).to_kind(m.kind()));
                    }
                }
            }
        } else {
            self.n_averaged = 0;
        }
        self.average = Some(average);
        Ok(())
    }

    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let step = t.run.global_step;
        if step > self.latest_update_step && self.should_update(Some(step - 1), None) {
            self.update(&t.module_tensors());
            self.latest_update_step = step;
        }
        Ok(())
    }

    fn on_train_epoch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let epoch = t.run.current_epoch;
        if epoch > self.latest_update_epoch && self.should_update(None, Some(epoch)) {
            self.update(&t.module_tensors());
            self.latest_update_epoch = epoch;
        }
        Ok(())
    }

    fn on_validation_epoch_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.swap(&t.module_tensors());
        Ok(())
    }

    fn on_validation_epoch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.swap(&t.module_tensors());
        Ok(())
    }

    /// The module takes the averaged weights.
    fn on_train_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let Some(average) = &self.average else {
            return Ok(());
        };
        let _guard = tch::no_grad_guard();
        for (name, cur) in t.module_tensors() {
            if let Some((_, avg, _)) = average.iter().find(|(n, _, _)| *n == name) {
                let mut cur = cur;
                cur.copy_(avg);
            }
        }
        Ok(())
    }

    fn state_dict(&self) -> Value {
        let mut v = Value::dict();
        v.insert("latest_update_step", self.latest_update_step);
        v
    }

    fn load_state_dict(&mut self, state: &Value) -> crate::Result<()> {
        self.latest_update_step = state
            .get("latest_update_step")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                crate::Error::Msg(format!(
                    "{}: the saved state has no int latest_update_step",
                    self.state_key()
                ))
            })?;
        Ok(())
    }

    /// `state_dict` becomes the averaged weights, the live ones move to
    /// `current_model_state`, `n_averaged` goes to `averaging_state`.
    fn on_save_checkpoint(&self, checkpoint: &mut Value) {
        let Some(average) = &self.average else {
            return;
        };
        let Some(current) = checkpoint.get("state_dict").cloned() else {
            return;
        };
        let Some(cur) = current.as_dict() else {
            return;
        };
        let mut averaged = Dict::with_capacity(cur.len());
        for (k, v) in cur {
            let name = k.to_string();
            let x = match average.iter().find(|(n, _, _)| *n == name) {
                Some((_, avg, _)) => Value::Tensor(avg.shallow_clone()),
                None => v.clone(),
            };
            averaged.insert(k.clone(), x);
        }
        let device = average
            .first()
            .map_or(tch::Device::Cpu, |(_, t, _)| t.device());
        let mut state = Dict::new();
        state.insert(
            Key::from("n_averaged"),
            Value::Tensor(
                Tensor::from(self.n_averaged)
                    .to_kind(Kind::Int64)
                    .to_device(device),
            ),
        );
        checkpoint.insert("current_model_state", current.clone());
        checkpoint.insert("state_dict", Value::OrderedDict(averaged));
        checkpoint.insert("averaging_state", Value::Dict(state));
    }

    /// Keeps the averaged weights (and the live ones, when the file has them) for
    /// `on_fit_start`; a checkpoint saved without the callback seeds the average with its
    /// `state_dict`.
    fn on_load_checkpoint(&mut self, checkpoint: &Value) -> crate::Result<()> {
        let dict = |k: &str| checkpoint.get(k).and_then(Value::as_dict).cloned();
        let Some(state_dict) = dict("state_dict") else {
            return Ok(());
        };
        let n = checkpoint
            .get("averaging_state")
            .and_then(|s| s.get("n_averaged"))
            .and_then(|n| n.as_tensor().map(|t| t.int64_value(&[])).or(n.as_i64()));
        self.loaded = match (dict("current_model_state"), n) {
            (Some(current), Some(n)) => Some((state_dict, n, Some(current))),
            _ => {
                tracing::warn!(
                    "The checkpoint was not created with WeightAveraging. Both the current and \
                     the average model will be initialized with state_dict."
                );
                Some((state_dict, 0, None))
            }
        };
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
