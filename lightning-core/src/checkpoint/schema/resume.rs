//! Our resume entry ([`super::RESUME_KEY`]): what Lightning's dict lacks for a bitwise-exact
//! resume.

use super::{Fields, SchemaError, RESUME_KEY};
use crate::value::Value;

/// How far the end of an epoch got, in Lightning's order: after the last batch's training
/// step the epoch-interval LR schedulers step (before `on_train_batch_end`), then the epoch's
/// validation runs, then `on_train_epoch_end`. Saved so a resume neither repeats nor skips one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum EpochPhase {
    /// Training batches remain (or the last one ran before its schedulers stepped).
    #[default]
    Training,
    /// The epoch-interval schedulers stepped after the last batch.
    SchedulersStepped,
    /// The end-of-epoch validation ran (or was not due).
    Validated,
    /// `on_train_epoch_end` ran; the metric-driven schedulers (`ReduceLROnPlateau`) did not
    /// step yet (Lightning steps them after the hooks).
    EndHooksRan,
    /// `on_train_epoch_end` ran: the next thing is the next epoch.
    Done,
    /// Written before the phases followed Lightning's order: validation ran, the epoch's
    /// schedulers did not step yet.
    LegacyValidated,
}

impl EpochPhase {
    /// Whether the epoch-interval schedulers already stepped for this epoch.
    pub fn schedulers_stepped(self) -> bool {
        matches!(
            self,
            EpochPhase::SchedulersStepped
                | EpochPhase::Validated
                | EpochPhase::EndHooksRan
                | EpochPhase::Done
        )
    }

    /// Whether the end-of-epoch validation already ran.
    pub fn validated(self) -> bool {
        matches!(
            self,
            EpochPhase::Validated
                | EpochPhase::EndHooksRan
                | EpochPhase::Done
                | EpochPhase::LegacyValidated
        )
    }

    /// The name written to the file.
    pub fn as_str(self) -> &'static str {
        match self {
            EpochPhase::Training => "training",
            EpochPhase::SchedulersStepped => "schedulers_stepped",
            EpochPhase::Validated => "validated",
            EpochPhase::EndHooksRan => "end_hooks_ran",
            EpochPhase::Done => "done",
            EpochPhase::LegacyValidated => "legacy_validated",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            EpochPhase::Training,
            EpochPhase::SchedulersStepped,
            EpochPhase::Validated,
            EpochPhase::EndHooksRan,
            EpochPhase::Done,
            EpochPhase::LegacyValidated,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// The integer `epoch_end` of files written before `epoch_phase` (1: validated, 2:
    /// schedulers stepped, 3: epoch-end hooks ran).
    fn from_legacy(n: i64) -> Option<Self> {
        Some(match n {
            0 => EpochPhase::Training,
            1 => EpochPhase::LegacyValidated,
            2 => EpochPhase::Validated,
            3 => EpochPhase::Done,
            _ => return None,
        })
    }
}

/// Our [`RESUME_KEY`] entry: what Lightning's dict lacks for a bitwise-exact resume (the seed,
/// the data position inside the epoch and the end-of-epoch phase), and the counters that let
/// a resumed run write the same `loops` as one that never stopped.
///
/// RNG is reseeded from `(seed, epoch, batch)` before every training step, so the seed is all
/// the RNG state a resume needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResumeState {
    /// The run's seed.
    pub seed: u64,
    /// The epoch in progress.
    pub epoch: i64,
    /// Training batches of `epoch` already run.
    pub batches_consumed: usize,
    /// How far the end of `epoch` got.
    pub epoch_phase: EpochPhase,
    /// Training batches run in total.
    pub total_batches: i64,
    /// Wall time spent training (for `train_time_interval`).
    pub train_time_s: f64,
    /// `global_step` when `epoch` started.
    pub epoch_start_step: i64,
    /// LR scheduler steps in total, and in `epoch`.
    pub scheduler_steps: (i64, i64),
    /// Validation batches run during `epoch`, and in the latest validation run.
    pub val_batches: (i64, i64),
    /// Whether the latest validation run reached its last batch.
    pub val_last_batch: bool,
    /// Processes that trained (`strategy="ddp"`): `batches_consumed` counts each one's batches
    /// of its shard, so a mid-epoch position is only meaningful for the same world size.
    pub world_size: usize,
    /// `trainer.callback_metrics` when saved: what a metric-driven scheduler stepping after
    /// the save (and callbacks) read, so a resumed run sees what the straight one saw.
    pub callback_metrics: indexmap::IndexMap<String, f64>,
}

