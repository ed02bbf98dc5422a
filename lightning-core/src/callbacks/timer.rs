//! Lightning's `Timer`: stops training once a time budget is spent (checked after every
//! batch or every epoch), counting the training time of earlier runs it resumed from; its
//! state in the checkpoint is Lightning's (`{"time_elapsed": {"train": s, "sanity_check": s,
//! "validate": s, "test": s, "predict": s}}`).

use super::{Callback, CallbackError, TrainerContext};
use crate::value::Value;
use std::time::{Duration, Instant};

/// When [`Timer`] checks the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimerInterval {
    /// After every training batch (Lightning's default).
    #[default]
    Step,
    /// At the end of every epoch.
    Epoch,
}

/// Lightning's `Timer(duration, interval)`.
///
/// ```
/// use lightning_core::callbacks::Timer;
/// let timer = Timer::parse("00:12:00:00")?; // stop after 12 hours of training
/// assert_eq!(timer.duration(), Some(std::time::Duration::from_secs(12 * 3600)));
/// assert!(Timer::parse("12h").is_err());
/// # Ok::<(), lightning_core::callbacks::CallbackError>(())
/// ```
pub struct Timer {
    duration: Option<Duration>,
    interval: TimerInterval,
    verbose: bool,
    /// Training time of the runs this one resumed (Lightning's `_offset`).
    offset: f64,
    train: (Option<Instant>, Option<Instant>),
    validate: (Option<Instant>, Option<Instant>),
}

const STAGES: [&str; 5] = ["train", "sanity_check", "validate", "test", "predict"];

impl Timer {
    /// A timer with `duration` (`None`: only measures).
    pub fn new(duration: Option<Duration>) -> Self {
        Timer {
            duration,
            interval: TimerInterval::Step,
            verbose: true,
            offset: 0.0,
            train: (None, None),
            validate: (None, None),
        }
    }

    /// `Timer(duration="DD:HH:MM:SS")`.
    pub fn parse(duration: &str) -> Result<Self, CallbackError> {
        let bad = || {
            CallbackError::Config(format!(
                "`Timer(duration={duration:?})` is not a valid duration. Expected a string in \
                 the format DD:HH:MM:SS."
            ))
        };
        let parts: Vec<&str> = duration.trim().split(':').collect();
        let [d, h, m, s] = parts.as_slice() else {
            return Err(bad());
        };
        let num = |x: &str, two: bool| -> Result<u64, CallbackError> {
            let ok =
                !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()) && (!two || x.len() == 2);
            ok.then(|| x.parse().ok()).flatten().ok_or_else(bad)
        };
        let secs =
            num(d, false)? * 86400 + num(h, true)? * 3600 + num(m, true)? * 60 + num(s, true)?;
        Ok(Timer::new(Some(Duration::from_secs(secs))))
    }

    /// Checks after every batch (`Step`, default) or every epoch.
    pub fn interval(mut self, interval: TimerInterval) -> Self {
        self.interval = interval;
        self
    }

    /// Whether to log when the limit is reached (default true).
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// The budget.
    pub fn duration(&self) -> Option<Duration> {
        self.duration
    }

    fn elapsed(span: (Option<Instant>, Option<Instant>)) -> f64 {
        match span {
            (None, _) => 0.0,
            (Some(a), None) => a.elapsed().as_secs_f64(),
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
        }
    }

    /// Seconds spent training, earlier runs it resumed from included (`time_elapsed("train")`).
    pub fn time_elapsed_train(&self) -> f64 {
        self.offset + Self::elapsed(self.train)
    }

    /// Seconds spent in the latest validation run (`time_elapsed("validate")`).
    pub fn time_elapsed_validate(&self) -> f64 {
        Self::elapsed(self.validate)
    }

    /// Seconds left of the budget, if there is one.
    pub fn time_remaining(&self) -> Option<f64> {
        self.duration
            .map(|d| d.as_secs_f64() - self.time_elapsed_train())
    }

    fn check(&self, t: &mut TrainerContext<'_>) {
        if self.time_remaining().is_some_and(|r| r <= 0.0) {
            if self.verbose && t.run.is_global_zero {
                let e = self.time_elapsed_train() as u64;
                tracing::info!(
                    "Time limit reached. Elapsed time is {}:{:02}:{:02}. Signaling Trainer to stop.",
                    e / 3600,
                    e / 60 % 60,
                    e % 60
                );
            }
            t.request_stop();
        }
    }
}

impl Callback for Timer {
    fn state_key(&self) -> String {
        "Timer".into()
    }

    /// A depleted budget (after a resume) stops before any batch.
    fn on_fit_start(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.check(t);
        Ok(())
    }

    fn on_train_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.train = (Some(Instant::now()), None);
        Ok(())
    }

    fn on_train_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.train.1 = Some(Instant::now());
        Ok(())
    }

    fn on_validation_epoch_start(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.validate = (Some(Instant::now()), None);
        Ok(())
    }

    fn on_validation_epoch_end(&mut self, _t: &mut TrainerContext<'_>) -> crate::Result<()> {
        self.validate.1 = Some(Instant::now());
        Ok(())
    }

    fn on_train_batch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if self.interval == TimerInterval::Step {
            self.check(t);
        }
        Ok(())
    }

    fn on_train_epoch_end(&mut self, t: &mut TrainerContext<'_>) -> crate::Result<()> {
        if self.interval == TimerInterval::Epoch {
            self.check(t);
        }
        Ok(())
    }

    fn state_dict(&self) -> Value {
        let mut elapsed = Value::dict();
        for stage in STAGES {
            let s = match stage {
                "train" => self.time_elapsed_train(),
                "validate" => self.time_elapsed_validate(),
                _ => 0.0,
            };
            elapsed.insert(stage, s);
        }
        let mut v = Value::dict();
        v.insert("time_elapsed", elapsed);
        v
    }

    fn load_state_dict(&mut self, state: &Value) -> crate::Result<()> {
        self.offset = state
            .get_path("time_elapsed.train")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
