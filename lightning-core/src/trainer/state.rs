//! The run's progress ([`RunState`]) and its two views in a checkpoint: Lightning's `loops`
//! counters and our [`ResumeState`]; plus reading a position back from a checkpoint, ours or
//! Python Lightning's.

use super::logger::MetricStore;
use crate::checkpoint::schema::{
    Checkpoint, EpochPhase, FitLoop, Loops, Progress, ResumeState, Tracker,
};
use crate::precision::GradScaler;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where in Lightning's per-batch sequence the loop stands; Lightning's counters lag there
/// (`batch_progress.completed` is counted after `on_train_batch_end`, `_batches_that_stepped`
/// after the batch's validation), so a checkpoint saved in a hook records the lag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum LoopPoint {
    /// Between batches, or outside the training loop.
    #[default]
    Outside,
    /// Inside `on_train_batch_end` of a batch (that stepped the optimizer or not).
    TrainBatchEnd { stepped: bool },
    /// After `on_train_batch_end`, in the batch's validation (mid-epoch or end of epoch).
    AfterBatch { stepped: bool },
}

/// Progress of the run: what a checkpoint saves and a resume restores, and the per-run flags
/// the loops and callbacks read.
#[derive(Default)]
pub(crate) struct RunState {
    pub epoch: i64,
    pub global_step: i64,
    /// Training batches of `epoch` already run.
    pub batches_consumed: usize,
    /// How far the end-of-epoch sequence of `epoch` got.
    pub phase: EpochPhase,
    /// Training batches run in total.
    pub total_batches: i64,
    /// `global_step` when `epoch` started.
    pub epoch_start_step: i64,
    /// LR scheduler steps in total and in this epoch.
    pub scheduler_steps: (i64, i64),
    /// Validation batches run in this epoch, and in the latest validation run.
    pub val_batches: (i64, i64),
    /// Whether the latest validation run reached its last batch.
    pub val_last_batch: bool,
    /// Training batches of the previous epoch (Lightning shows them until the next starts).
    pub prev_epoch_batches: usize,
    pub point: LoopPoint,
    pub seed: u64,
    pub metrics: MetricStore,
    pub train_time_before: Duration,
    pub train_started: Option<Instant>,
    pub sanity_checking: bool,
    pub is_last_batch: bool,
    pub resumed_from: Option<PathBuf>,
    /// Whether `fit` (not validate/test/predict) is running.
    pub fitting: bool,
    /// Validation batches per validation run in this `fit`.
    pub num_val_batches: usize,
    /// Whether a validation run completed in this `fit`.
    pub val_ran: bool,
    /// Validate after every this many training batches inside an epoch (`val_check_interval`).
    pub val_every: Option<usize>,
    pub should_stop: bool,
    /// The gradient scaler of `16-mixed`.
    pub scaler: Option<GradScaler>,
    pub preempted: bool,
    /// Processes training together (1 without `strategy="ddp"`).
    pub world_size: usize,
    /// Evaluation batches run (outside the sanity check) since this `fit`/`validate`/`test`
    /// began: the step their `on_step` metrics are logged at (Lightning's
    /// `_seen_batches_per_dataloader`).
    pub eval_batches_seen: i64,
    /// The datamodule's state, saved in checkpoints under its name.
    pub datamodule: Option<crate::data::NamedState>,
    /// Whether the module optimizes manually (`automatic_optimization` false).
    pub manual: bool,
    /// Manual optimizer steps in total and "current" (Lightning's
    /// `manual_optimization.optim_step_progress`, never reset by an epoch).
    pub manual_steps: (i64, i64),
}

