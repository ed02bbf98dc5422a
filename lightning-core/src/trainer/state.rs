//! The run's progress ([`RunState`]) and its two views in a checkpoint: Lightning's `loops`
//! counters and our [`ResumeState`]; plus reading a position back from a checkpoint, ours or
//! Python Lightning's.

use super::logger::MetricStore;
use crate::checkpoint::schema::{
    Checkpoint, EpochPhase, FitLoop, Loops, Progress, ResumeState, Tracker,
};
use crate::data::{DataLoader, LoaderState};
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

/// A run's state, in groups with one job each: what the run is ([`RunSetup`]), where its
/// loops stand ([`LoopProgress`]), its training time ([`TrainClock`]), what decides the loops'
/// next move ([`RunFlags`]) and the logged metrics. The optimizers and the grad scaler are the
/// trainer's (`Trainer::optim`), not the run's.
#[derive(Default)]
pub(crate) struct RunState {
    pub(super) setup: RunSetup,
    pub(super) progress: LoopProgress,
    pub(super) clock: TrainClock,
    pub(super) flags: RunFlags,
    pub(super) metrics: MetricStore,
}

/// What a run is, fixed when `fit`/`validate`/`test` starts (the resume sets the seed and
/// where it resumed from).
#[derive(Default)]
pub(crate) struct RunSetup {
    /// The seed of the run's RNG streams (the checkpoint's, on a resume).
    pub(super) seed: u64,
    /// Whether `fit` (not validate/test/predict) is running.
    pub(super) fitting: bool,
    /// Processes training together (1 without `strategy="ddp"`).
    pub(super) world_size: usize,
    /// Whether the module optimizes manually (`automatic_optimization` false).
    pub(super) manual: bool,
    /// Validation batches per validation run in this `fit`.
    pub(super) num_val_batches: usize,
    /// Validate after every this many training batches inside an epoch (`val_check_interval`).
    pub(super) val_every: Option<usize>,
    /// The datamodule's state, saved in checkpoints under its name.
    pub(super) datamodule: Option<crate::data::NamedState>,
    /// The datamodule's hyperparameters (saved as `datamodule_hyper_parameters`).
    pub(super) datamodule_hparams: Option<crate::value::Dict>,
    /// The checkpoint this `fit` resumed from.
    pub(super) resumed_from: Option<PathBuf>,
    /// The training loader (this rank's, under DDP), whose state mid-epoch saves carry.
    pub(super) train: Option<DataLoader>,
    /// Epochs callbacks added to the epoch limit (`TrainerHandle::extend_max_epochs`).
    pub(super) extra_epochs: i64,
}

/// Where the loops stand: Lightning's progress counters, what a checkpoint saves and a
/// resume restores. Changed through its methods, each counter in one place.
#[derive(Default)]
pub(crate) struct LoopProgress {
    pub(super) epoch: i64,
    /// Optimizer steps taken (in manual optimization, the steps `training_step` took).
    pub(super) global_step: i64,
    /// Training batches of `epoch` already run.
    pub(super) batches_consumed: usize,
    /// How the rest of `epoch` is dealt after an elastic resume (another world size).
    pub(super) elastic: Option<crate::data::Elastic>,
    /// How far the end-of-epoch sequence of `epoch` got.
    pub(super) phase: EpochPhase,
    /// Training batches run in total.
    pub(super) total_batches: i64,
    /// `global_step` when `epoch` started.
    pub(super) epoch_start_step: i64,
    /// LR scheduler steps in total and in this epoch.
    pub(super) scheduler_steps: (i64, i64),
    /// Validation batches run in this epoch, and in the latest validation run.
    pub(super) val_batches: (i64, i64),
    /// Whether the latest validation run reached its last batch.
    pub(super) val_last_batch: bool,
    /// Training batches of the previous epoch (Lightning shows them until the next starts).
    pub(super) prev_epoch_batches: usize,
    /// Whether the latest training batch was the epoch's last.
    pub(super) is_last_batch: bool,
    /// Where in the per-batch sequence the loop stands (for the counters' lag).
    pub(super) point: LoopPoint,
    /// Manual optimizer steps in total and "current" (Lightning's
    /// `manual_optimization.optim_step_progress`, never reset by an epoch).
    pub(super) manual_steps: (i64, i64),
    /// Evaluation batches run (outside the sanity check) since this `fit`/`validate`/`test`
    /// began: the step their `on_step` metrics are logged at (Lightning's
    /// `_seen_batches_per_dataloader`; not saved).
    pub(super) eval_batches_seen: i64,
}

