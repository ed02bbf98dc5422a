//! `torch.optim.lr_scheduler.ReduceLROnPlateau`: the lr drops by `factor` once a monitored
//! metric stopped improving for `patience` steps; its state in torch 2.11's layout, so
//! `ReduceLROnPlateau.load_state_dict` takes ours and we take torch's.

use super::{LrScheduler, OptimError, Optimizer};
use crate::value::{Dict, Key, Value};

/// Whether lower (`Min`) or higher (`Max`) values of the metric are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PlateauMode {
    /// Lower is better (a loss).
    #[default]
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How `threshold` defines a significant improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThresholdMode {
    /// Better than `best * (1 -/+ threshold)`.
    #[default]
    Rel,
    /// Better than `best -/+ threshold`.
    Abs,
}

/// `ReduceLROnPlateau`'s settings (torch's defaults from `Default`).
#[derive(Clone, Debug, PartialEq)]
pub struct PlateauConfig {
    /// Min or max.
    pub mode: PlateauMode,
    /// The lr is multiplied by this (< 1).
    pub factor: f64,
    /// Steps without improvement tolerated before the lr drops.
    pub patience: i64,
    /// The significance of an improvement.
    pub threshold: f64,
    /// Relative or absolute threshold.
    pub threshold_mode: ThresholdMode,
    /// Steps to wait after a drop before counting bad steps again.
    pub cooldown: i64,
    /// Lower bound of each group's lr (one value: every group).
    pub min_lrs: Vec<f64>,
    /// A drop smaller than this is not applied.
    pub eps: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        PlateauConfig {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lrs: vec![0.0],
            eps: 1e-8,
        }
    }
}

