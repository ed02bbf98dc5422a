//! `EarlyStopping`: stop training when a monitored metric stops improving (Lightning 2.6's
//! callback, same checks, messages, state key and saved state).

use super::model_checkpoint::Mode;
use super::{Callback, CallbackError, TrainerContext};
use crate::pyfmt;
use crate::value::Value;
use std::any::Any;
use tch::Tensor;

/// Why training was stopped (Lightning's `EarlyStoppingReason`, same integer values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoppingReason {
    /// Not stopped.
    #[default]
    NotStopped = 0,
    /// `stopping_threshold` reached.
    StoppingThreshold = 1,
    /// `divergence_threshold` passed.
    DivergenceThreshold = 2,
    /// `patience` checks without improvement.
    PatienceExhausted = 3,
    /// The metric became NaN or infinite (`check_finite`).
    NonFiniteMetric = 4,
}

impl StoppingReason {
    fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 => StoppingReason::NotStopped,
            1 => StoppingReason::StoppingThreshold,
            2 => StoppingReason::DivergenceThreshold,
            3 => StoppingReason::PatienceExhausted,
            4 => StoppingReason::NonFiniteMetric,
            _ => return None,
        })
    }
}

/// Builder for [`EarlyStopping`], Lightning's defaults (`patience=3`, `mode="min"`,
/// `strict=true`, `check_finite=true`).
#[derive(Clone, Debug)]
pub struct EarlyStoppingBuilder {
    monitor: String,
    min_delta: f64,
    patience: i64,
    verbose: bool,
    mode: Mode,
    strict: bool,
    check_finite: bool,
    stopping_threshold: Option<f64>,
    divergence_threshold: Option<f64>,
    check_on_train_epoch_end: Option<bool>,
}

impl EarlyStoppingBuilder {
    /// Minimum change that counts as an improvement.
    pub fn min_delta(mut self, d: f64) -> Self {
        self.min_delta = d;
        self
    }
    /// Checks without improvement before stopping.
    pub fn patience(mut self, p: i64) -> Self {
        self.patience = p;
        self
    }
    /// Log each decision (via `tracing`).
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }
    /// Whether lower or higher is better.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }
    /// Fail when the metric is missing (else skip the check).
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }
    /// Stop when the metric becomes NaN or infinite.
    pub fn check_finite(mut self, on: bool) -> Self {
        self.check_finite = on;
        self
    }
    /// Stop as soon as the metric is better than this.
    pub fn stopping_threshold(mut self, v: f64) -> Self {
        self.stopping_threshold = Some(v);
        self
    }
    /// Stop as soon as the metric is worse than this.
    pub fn divergence_threshold(mut self, v: f64) -> Self {
        self.divergence_threshold = Some(v);
        self
    }
    /// Check at train-epoch end (`Some(true)`), at validation end (`Some(false)`), or decide
    /// from the validation schedule (`None`).
    pub fn check_on_train_epoch_end(mut self, v: Option<bool>) -> Self {
        self.check_on_train_epoch_end = v;
        self
    }
    /// Builds the callback.
    pub fn build(self) -> Result<EarlyStopping, CallbackError> {
        if self.patience < 0 {
            return Err(CallbackError::Config(format!(
                "EarlyStopping(patience={}) must be >= 0",
                self.patience
            )));
        }
        let sign = if self.mode == Mode::Max { 1.0 } else { -1.0 };
        Ok(EarlyStopping {
            min_delta: self.min_delta * sign,
            best_score: self.mode.worst(),
            cfg: self,
            wait_count: 0,
            stopped_epoch: 0,
            stopping_reason: StoppingReason::NotStopped,
            stopping_reason_message: None,
        })
    }
}

/// Stops training when the monitored metric has not improved for `patience` checks.
///
/// ```
/// use lightning_core::callbacks::{EarlyStopping, Mode};
/// let es = EarlyStopping::builder("val_loss").patience(5).mode(Mode::Min).build()?;
/// assert_eq!(
///     lightning_core::callbacks::Callback::state_key(&es),
///     "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
/// );
/// # Ok::<(), lightning_core::callbacks::CallbackError>(())
/// ```
#[derive(Debug)]
pub struct EarlyStopping {
    cfg: EarlyStoppingBuilder,
    /// Signed as Lightning keeps it: negative in min mode.
    min_delta: f64,
    best_score: f64,
    wait_count: i64,
    stopped_epoch: i64,
    stopping_reason: StoppingReason,
    stopping_reason_message: Option<String>,
}

impl EarlyStopping {
    /// A builder monitoring `monitor`.
    pub fn builder(monitor: impl Into<String>) -> EarlyStoppingBuilder {
        EarlyStoppingBuilder {
            monitor: monitor.into(),
            min_delta: 0.0,
            patience: 3,
            verbose: false,
            mode: Mode::Min,
            strict: true,
            check_finite: true,
            stopping_threshold: None,
            divergence_threshold: None,
            check_on_train_epoch_end: None,
        }
    }
    /// Checks without improvement so far.
    pub fn wait_count(&self) -> i64 {
        self.wait_count
    }
    /// The epoch at which it stopped training (0 if it did not).
    pub fn stopped_epoch(&self) -> i64 {
        self.stopped_epoch
    }
    /// The best value seen.
    pub fn best_score(&self) -> f64 {
        self.best_score
    }
    /// Why it stopped.
    pub fn stopping_reason(&self) -> StoppingReason {
        self.stopping_reason
    }
    /// The message explaining the stop, if it stopped.
    pub fn stopping_reason_message(&self) -> Option<&str> {
        self.stopping_reason_message.as_deref()
    }