/// What decides the loops' next move, and what callbacks read of it.
#[derive(Default)]
pub(crate) struct RunFlags {
    /// The sanity check is running.
    pub(super) sanity_checking: bool,
    /// A validation run completed in this `fit`.
    pub(super) val_ran: bool,
    /// A callback, `max_steps` or a preemption stopped the run.
    pub(super) should_stop: bool,
    /// The run stopped on SIGTERM/SIGUSR1.
    pub(super) preempted: bool,
    /// This epoch's training steps run forward only (a callback asked, e.g. stochastic
    /// weight averaging's batch-norm epoch); cleared when the epoch ends.
    pub(super) skip_optimization: bool,
}

/// Training time across resumes: the time saved in the checkpoint plus this `fit`'s.
#[derive(Default)]
pub(crate) struct TrainClock {
    before: Duration,
    started: Option<Instant>,
    /// Time training waited for batches in this `fit` (loading them, or for the workers).
    pub(super) data_wait: Duration,
}

impl TrainClock {
    /// Training time so far.
    pub fn elapsed(&self) -> Duration {
        self.before + self.started.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Training starts (after the sanity check).
    pub fn start(&mut self) {
        self.started = Some(Instant::now());
    }

    /// Training stops: the time so far is kept for the next `fit`.
    pub fn stop(&mut self) {
        self.before = self.elapsed();
        self.started = None;
    }
}

impl LoopProgress {
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

    /// Batch `idx` of the epoch's `n` ran its training step (forward and backward).
    pub fn batch_done(&mut self, idx: usize, n: usize) {
        self.batches_consumed = idx + 1;
        self.total_batches += 1;
        self.is_last_batch = idx + 1 == n;
    }

    /// The optimizer stepped (automatic optimization).
    pub fn optimizer_stepped(&mut self) {
        self.global_step += 1;
    }

    /// A manual-optimization `training_step` took `steps` optimizer steps.
    pub fn manual_stepped(&mut self, steps: i64) {
        self.global_step += steps;
        self.manual_steps.0 += steps;
        self.manual_steps.1 += steps;
    }

    /// An LR scheduler stepped.
    pub fn scheduler_stepped(&mut self) {
        self.scheduler_steps.0 += 1;
        self.scheduler_steps.1 += 1;
    }

    /// A validation run inside `fit` starts.
    pub fn begin_validation(&mut self) {
        self.val_batches.1 = 0;
        self.val_last_batch = false;
    }

    /// A validation batch inside `fit` ran (`last`: the run's last).
    pub fn val_batch_done(&mut self, last: bool) {
        self.val_batches.0 += 1;
        self.val_batches.1 += 1;
        self.val_last_batch = last;
    }

    /// Closes the epoch: the next one starts from its first batch.
    pub fn end_epoch(&mut self) {
        // (a Python Lightning file resumed at its epoch end has no batch count: usize::MAX)
        self.prev_epoch_batches = self.batches_consumed.min(i64::MAX as usize);
        self.epoch += 1;
        self.batches_consumed = 0;
        self.elastic = None;
        self.phase = EpochPhase::Training;
    }
}

impl RunState {
    /// Training time so far, across resumes.
    pub fn train_time(&self) -> Duration {
        self.clock.elapsed()
    }