/// `ReduceLROnPlateau`. The trainer steps it with the metric named by its scheduler config's
/// `monitor` ([`crate::lightning_module::SchedulerConfig::monitor`]), at the end of every epoch
/// (after validation) or after every optimizer step, as Lightning does.
///
/// ```
/// use lightning_core::optim::{Optimizer, PlateauConfig, ReduceLROnPlateau, Sgd, SgdConfig, LrScheduler};
/// let p = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let mut opt = Sgd::new(vec![p], SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut s = ReduceLROnPlateau::new(&opt, PlateauConfig { patience: 1, ..Default::default() })?;
/// for loss in [1.0, 0.9, 0.95, 0.96] {
///     s.step_with(&mut opt, loss);
/// }
/// assert!((opt.lrs()[0] - 0.01).abs() < 1e-12); // two steps without improvement > patience 1
/// # Ok::<(), lightning_core::optim::OptimError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceLROnPlateau {
    cfg: PlateauConfig,
    /// torch's `default_min_lr`: the one value given for every group (`None`: a list).
    default_min_lr: Option<f64>,
    best: f64,
    num_bad_epochs: i64,
    cooldown_counter: i64,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl ReduceLROnPlateau {
    /// A scheduler over `opt`'s param groups (one `min_lrs` value, or one per group).
    pub fn new(opt: &dyn Optimizer, cfg: PlateauConfig) -> Result<Self, OptimError> {
        let bad = |m: String| Err(OptimError::Config(m));
        if cfg.factor >= 1.0 {
            return bad("Factor should be < 1.0.".into());
        }
        let groups = opt.lrs().len();
        let (min_lrs, default_min_lr) = match cfg.min_lrs.as_slice() {
            [one] => (vec![*one; groups], Some(*one)),
            many if many.len() == groups => (many.to_vec(), None),
            many => return bad(format!("expected {groups} min_lrs, got {}", many.len())),
        };
        let mode_worse = match cfg.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        };
        Ok(ReduceLROnPlateau {
            cfg: PlateauConfig { min_lrs, ..cfg },
            default_min_lr,
            best: mode_worse,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
            last_lr: opt.lrs(),
        })
    }

    fn mode_worse(&self) -> f64 {
        match self.cfg.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        }
    }

    fn is_better(&self, a: f64) -> bool {
        let (best, t) = (self.best, self.cfg.threshold);
        match (self.cfg.mode, self.cfg.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }

    /// Steps with the metric's value (`scheduler.step(metric)`).
    pub fn step_with(&mut self, opt: &mut dyn Optimizer, current: f64) {
        self.last_epoch += 1;
        if self.is_better(current) {
            self.best = current;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.cfg.patience {
            for (i, old) in opt.lrs().into_iter().enumerate() {
                let min = self.cfg.min_lrs.get(i).copied().unwrap_or(0.0);
                let new = (old * self.cfg.factor).max(min);
                if old - new > self.cfg.eps {
                    opt.set_lr(i, new);
                }
            }
            self.cooldown_counter = self.cfg.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lr = opt.lrs();
    }
}

impl LrScheduler for ReduceLROnPlateau {
    /// Without a metric nothing changes (the trainer steps it with [`LrScheduler::step_with`]).
    fn step(&mut self, _opt: &mut dyn Optimizer) {}

    fn step_with(&mut self, opt: &mut dyn Optimizer, metric: f64) {
        ReduceLROnPlateau::step_with(self, opt, metric);
    }

    fn needs_metric(&self) -> bool {
        true
    }

    fn last_lr(&self) -> Vec<f64> {
        self.last_lr.clone()
    }

    fn state_dict(&self) -> Value {
        let mut d = Dict::new();
        let mut put = |k: &str, v: Value| {
            d.insert(Key::Str(k.into()), v);
        };
        let floats = |v: &[f64]| Value::List(v.iter().map(|&x| Value::Float(x)).collect());
        put("factor", Value::Float(self.cfg.factor));
        put(
            "default_min_lr",
            self.default_min_lr.map_or(Value::None, Value::Float),
        );
        put("min_lrs", floats(&self.cfg.min_lrs));
        put("patience", Value::Int(self.cfg.patience));
        put("cooldown", Value::Int(self.cfg.cooldown));
        put("eps", Value::Float(self.cfg.eps));
        put("last_epoch", Value::Int(self.last_epoch));
        put("_last_lr", floats(&self.last_lr));
        put("mode_worse", Value::Float(self.mode_worse()));
        put(
            "mode",
            Value::Str(match self.cfg.mode {
                PlateauMode::Min => "min".into(),
                PlateauMode::Max => "max".into(),
            }),
        );
        put("threshold", Value::Float(self.cfg.threshold));
        put(
            "threshold_mode",
            Value::Str(match self.cfg.threshold_mode {
                ThresholdMode::Rel => "rel".into(),
                ThresholdMode::Abs => "abs".into(),
            }),
        );
        put("best", Value::Float(self.best));
        put("cooldown_counter", Value::Int(self.cooldown_counter));
        put("num_bad_epochs", Value::Int(self.num_bad_epochs));
        Value::Dict(d)
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<(), OptimError> {
        let err = |m: String| OptimError::State(format!("ReduceLROnPlateau: {m}"));
        let d = state
            .as_dict()
            .ok_or_else(|| err(format!("expected a dict, got {}", state.type_name())))?;
        let get = |k: &str| d.get(&Key::Str(k.into()));
        let float = |k: &str| {
            get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| err(format!("missing number {k:?}")))
        };
        let int = |k: &str| {
            get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| err(format!("missing int {k:?}")))
        };
        let floats = |k: &str| {
            get(k)
                .and_then(Value::as_seq)
                .and_then(|s| s.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                .ok_or_else(|| err(format!("{k:?} must be a list of numbers")))
        };
        let mode = match get("mode").and_then(Value::as_str) {
            Some("min") => PlateauMode::Min,
            Some("max") => PlateauMode::Max,
            other => return Err(err(format!("mode {other:?}: expected \"min\" or \"max\""))),
        };
        let threshold_mode = match get("threshold_mode").and_then(Value::as_str) {
            Some("rel") => ThresholdMode::Rel,
            Some("abs") => ThresholdMode::Abs,
            other => {
                return Err(err(format!(
                    "threshold_mode {other:?}: expected \"rel\" or \"abs\""
                )))
            }
        };
        self.cfg = PlateauConfig {
            mode,
            factor: float("factor")?,
            patience: int("patience")?,
            threshold: float("threshold")?,
            threshold_mode,
            cooldown: int("cooldown")?,
            min_lrs: floats("min_lrs")?,
            eps: float("eps")?,
        };
        self.default_min_lr = get("default_min_lr").and_then(Value::as_f64);
        self.best = float("best")?;
        self.num_bad_epochs = int("num_bad_epochs")?;
        self.cooldown_counter = int("cooldown_counter")?;
        self.last_epoch = int("last_epoch")?;
        self.last_lr = floats("_last_lr")?;
        Ok(())
    }
}