    fn on_train_epoch_end_checks(&self, t: &TrainerContext<'_>) -> bool {
        self.cfg.check_on_train_epoch_end.unwrap_or_else(|| {
            !t.run.val_check_within_epoch && t.run.check_val_every_n_epoch == Some(1)
        })
    }

    fn skip(t: &TrainerContext<'_>) -> bool {
        !t.run.is_fitting || t.run.sanity_checking || t.run.fast_dev_run
    }

    fn run_check(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        let Some(&current) = t.run.callback_metrics.get(&self.cfg.monitor) else {
            let err = CallbackError::EarlyStoppingMetricNotFound {
                monitor: self.cfg.monitor.clone(),
                keys: t.run.callback_metrics.keys().cloned().collect(),
            };
            if self.cfg.strict {
                return Err(err.into());
            }
            if self.cfg.verbose {
                tracing::warn!("{err}");
            }
            return Ok(());
        };
        let (stop, reason) = self.evaluate(current);
        if stop {
            t.request_stop();
            self.stopped_epoch = t.run.current_epoch;
            self.stopping_reason_message = reason.clone();
        }
        if let (Some(r), true) = (reason, self.cfg.verbose) {
            tracing::info!("{r}");
        }
        Ok(())
    }

    /// Lightning's `_evaluate_stopping_criteria`.
    fn evaluate(&mut self, current: f64) -> (bool, Option<String>) {
        let mode = self.cfg.mode;
        let monitor = &self.cfg.monitor;
        let op = if mode == Mode::Min { "<" } else { ">" };
        let cur = pyfmt::repr_float(current);
        if self.cfg.check_finite && !current.is_finite() {
            self.stopping_reason = StoppingReason::NonFiniteMetric;
            return (
                true,
                Some(format!(
                    "Monitored metric {monitor} = {cur} is not finite. Previous best value was \
                     {:.3}. Signaling Trainer to stop.",
                    self.best_score
                )),
            );
        }
        if let Some(th) = self
            .cfg
            .stopping_threshold
            .filter(|th| mode.better(current, *th))
        {
            self.stopping_reason = StoppingReason::StoppingThreshold;
            return (
                true,
                Some(format!(
                    "Stopping threshold reached: {monitor} = {cur} {op} {}. Signaling Trainer \
                     to stop.",
                    pyfmt::repr_float(th)
                )),
            );
        }
        if let Some(th) = self
            .cfg
            .divergence_threshold
            .filter(|th| mode.better(-current, -th))
        {
            self.stopping_reason = StoppingReason::DivergenceThreshold;
            return (
                true,
                Some(format!(
                    "Divergence threshold reached: {monitor} = {cur} {op} {}. Signaling Trainer \
                     to stop.",
                    pyfmt::repr_float(th)
                )),
            );
        }
        if mode.better(current - self.min_delta, self.best_score) {
            let msg = if self.best_score.is_finite() {
                format!(
                    "Metric {monitor} improved by {:.3} >= min_delta = {}. New best score: \
                     {current:.3}",
                    (self.best_score - current).abs(),
                    pyfmt::repr_float(self.min_delta.abs())
                )
            } else {
                format!("Metric {monitor} improved. New best score: {current:.3}")
            };
            self.best_score = current;
            self.wait_count = 0;
            return (false, Some(msg));
        }
        self.wait_count += 1;
        if self.wait_count >= self.cfg.patience {
            self.stopping_reason = StoppingReason::PatienceExhausted;
            return (
                true,
                Some(format!(
                    "Monitored metric {monitor} did not improve in the last {} records. Best \
                     score: {:.3}. Signaling Trainer to stop.",
                    self.wait_count, self.best_score
                )),
            );
        }
        (false, None)
    }
}

impl Callback for EarlyStopping {
    /// `EarlyStopping{'monitor': .., 'mode': ..}` as Lightning.
    fn state_key(&self) -> String {
        format!(
            "EarlyStopping{{'monitor': {}, 'mode': {}}}",
            pyfmt::repr_str(&self.cfg.monitor),
            pyfmt::repr_str(self.cfg.mode.as_str())
        )
    }