    /// The step of a log row written now: Lightning's `_batches_that_stepped` before this
    /// batch's increment (one per optimizer step in automatic optimization, one per batch in
    /// manual optimization).
    pub fn log_step(&self) -> i64 {
        match self.setup.manual {
            true => self.progress.total_batches - 1,
            false => self.progress.global_step - 1,
        }
    }

    /// Lightning's `loops` counters for this point of the run, as Lightning 2.6.6 would have
    /// them in a checkpoint saved here.
    pub fn loops(&self) -> Loops {
        let p = &self.progress;
        let (in_hook, stepped) = match p.point {
            LoopPoint::Outside => (false, false),
            LoopPoint::TrainBatchEnd { stepped } => (true, stepped),
            LoopPoint::AfterBatch { stepped } => (false, stepped),
        };
        let lag = i64::from(in_hook);
        let total = p.total_batches;
        let current = if p.in_epoch() {
            p.batches_consumed
        } else {
            p.prev_epoch_batches
        } as i64;
        let (gs, es) = (p.global_step, p.global_step - p.epoch_start_step);
        let rc = |t: i64, c: i64| {
            Progress::new(
                Tracker::ready_completed(t, t),
                Tracker::ready_completed(c, c),
            )
        };
        let started = i64::from(p.in_epoch());
        let epoch = Tracker {
            ready: p.epoch + started,
            completed: p.epoch,
            started: Some(p.epoch + started),
            processed: Some(p.epoch + i64::from(p.phase.validated())),
        };
        let (vt, vc) = p.val_batches;
        let mut loops = Loops::zero();
        // manual optimization: the automatic loop's counters stay at zero, each batch steps
        let (gs, es, stepped_batches, manual) = match self.setup.manual {
            true => (0, 0, total, p.manual_steps),
            false => (gs, es, gs, (0, 0)),
        };
        // a mid-epoch save carries the training loader's state, where Lightning keeps a
        // stateful loader's (an epoch-end one needs none, so Lightning resumes it with any
        // loader)
        let mid_epoch = p.in_epoch() && p.batches_consumed > 0 && p.phase == EpochPhase::Training;
        let combined_loader = match (&self.setup.train, mid_epoch) {
            (Some(l), true) => Some(vec![l.state_dict(&self.loader_state())]),
            _ => None,
        };
        loops.fit = FitLoop {
            combined_loader,
            epoch_progress: Progress::new(epoch, epoch),
            batches_that_stepped: stepped_batches - i64::from(stepped),
            batch_progress: Progress::batches(
                Tracker::processed(total, total - lag),
                Tracker::processed(current, current - lag),
                p.is_last_batch,
            ),
            scheduler_progress: rc(p.scheduler_steps.0, p.scheduler_steps.1),
            optimizer_step: rc(gs, es),
            optimizer_zero_grad: Progress::new(Tracker::started(gs, gs), Tracker::started(es, es)),
            manual_optim_step: rc(manual.0, manual.1),
            val_batch_progress: Progress::batches(
                Tracker::processed(vt, vt),
                Tracker::processed(vc, vc),
                p.val_last_batch,
            ),
        };
        loops
    }

    /// Where the run is in its training data.
    pub fn loader_state(&self) -> LoaderState {
        LoaderState {
            epoch: self.progress.epoch,
            batches_consumed: self.progress.batches_consumed,
            elastic: self.progress.elastic,
        }
    }

    /// Our resume entry for this point of the run.
    pub fn resume_state(&self) -> ResumeState {
        let p = &self.progress;
        ResumeState {
            seed: self.setup.seed,
            epoch: p.epoch,
            batches_consumed: p.batches_consumed,
            epoch_phase: p.phase,
            total_batches: p.total_batches,
            train_time_s: self.train_time().as_secs_f64(),
            epoch_start_step: p.epoch_start_step,
            scheduler_steps: p.scheduler_steps,
            val_batches: p.val_batches,
            val_last_batch: p.val_last_batch,
            world_size: self.setup.world_size.max(1),
            callback_metrics: self.metrics.callback_metrics.clone(),
        }
    }