impl ResumeState {
    /// The entry as written under [`RESUME_KEY`].
    pub fn to_value(&self) -> Value {
        let mut v = Value::dict();
        // a u64 seed is stored as the i64 with the same bits
        v.insert("seed", i64::from_ne_bytes(self.seed.to_ne_bytes()));
        v.insert("epoch", self.epoch);
        v.insert("batches_consumed", self.batches_consumed as i64);
        v.insert("epoch_phase", self.epoch_phase.as_str());
        v.insert("total_batches", self.total_batches);
        v.insert("train_time_s", self.train_time_s);
        v.insert("epoch_start_step", self.epoch_start_step);
        v.insert(
            "scheduler_steps",
            Value::List(vec![
                self.scheduler_steps.0.into(),
                self.scheduler_steps.1.into(),
            ]),
        );
        v.insert(
            "val_batches",
            Value::List(vec![self.val_batches.0.into(), self.val_batches.1.into()]),
        );
        v.insert("val_last_batch", self.val_last_batch);
        v.insert("world_size", self.world_size as i64);
        let mut m = crate::value::Dict::new();
        for (k, x) in &self.callback_metrics {
            m.insert(crate::value::Key::Str(k.clone()), Value::Float(*x));
        }
        v.insert("callback_metrics", Value::Dict(m));
        v
    }

    /// Reads the entry; files of earlier versions (an integer `epoch_end`, no loop counters)
    /// read with the counters at zero.
    pub fn from_value(v: &Value) -> Result<Self, SchemaError> {
        let f = Fields::of(v, RESUME_KEY)?;
        let need = |k: &str| {
            f.int(k)?
                .ok_or_else(|| SchemaError::new(f.path(k), "missing (expected an int)"))
        };
        let epoch_phase = match (f.string("epoch_phase")?, f.int("epoch_end")?) {
            (Some(s), _) => EpochPhase::parse(&s).ok_or_else(|| {
                SchemaError::new(f.path("epoch_phase"), format!("unknown phase {s:?}"))
            })?,
            (None, Some(n)) => EpochPhase::from_legacy(n).ok_or_else(|| {
                SchemaError::new(f.path("epoch_end"), format!("expected 0 to 3, found {n}"))
            })?,
            (None, None) => EpochPhase::Training,
        };
        let pair = |k: &str| -> Result<(i64, i64), SchemaError> {
            match f.list(k)?.as_deref() {
                None => Ok((0, 0)),
                Some([a, b]) => match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(SchemaError::new(f.path(k), "expected two ints")),
                },
                Some(_) => Err(SchemaError::new(f.path(k), "expected two ints")),
            }
        };
        let batches = need("batches_consumed")?;
        Ok(ResumeState {
            seed: u64::from_ne_bytes(need("seed")?.to_ne_bytes()),
            epoch: need("epoch")?,
            batches_consumed: usize::try_from(batches).map_err(|_| {
                SchemaError::new(f.path("batches_consumed"), format!("negative: {batches}"))
            })?,
            epoch_phase,
            total_batches: need("total_batches")?,
            train_time_s: f.float("train_time_s")?.unwrap_or(0.0).max(0.0),
            epoch_start_step: f.int_or_zero("epoch_start_step")?,
            scheduler_steps: pair("scheduler_steps")?,
            val_batches: pair("val_batches")?,
            val_last_batch: f.boolean("val_last_batch")?.unwrap_or(false),
            // files written before DDP: one process
            world_size: usize::try_from(f.int("world_size")?.unwrap_or(1)).map_err(|_| {
                SchemaError::new(f.path("world_size"), "expected a non-negative int")
            })?,
            callback_metrics: match v.get("callback_metrics") {
                None => Default::default(),
                Some(m) => m
                    .as_dict()
                    .and_then(|d| {
                        d.iter()
                            .map(|(k, x)| Some((k.to_string(), x.as_f64()?)))
                            .collect::<Option<_>>()
                    })
                    .ok_or_else(|| {
                        SchemaError::new(f.path("callback_metrics"), "expected a dict of numbers")
                    })?,
            },
        })
    }
}