impl RunState {
    pub fn train_time(&self) -> Duration {
        self.train_time_before + self.train_started.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Whether `epoch` has begun (a batch ran, or its end sequence did).
    fn in_epoch(&self) -> bool {
        self.batches_consumed > 0 || self.phase != EpochPhase::Training
    }

    /// Starts an epoch's counters (Lightning resets its `current` progress here).
    pub fn begin_epoch(&mut self) {
        if self.in_epoch() {
            return;
        }
        self.epoch_start_step = self.global_step;
        self.scheduler_steps.1 = 0;
        self.val_batches.0 = 0;
        self.is_last_batch = false;
    }

    /// Closes the epoch: the next one starts from its first batch.
    pub fn end_epoch(&mut self) {
        // (a Python Lightning file resumed at its epoch end has no batch count: usize::MAX)
        self.prev_epoch_batches = self.batches_consumed.min(i64::MAX as usize);
        self.epoch += 1;
        self.batches_consumed = 0;
        self.phase = EpochPhase::Training;
    }

    /// The step of a log row written now: Lightning's `_batches_that_stepped` before this
    /// batch's increment (one per optimizer step in automatic optimization, one per batch in
    /// manual optimization).
    pub fn log_step(&self) -> i64 {
        match self.manual {
            true => self.total_batches - 1,
            false => self.global_step - 1,
        }
    }

    /// Lightning's `loops` counters for this point of the run, as Lightning 2.6.6 would have
    /// them in a checkpoint saved here.
    pub fn loops(&self) -> Loops {
        let (in_hook, stepped) = match self.point {
            LoopPoint::Outside => (false, false),
            LoopPoint::TrainBatchEnd { stepped } => (true, stepped),
            LoopPoint::AfterBatch { stepped } => (false, stepped),
        };
        let lag = i64::from(in_hook);
        let total = self.total_batches;
        let current = if self.in_epoch() {
            self.batches_consumed
        } else {
            self.prev_epoch_batches
        } as i64;
        let (gs, es) = (self.global_step, self.global_step - self.epoch_start_step);
        let rc = |t: i64, c: i64| {
            Progress::new(
                Tracker::ready_completed(t, t),
                Tracker::ready_completed(c, c),
            )
        };
        let started = i64::from(self.in_epoch());
        let epoch = Tracker {
            ready: self.epoch + started,
            completed: self.epoch,
            started: Some(self.epoch + started),
            processed: Some(self.epoch + i64::from(self.phase.validated())),
        };
        let (vt, vc) = self.val_batches;
        let mut loops = Loops::zero();
        // manual optimization: the automatic loop's counters stay at zero, each batch steps
        let (gs, es, stepped_batches, manual) = match self.manual {
            true => (0, 0, total, self.manual_steps),
            false => (gs, es, gs, (0, 0)),
        };
        loops.fit = FitLoop {
            epoch_progress: Progress::new(epoch, epoch),
            batches_that_stepped: stepped_batches - i64::from(stepped),
            batch_progress: Progress::batches(
                Tracker::processed(total, total - lag),
                Tracker::processed(current, current - lag),
                self.is_last_batch,
            ),
            scheduler_progress: rc(self.scheduler_steps.0, self.scheduler_steps.1),
            optimizer_step: rc(gs, es),
            optimizer_zero_grad: Progress::new(Tracker::started(gs, gs), Tracker::started(es, es)),
            manual_optim_step: rc(manual.0, manual.1),
            val_batch_progress: Progress::batches(
                Tracker::processed(vt, vt),
                Tracker::processed(vc, vc),
                self.val_last_batch,
            ),
        };
        loops
    }

    /// Our resume entry for this point of the run.
    pub fn resume_state(&self) -> ResumeState {
        ResumeState {
            seed: self.seed,
            epoch: self.epoch,
            batches_consumed: self.batches_consumed,
            epoch_phase: self.phase,
            total_batches: self.total_batches,
            train_time_s: self.train_time().as_secs_f64(),
            epoch_start_step: self.epoch_start_step,
            scheduler_steps: self.scheduler_steps,
            val_batches: self.val_batches,
            val_last_batch: self.val_last_batch,
            world_size: self.world_size.max(1),
        }
    }

    /// Restores the position of `ckpt`: from our resume entry when there is one, else (a
    /// file written by Python Lightning) from its `loops`. Returns the seed it recorded.
    pub fn restore_position(&mut self, ckpt: &Checkpoint) -> Result<Option<u64>, String> {
        self.global_step = ckpt.global_step;
        // ours and Lightning's files both keep manual steps in `loops` only
        let manual = ckpt.loops.as_ref().map(|l| l.fit.manual_optim_step);
        self.manual_steps = manual.map_or((0, 0), |p| (p.total.completed, p.current.completed));
        if let Some(r) = &ckpt.resume {
            let mid_epoch = r.batches_consumed > 0 && r.epoch_phase == EpochPhase::Training;
            if mid_epoch && r.world_size.max(1) != self.world_size.max(1) {
                return Err(format!(
                    "this checkpoint was saved mid-epoch (epoch {}, after {} batches per process) \
                     by {} process(es); the position inside the epoch depends on how the data \
                     was sharded, so resume it with {} process(es), or resume from an epoch-end \
                     checkpoint (any number of processes)",
                    r.epoch, r.batches_consumed, r.world_size, r.world_size
                ));
            }
            self.epoch = r.epoch;
            self.batches_consumed = r.batches_consumed;
            self.phase = r.epoch_phase;
            self.total_batches = r.total_batches;
            self.train_time_before = Duration::from_secs_f64(r.train_time_s);
            self.epoch_start_step = r.epoch_start_step;
            self.scheduler_steps = r.scheduler_steps;
            self.val_batches = r.val_batches;
            self.val_last_batch = r.val_last_batch;
            self.is_last_batch = false;
            return Ok(Some(r.seed));
        }
        let fit = ckpt.loops.as_ref().map(|l| &l.fit);
        let epochs = fit.map(|f| f.epoch_progress.current);
        self.epoch = epochs.map_or(ckpt.epoch, |e| e.completed);
        let batches = fit.map_or(Progress::default(), |f| f.batch_progress);
        match epochs {
            // The epoch's training ran (saved at its end): continue with the next epoch.
            Some(e) if e.processed.unwrap_or(0) > e.completed => {
                self.batches_consumed = usize::MAX;
                self.phase = EpochPhase::Done;
            }
            _ => {
                self.batches_consumed = usize::try_from(batches.current.completed).unwrap_or(0);
                self.phase = EpochPhase::Training;
            }
        }
        self.total_batches = batches.total.completed;
        if let Some(f) = fit {
            self.epoch_start_step = ckpt.global_step - f.optimizer_step.current.completed;
            self.scheduler_steps = (
                f.scheduler_progress.total.completed,
                f.scheduler_progress.current.completed,
            );
            self.val_batches = (
                f.val_batch_progress.total.completed,
                f.val_batch_progress.current.completed,
            );
            self.val_last_batch = f.val_batch_progress.is_last_batch.unwrap_or(false);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mid_epoch_position_needs_the_same_world_size() {
        let mut ckpt = Checkpoint {
            global_step: 7,
            resume: Some(ResumeState {
                seed: 3,
                epoch: 1,
                batches_consumed: 5,
                world_size: 2,
                ..ResumeState::default()
            }),
            ..Checkpoint::default()
        };
        let mut one = RunState {
            world_size: 1,
            ..RunState::default()
        };
        let e = one.restore_position(&ckpt).unwrap_err();
        assert!(
            e.contains("by 2 process(es)") && e.contains("epoch-end"),
            "{e}"
        );
        let mut two = RunState {
            world_size: 2,
            ..RunState::default()
        };
        assert_eq!(two.restore_position(&ckpt), Ok(Some(3)));
        assert_eq!((two.epoch, two.batches_consumed), (1, 5));
        // at an epoch's end any world size resumes (the shards are recomputed)
        if let Some(r) = &mut ckpt.resume {
            r.epoch_phase = EpochPhase::Done;
        }
        assert_eq!(one.restore_position(&ckpt), Ok(Some(3)));
    }
}