    fn on_train_epoch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if !self.on_train_epoch_end_checks(t) || Self::skip(t) {
            return Ok(());
        }
        self.run_check(t)
    }

    fn on_validation_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if self.on_train_epoch_end_checks(t) || Self::skip(t) {
            return Ok(());
        }
        self.run_check(t)
    }

    /// Lightning's keys: `wait_count, stopped_epoch, best_score` (a 0-dim tensor), `patience`,
    /// `stopping_reason` (int), `stopping_reason_message`.
    fn state_dict(&self) -> Value {
        let mut d = Value::dict();
        d.insert("wait_count", self.wait_count);
        d.insert("stopped_epoch", self.stopped_epoch);
        d.insert(
            "best_score",
            Tensor::from_slice(&[self.best_score]).reshape([]),
        );
        d.insert("patience", self.cfg.patience);
        d.insert("stopping_reason", self.stopping_reason as i64);
        d.insert(
            "stopping_reason_message",
            self.stopping_reason_message.clone(),
        );
        d
    }

    fn load_state_dict(&mut self, state: &Value) -> crate::Result<()> {
        let key = self.state_key();
        let err = |k: &str, msg: &str| CallbackError::State {
            state_key: key.clone(),
            key: k.to_owned(),
            msg: msg.to_owned(),
        };
        let int = |k: &str| {
            state
                .get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| err(k, "missing or not an int"))
        };
        let wait_count = int("wait_count")?;
        let stopped_epoch = int("stopped_epoch")?;
        let patience = int("patience")?;
        let best_score = match state.get("best_score") {
            Some(Value::Tensor(t)) if t.numel() == 1 => t
                .reshape([-1])
                .f_double_value(&[0])
                .map_err(|e| err("best_score", &e.to_string()))?,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("best_score", "expected a one-element tensor or a number"))?,
            None => return Err(err("best_score", "missing").into()),
        };
        let reason = match state.get("stopping_reason") {
            None => StoppingReason::NotStopped,
            Some(v) => v
                .as_i64()
                .and_then(StoppingReason::from_i64)
                .ok_or_else(|| err("stopping_reason", "expected an int 0..=4"))?,
        };
        self.wait_count = wait_count;
        self.stopped_epoch = stopped_epoch;
        self.cfg.patience = patience;
        self.best_score = best_score;
        self.stopping_reason = reason;
        self.stopping_reason_message = state
            .get("stopping_reason_message")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(())
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
    use crate::callbacks::model_checkpoint::tests::FakeTrainer;

    #[test]
    fn stops_after_patience_without_improvement() {
        let mut es = EarlyStopping::builder("val_loss")
            .patience(2)
            .build()
            .unwrap();
        let mut t = FakeTrainer::new(std::path::Path::new("/nonexistent"));
        for (epoch, loss) in [(0, 1.0), (1, 0.5), (2, 0.6), (3, 0.7)] {
            t.epoch = epoch;
            t.metrics.insert("val_loss".into(), loss);
            es.on_train_epoch_end(&mut t.ctx()).unwrap();
        }
        assert!(t.io.stop_requested);
        assert_eq!(es.stopped_epoch(), 3);
        assert_eq!(es.best_score(), 0.5);
        assert_eq!(es.stopping_reason(), StoppingReason::PatienceExhausted);
        assert_eq!(
            es.stopping_reason_message(),
            Some(
                "Monitored metric val_loss did not improve in the last 2 records. Best score: \
                 0.500. Signaling Trainer to stop."
            )
        );
    }

    #[test]
    fn min_delta_max_mode_and_state_round_trip() {
        let mut es = EarlyStopping::builder("acc")
            .mode(Mode::Max)
            .min_delta(0.1)
            .patience(5)
            .build()
            .unwrap();
        let mut t = FakeTrainer::new(std::path::Path::new("/nonexistent"));
        for acc in [0.5, 0.55, 0.7] {
            t.metrics.insert("acc".into(), acc);
            es.on_train_epoch_end(&mut t.ctx()).unwrap();
        }
        // 0.55 is not > 0.5 + 0.1: one wait; 0.7 is: reset
        assert_eq!(es.wait_count(), 0);
        assert_eq!(es.best_score(), 0.7);
        t.metrics.insert("acc".into(), 0.75);
        es.on_train_epoch_end(&mut t.ctx()).unwrap();
        assert_eq!(es.wait_count(), 1);
        let mut other = EarlyStopping::builder("acc")
            .mode(Mode::Max)
            .build()
            .unwrap();
        other.load_state_dict(&es.state_dict()).unwrap();
        assert_eq!(other.wait_count(), 1);
        assert_eq!(other.best_score(), 0.7);
        assert_eq!(other.cfg.patience, 5);
        assert!(!t.io.stop_requested);
    }

    #[test]
    fn non_finite_and_missing_metric() {
        let mut es = EarlyStopping::builder("val_loss").build().unwrap();
        let mut t = FakeTrainer::new(std::path::Path::new("/nonexistent"));
        t.metrics.insert("train_loss".into(), 1.0);
        let e = es.on_train_epoch_end(&mut t.ctx()).unwrap_err().to_string();
        assert_eq!(
            e,
            "Early stopping conditioned on metric `val_loss` which is not available. Pass in or \
             modify your `EarlyStopping` callback to use any of the following: `train_loss`"
        );
        t.metrics.insert("val_loss".into(), f64::NAN);
        es.on_train_epoch_end(&mut t.ctx()).unwrap();
        assert!(t.io.stop_requested);
        assert_eq!(es.stopping_reason(), StoppingReason::NonFiniteMetric);
    }
}
