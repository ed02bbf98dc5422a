//! Lightning's `LearningRateMonitor`: logs each param group's learning rate (and optionally
//! momentum and weight decay) at the start of training batches and/or epochs, under
//! Lightning's names: `lr-Adam`, `lr-Adam/pg1`, `lr-Adam/pg2` for several param groups,
//! `lr-Adam-1` for a second optimizer of the same class, `lr-SGD-momentum`,
//! `lr-AdamW-weight_decay`.

use super::{Callback, CallbackError, TrainerContext};
use crate::optim::Interval;
use indexmap::IndexMap;
use std::any::Any;

/// One param group as the monitor reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroupView {
    /// Its learning rate.
    pub lr: f64,
    /// SGD's `momentum` or Adam's `betas[0]`; `None` when the optimizer has neither (logged as
    /// 0, as Lightning).
    pub momentum: Option<f64>,
    /// Its `weight_decay` (read only when the monitor logs it).
    pub weight_decay: Option<f64>,
    /// Its `name` entry, if it has one (Lightning uses it as the metric suffix).
    pub name: Option<String>,
}

/// One optimizer as the monitor reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerView {
    /// The `torch.optim` class it stands for (`"Adam"`, `"SGD"`).
    pub class_name: String,
    /// Its param groups, in order.
    pub groups: Vec<ParamGroupView>,
}

/// One LR scheduler config as the monitor reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerView {
    /// Index of its optimizer in [`Optimization::optimizers`].
    pub optimizer: usize,
    /// When it steps.
    pub interval: Interval,
    /// Its `name` in Lightning's `lr_scheduler_config` (the metric name instead of `lr-<class>`).
    pub name: Option<String>,
}

/// The optimizers and schedulers of the running `fit`, for callbacks (see
/// [`super::TrainerHandle::optimization`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Optimization {
    /// The optimizers.
    pub optimizers: Vec<OptimizerView>,
    /// The LR scheduler configs.
    pub schedulers: Vec<SchedulerView>,
}

/// Lightning's `LearningRateMonitor(logging_interval, log_momentum, log_weight_decay)`.
///
/// ```
/// use lightning_core::callbacks::LearningRateMonitor;
/// use lightning_core::lightning_module::Interval;
/// let monitor = LearningRateMonitor::new()
///     .logging_interval(Some(Interval::Step))
///     .log_momentum(true);
/// // Trainer::builder().callback(monitor)...: metrics.csv gets `lr-Adam` and
/// // `lr-Adam-momentum` columns, one row per logged step
/// # let _ = monitor;
/// ```
#[derive(Clone, Debug, Default)]
pub struct LearningRateMonitor {
    logging_interval: Option<Interval>,
    log_momentum: bool,
    log_weight_decay: bool,
    /// Every lr logged so far, by metric name (Lightning's `lrs`).
    lrs: IndexMap<String, Vec<f64>>,
}

impl LearningRateMonitor {
    /// Logs at every batch start for step-interval schedulers (and optimizers without one), at
    /// every epoch start for epoch-interval ones: Lightning's `logging_interval=None`.
    pub fn new() -> Self {
        Self::default()
    }
    /// `Some(Interval::Step)`: every scheduler at every batch start (each `log_every_n_steps`);
    /// `Some(Interval::Epoch)`: every scheduler at every epoch start; `None`: each at its own
    /// interval.
    pub fn logging_interval(mut self, interval: Option<Interval>) -> Self {
        self.logging_interval = interval;
        self
    }
    /// Also log `<name>-momentum` (SGD's momentum, Adam's `betas[0]`, else 0).
    pub fn log_momentum(mut self, on: bool) -> Self {
        self.log_momentum = on;
        self
    }
    /// Also log `<name>-weight_decay`.
    pub fn log_weight_decay(mut self, on: bool) -> Self {
        self.log_weight_decay = on;
        self
    }
    /// Every learning rate logged so far, by metric name (Lightning's `lrs`).
    pub fn lrs(&self) -> &IndexMap<String, Vec<f64>> {
        &self.lrs
    }

    /// The metrics due at `when` (`"step"`, `"epoch"` or `"any"`, Lightning's `interval`).
    fn stats(&mut self, o: &Optimization, when: Option<Interval>) -> IndexMap<String, f64> {
        let names = metric_names(o);
        let mut out = IndexMap::new();
        let mut add = |this: &mut Self, opt: &OptimizerView, names: &[String]| {
            for (g, name) in opt.groups.iter().zip(names) {
                out.insert(name.clone(), g.lr);
                this.lrs.entry(name.clone()).or_default().push(g.lr);
                if this.log_momentum {
                    out.insert(format!("{name}-momentum"), g.momentum.unwrap_or(0.0));
                }
                if this.log_weight_decay {
                    out.insert(
                        format!("{name}-weight_decay"),
                        g.weight_decay.unwrap_or(0.0),
                    );
                }
            }
        };
        for (s, names) in o.schedulers.iter().zip(&names.schedulers) {
            if when.is_none_or(|w| w == s.interval)
                && let Some(opt) = o.optimizers.get(s.optimizer)
            {
                add(self, opt, names);
            }
        }
        for (i, names) in &names.without_scheduler {
            add(self, &o.optimizers[*i], names);
        }
        out
    }

    fn log(&mut self, t: &mut TrainerContext<'_>, when: Option<Interval>) -> crate::Result<()> {
        let o = t.optimization(self.log_weight_decay);
        let stats = self.stats(&o, when);
        if !stats.is_empty() {
            t.log_metrics(stats, t.run.global_step);
        }
        Ok(())
    }
}