    /// Restores the position of `ckpt`: from our resume entry when there is one, else (a
    /// file written by Python Lightning) from its `loops`. Returns the seed it recorded.
    pub fn restore_position(&mut self, ckpt: &Checkpoint) -> Result<Option<u64>, String> {
        let p = &mut self.progress;
        p.global_step = ckpt.global_step;
        // ours and Lightning's files both keep manual steps in `loops` only
        let manual = ckpt.loops.as_ref().map(|l| l.fit.manual_optim_step);
        p.manual_steps = manual.map_or((0, 0), |m| (m.total.completed, m.current.completed));
        if let Some(r) = &ckpt.resume {
            let mid_epoch = r.batches_consumed > 0 && r.epoch_phase == EpochPhase::Training;
            // the training loader's saved state (files since loaders became stateful): it
            // continues the epoch exactly on the same world size, elastically on another
            let saved_loader = ckpt
                .loops
                .as_ref()
                .and_then(|l| l.fit.combined_loader.as_ref())
                .and_then(|l| l.first())
                // ours (a torchdata StatefulDataLoader's state has other keys)
                .filter(|v| v.get("order").is_some() && v.get("_num_yielded").is_some());
            p.elastic = None;
            let mut consumed = r.batches_consumed;
            if let (true, Some(saved), Some(train)) = (mid_epoch, saved_loader, &self.setup.train) {
                let at = train
                    .resume_at(saved)
                    .map_err(|e| format!("loops.fit_loop.state_dict.combined_loader[0]: {e}"))?;
                if at.epoch != r.epoch || at.batches_consumed != r.batches_consumed {
                    return Err(format!(
                        "the training loader's saved state (epoch {}, {} batches) disagrees with \
                         the run's position (epoch {}, {} batches)",
                        at.epoch, at.batches_consumed, r.epoch, r.batches_consumed
                    ));
                }
                consumed = at.batches_consumed;
                p.elastic = at.elastic;
            } else if mid_epoch && r.world_size.max(1) != self.setup.world_size.max(1) {
                return Err(format!(
                    "this checkpoint was saved mid-epoch (epoch {}, after {} batches per process) \
                     by {} process(es); the position inside the epoch depends on how the data \
                     was sharded, so resume it with {} process(es), or resume from an epoch-end \
                     checkpoint (any number of processes)",
                    r.epoch, r.batches_consumed, r.world_size, r.world_size
                ));
            }
            if !mid_epoch
                && r.batches_consumed > 0
                && r.world_size.max(1) != self.setup.world_size.max(1)
            {
                // The epoch's training ran (saved after it) on another number of processes,
                // whose epoch had another number of batches: none is left.
                consumed = usize::MAX;
            }
            p.epoch = r.epoch;
            p.batches_consumed = consumed;
            p.phase = r.epoch_phase;
            p.total_batches = r.total_batches;
            self.clock.before = Duration::from_secs_f64(r.train_time_s);
            p.epoch_start_step = r.epoch_start_step;
            p.scheduler_steps = r.scheduler_steps;
            p.val_batches = r.val_batches;
            p.val_last_batch = r.val_last_batch;
            p.is_last_batch = false;
            self.metrics.callback_metrics = r.callback_metrics.clone();
            return Ok(Some(r.seed));
        }
        let fit = ckpt.loops.as_ref().map(|l| &l.fit);
        let epochs = fit.map(|f| f.epoch_progress.current);
        p.epoch = epochs.map_or(ckpt.epoch, |e| e.completed);
        let batches = fit.map_or(Progress::default(), |f| f.batch_progress);
        match epochs {
            // The epoch's training ran (saved at its end): continue with the next epoch.
            Some(e) if e.processed.unwrap_or(0) > e.completed => {
                p.batches_consumed = usize::MAX;
                p.phase = EpochPhase::Done;
            }
            _ => {
                p.batches_consumed = usize::try_from(batches.current.completed).unwrap_or(0);
                p.phase = EpochPhase::Training;
            }
        }
        p.total_batches = batches.total.completed;
        if let Some(f) = fit {
            p.epoch_start_step = ckpt.global_step - f.optimizer_step.current.completed;
            p.scheduler_steps = (
                f.scheduler_progress.total.completed,
                f.scheduler_progress.current.completed,
            );
            p.val_batches = (
                f.val_batch_progress.total.completed,
                f.val_batch_progress.current.completed,
            );
            p.val_last_batch = f.val_batch_progress.is_last_batch.unwrap_or(false);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint saved by 2 processes after 5 batches of epoch 1, with these loops.
    fn mid_epoch(loops: Option<Loops>) -> Checkpoint {
        Checkpoint {
            global_step: 7,
            loops,
            resume: Some(ResumeState {
                seed: 3,
                epoch: 1,
                batches_consumed: 5,
                world_size: 2,
                ..ResumeState::default()
            }),
            ..Checkpoint::default()
        }
    }

    /// A run on `world_size` processes training with `train`.
    fn run(world_size: usize, train: Option<DataLoader>) -> RunState {
        RunState {
            setup: RunSetup {
                world_size,
                train,
                ..RunSetup::default()
            },
            ..RunState::default()
        }
    }

    #[test]
    fn a_mid_epoch_position_needs_the_same_world_size() {
        let mut ckpt = mid_epoch(None);
        let mut one = run(1, None);
        let e = one.restore_position(&ckpt).unwrap_err();
        assert!(
            e.contains("by 2 process(es)") && e.contains("epoch-end"),
            "{e}"
        );
        let mut two = run(2, None);
        assert_eq!(two.restore_position(&ckpt), Ok(Some(3)));
        assert_eq!((two.progress.epoch, two.progress.batches_consumed), (1, 5));
        // at an epoch's end any world size resumes (the shards are recomputed)
        if let Some(r) = &mut ckpt.resume {
            r.epoch_phase = EpochPhase::Done;
        }
        assert_eq!(one.restore_position(&ckpt), Ok(Some(3)));
    }

    #[test]
    fn a_mid_epoch_position_with_the_loaders_state_continues_on_another_world_size() {
        use crate::data::{Elastic, TensorDataset};
        let rows = TensorDataset::new(vec![tch::Tensor::arange(30, tch::kind::INT64_CPU)]).unwrap();
        let loader = DataLoader::new(rows, 2).shuffle(true);
        let saving = loader.clone().distributed(2, 1).unwrap();
        let mut loops = Loops::zero();
        loops.fit.combined_loader = Some(vec![saving.state_dict(&LoaderState::at(1, 5))]);
        let ckpt = mid_epoch(Some(loops));
        let mut one = run(1, Some(loader.clone()));
        assert_eq!(one.restore_position(&ckpt), Ok(Some(3)));
        assert_eq!(one.progress.batches_consumed, 5);
        // 5 batches of 2 on each of 2 ranks: the first 20 samples of the epoch's order
        let want = Elastic {
            offset: 20,
            distributed_order: true,
            skip: 5,
        };
        assert_eq!(one.progress.elastic, Some(want));
        // the same world continues the same plan
        let mut two = run(2, Some(saving));
        assert_eq!(two.restore_position(&ckpt), Ok(Some(3)));
        assert_eq!(two.progress.elastic, None);
        // a custom sampler's order cannot be re-dealt: a clear error
        struct Rev;
        impl crate::data::Sampler for Rev {
            fn indices(&self, n: usize, _: u64, _: u64) -> Vec<usize> {
                (0..n).rev().collect()
            }
        }
        let mut loops = Loops::zero();
        let custom = loader.clone().sampler(Rev).distributed(2, 0).unwrap();
        loops.fit.combined_loader = Some(vec![custom.state_dict(&LoaderState::at(1, 5))]);
        let ckpt = mid_epoch(Some(loops));
        let e = run(1, Some(loader)).restore_position(&ckpt).unwrap_err();
        assert!(
            e.contains("combined_loader") && e.contains("custom sampler"),
            "{e}"
        );
    }
}