/// Lightning's names: per scheduler config (in order), then per optimizer without a
/// scheduler: `lr-<class>` (or the config's name), `-<k>` for the k-th (k >= 1) optimizer of a
/// class, `/<group name or pgN>` when an optimizer has several groups (or `/<name>` for a
/// named single group).
struct Names {
    schedulers: Vec<Vec<String>>,
    without_scheduler: Vec<(usize, Vec<String>)>,
}

fn metric_names(o: &Optimization) -> Names {
    let mut seen_types: IndexMap<&str, usize> = IndexMap::new();
    let mut seen_optimizers: Vec<usize> = Vec::new();
    let mut names_of = |i: usize, base: String, count_type: bool| -> Vec<String> {
        seen_optimizers.push(i);
        let opt = &o.optimizers[i];
        if count_type {
            *seen_types.entry(opt.class_name.as_str()).or_default() += 1;
        }
        let name = match seen_types.get(opt.class_name.as_str()) {
            Some(&count) if count > 1 => format!("{base}-{}", count - 1),
            _ => base,
        };
        let many = opt.groups.len() > 1;
        opt.groups
            .iter()
            .enumerate()
            .map(|(g, group)| match (&group.name, many) {
                (Some(n), _) => format!("{name}/{n}"),
                (None, true) => format!("{name}/pg{}", g + 1),
                (None, false) => name.clone(),
            })
            .collect()
    };
    let mut schedulers = Vec::new();
    for s in &o.schedulers {
        if s.optimizer >= o.optimizers.len() {
            schedulers.push(Vec::new());
            continue;
        }
        let base = s
            .name
            .clone()
            .unwrap_or_else(|| format!("lr-{}", o.optimizers[s.optimizer].class_name));
        schedulers.push(names_of(s.optimizer, base, s.name.is_none()));
    }
    let with_scheduler: Vec<usize> = o.schedulers.iter().map(|s| s.optimizer).collect();
    let mut without_scheduler = Vec::new();
    for i in 0..o.optimizers.len() {
        if with_scheduler.contains(&i) {
            continue;
        }
        let base = format!("lr-{}", o.optimizers[i].class_name);
        without_scheduler.push((i, names_of(i, base, true)));
    }
    Names {
        schedulers,
        without_scheduler,
    }
}

impl Callback for LearningRateMonitor {
    fn state_key(&self) -> String {
        "LearningRateMonitor".into()
    }

    /// Lightning's `on_train_start` check: the monitor needs a logger.
    fn on_fit_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if t.run.is_global_zero && t.run.log_dir.is_none() {
            return Err(CallbackError::Config(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."
                    .into(),
            )
            .into());
        }
        Ok(())
    }

    fn on_train_batch_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if !t.run.should_update_logs || self.logging_interval == Some(Interval::Epoch) {
            return Ok(());
        }
        let when = match self.logging_interval {
            None => Some(Interval::Step),
            Some(_) => None,
        };
        self.log(t, when)
    }

    fn on_train_epoch_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if self.logging_interval == Some(Interval::Step) {
            return Ok(());
        }
        let when = match self.logging_interval {
            None => Some(Interval::Epoch),
            Some(_) => None,
        };
        self.log(t, when)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(class: &str, lrs: &[f64]) -> OptimizerView {
        OptimizerView {
            class_name: class.into(),
            groups: lrs
                .iter()
                .map(|&lr| ParamGroupView {
                    lr,
                    momentum: None,
                    weight_decay: None,
                    name: None,
                })
                .collect(),
        }
    }

    fn sched(optimizer: usize, interval: Interval) -> SchedulerView {
        SchedulerView {
            optimizer,
            interval,
            name: None,
        }
    }

    #[test]
    fn names_follow_lightnings_rules() {
        // two Adams (one scheduled), an SGD with two groups
        let o = Optimization {
            optimizers: vec![
                opt("Adam", &[0.1]),
                opt("Adam", &[0.2]),
                opt("SGD", &[0.3, 0.4]),
            ],
            schedulers: vec![sched(1, Interval::Epoch)],
        };
        let n = metric_names(&o);
        assert_eq!(n.schedulers, vec![vec!["lr-Adam".to_string()]]);
        assert_eq!(
            n.without_scheduler,
            vec![
                (0, vec!["lr-Adam-1".to_string()]),
                (2, vec!["lr-SGD/pg1".to_string(), "lr-SGD/pg2".to_string()]),
            ]
        );
    }

    #[test]
    fn intervals_pick_the_schedulers_due() {
        let o = Optimization {
            optimizers: vec![opt("Adam", &[0.1]), opt("SGD", &[0.5])],
            schedulers: vec![sched(0, Interval::Epoch)],
        };
        let mut m = LearningRateMonitor::new().log_momentum(true);
        // at a batch start (interval "step"): only the unscheduled SGD
        let s = m.stats(&o, Some(Interval::Step));
        assert_eq!(s.keys().collect::<Vec<_>>(), ["lr-SGD", "lr-SGD-momentum"]);
        let s = m.stats(&o, None);
        assert_eq!(s["lr-Adam"], 0.1);
        assert_eq!(s["lr-Adam-momentum"], 0.0);
        assert_eq!(m.lrs()["lr-SGD"], vec![0.5, 0.5]);
    }
}
