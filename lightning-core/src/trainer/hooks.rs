//! Calling callbacks: each hook gets a [`TrainerContext`] (the run as of now, and a handle
//! that saves checkpoints through the trainer's saver). Callback states are collected only
//! when a checkpoint is written.

use super::ddp::{save_on_rank_zero, writes_files};
use super::saver::Saver;
use super::state::RunState;
use super::{checkpoint_of, SaveErrorPolicy, Trainer, TrainerConfig};
use crate::callbacks::{
    AfterSave, Callback, Optimization, OptimizerView, ParamGroupView, RunInfo, SchedulerView,
    TrainerContext, TrainerHandle,
};
use crate::error::Result;
use crate::lightning_module::{LightningModule, OptimizerConfig, Optimizers};
use crate::traverse::TensorKind;
use crate::value::Value;
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// A callback hook, as a function of the callback and the context.
pub(crate) type Hook = fn(&mut dyn Callback, &mut TrainerContext<'_>) -> Result<()>;

/// The trainer as one callback's hook sees it: the model, the optimizer, the run, the saver,
/// and the other callbacks (whose states go into a checkpoint next to the caller's).
struct Handle<'a, M: LightningModule> {
    model: &'a M,
    optim: Option<&'a mut Optimizers>,
    run: &'a RunState,
    saver: &'a mut Saver,
    before: &'a [Box<dyn Callback>],
    after: &'a [Box<dyn Callback>],
    world: Option<&'a super::ddp::World>,
    fsdp: Option<&'a super::ddp::Fsdp>,
    stop_requested: bool,
    /// Epochs the callback added to the limit, applied after the hook.
    extra_epochs: i64,
    /// The callback asked for an epoch without optimization.
    skip_optimization: bool,
    /// Metrics the callback logged, for the logger and `callback_metrics` after the hook.
    logged: Vec<(IndexMap<String, f64>, i64)>,
}

impl<M: LightningModule> TrainerHandle for Handle<'_, M> {
    fn save_checkpoint(
        &mut self,
        path: &Path,
        weights_only: bool,
        caller: &dyn Callback,
    ) -> Result<()> {
        // with async checkpointing the barrier follows the snapshot: the write is durable
        // by the end of `fit`
        let (before, after, model, optim, run) = (
            self.before,
            self.after,
            self.model,
            self.optim.as_deref(),
            self.run,
        );
        save_on_rank_zero(self.world, self.fsdp, self.saver, path, false, || {
            let callbacks = before
                .iter()
                .map(|c| c.as_ref())
                .chain(std::iter::once(caller))
                .chain(after.iter().map(|c| c.as_ref()));
            checkpoint_of(model, optim, callbacks, run, weights_only)
        })
    }

    fn when_durable(&mut self, action: AfterSave) -> Result<()> {
        self.saver.when_durable(action)
    }

    fn wait_for_saves(&mut self) -> Result<()> {
        self.saver.wait()
    }

    fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    fn optimization(&self, weight_decay: bool) -> Optimization {
        self.optim
            .as_deref()
            .map(|o| optimization_of(&o.config, weight_decay))
            .unwrap_or_default()
    }

    fn optimizer_config(&mut self) -> Option<&mut OptimizerConfig> {
        self.optim.as_deref_mut().map(|o| &mut o.config)
    }

    fn extend_max_epochs(&mut self, epochs: i64) {
        self.extra_epochs += epochs;
    }

    fn skip_optimization_this_epoch(&mut self) {
        self.skip_optimization = true;
    }

    fn module_state(&self) -> Vec<(String, tch::Tensor, TensorKind)> {
        let mut v = Vec::new();
        self.model.visit("", &mut |name, t, kind| {
            if kind.is_persistent() {
                v.push((name.to_owned(), t.shallow_clone(), kind));
            }
        });
        v
    }

    fn log_metrics(&mut self, metrics: IndexMap<String, f64>, step: i64) {
        self.logged.push((metrics, step));
    }

    fn module_tensors(&self) -> Vec<(String, tch::Tensor)> {
        let mut v = self.model.named_parameters();
        v.extend(self.model.named_buffers());
        v
    }
}

/// What callbacks see of the optimizers and their schedulers.
fn optimization_of(o: &OptimizerConfig, weight_decay: bool) -> Optimization {
    Optimization {
        optimizers: o
            .entries()
            .iter()
            .map(|e| optimizer_view(e.optimizer.as_ref(), weight_decay))
            .collect(),
        schedulers: o
            .schedulers()
            .map(|(i, s)| SchedulerView {
                optimizer: i,
                interval: s.interval,
                name: s.name.clone(),
            })
            .collect(),
    }
}

/// One optimizer's class and param groups (lr, momentum, and on request weight decay).
fn optimizer_view(opt: &dyn crate::optim::Optimizer, weight_decay: bool) -> OptimizerView {
    // weight decays and group names live in the param groups of the state dict
    let groups_value = weight_decay.then(|| opt.state_dict());
    let group = |i: usize| {
        groups_value
            .as_ref()
            .and_then(|v| v.get_path(&format!("param_groups.{i}")).cloned())
    };
    let groups = opt
        .lrs()
        .into_iter()
        .enumerate()
        .map(|(i, lr)| {
            let g = group(i);
            ParamGroupView {
                lr,
                momentum: opt.momentum(i),
                weight_decay: g
                    .as_ref()
                    .and_then(|g| g.get("weight_decay"))
                    .and_then(Value::as_f64),
                name: g
                    .as_ref()
                    .and_then(|g| g.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }
        })
        .collect();
    OptimizerView {
        class_name: opt.class_name().to_owned(),
        groups,
    }
}

/// What callbacks can see of the run.
fn run_info<'a>(
    run: &'a RunState,
    cfg: &'a TrainerConfig,
    log_dir: Option<&'a Path>,
    is_global_zero: bool,
) -> RunInfo<'a> {
    RunInfo {
        current_epoch: run.progress.epoch,
        global_step: run.progress.global_step,
        callback_metrics: &run.metrics.callback_metrics,
        log_dir,
        default_root_dir: &cfg.default_root_dir,
        is_global_zero,
        resumed_from: run.setup.resumed_from.as_deref(),
        train_time: run.train_time(),
        sanity_checking: run.flags.sanity_checking,
        is_last_batch: run.progress.is_last_batch,
        is_fitting: run.setup.fitting,
        num_val_batches: run.setup.num_val_batches,
        check_val_every_n_epoch: Some(cfg.check_val_every_n_epoch as i64),
        val_check_within_epoch: run.setup.val_every.is_some(),
        validation_ran: run.flags.val_ran,
        checkpoint_io: &*cfg.checkpoint_io,
        fast_dev_run: cfg.fast_dev_run > 0,
        max_epochs: super::max_epochs_of(cfg, run),
        sharded: matches!(cfg.strategy, super::strategy::Strategy::Fsdp(_)),
        should_update_logs: (run.progress.global_step + 1) % cfg.log_every_n_steps.max(1) as i64
            == 0
            || run.flags.should_stop,
    }
}

impl Trainer {
    /// Runs `hook` on every callback in order, stopping at the first error; a stop requested
    /// by a callback takes effect after the hook. Save failures follow [`SaveErrorPolicy`].
    pub(crate) fn hooks<M: LightningModule>(&mut self, model: &M, hook: Hook) -> Result<()> {
        if self.callbacks.is_empty() {
            return Ok(());
        }
        let log_dir: Option<PathBuf> = self.logging.log_dir();
        let failures_before = self.saver.failures;
        let rank_zero = writes_files(self.world.as_deref());
        let mut result = Ok(());
        let mut stop = false;
        for i in 0..self.callbacks.len() {
            let (before, rest) = self.callbacks.split_at_mut(i);
            let Some((cb, after)) = rest.split_first_mut() else {
                break;
            };
            let mut handle = Handle {
                model,
                optim: self.optim.as_mut(),
                run: &self.run,
                saver: &mut self.saver,
                before,
                after,
                world: self.world.as_deref(),
                fsdp: self.fsdp.as_ref(),
                stop_requested: false,
                extra_epochs: 0,
                skip_optimization: false,
                logged: Vec::new(),
            };
            let info = run_info(&self.run, &self.cfg, log_dir.as_deref(), rank_zero);
            let mut ctx = TrainerContext::new(info, &mut handle);
            result = hook(cb.as_mut(), &mut ctx);
            stop |= handle.stop_requested;
            let (extra_epochs, skip) = (handle.extra_epochs, handle.skip_optimization);
            let logged_now = std::mem::take(&mut handle.logged);
            if super::max_epochs_of(&self.cfg, &self.run) >= 0 {
                self.run.setup.extra_epochs += extra_epochs;
            }
            self.run.flags.skip_optimization |= skip;
            for (metrics, step) in logged_now {
                let logged = self.logging.log_metrics_at(&metrics, step);
                if result.is_ok() {
                    result = logged;
                }
                self.run.metrics.callback_metrics.extend(metrics);
            }
            if result.is_err() {
                break;
            }
        }
        if stop {
            self.run.flags.should_stop = true;
        }
        self.save_policy(result, failures_before)
    }

    /// Applies [`SaveErrorPolicy`] to `result` when a checkpoint save failed since
    /// `failures_before` (other errors pass through).
    pub(crate) fn save_policy(&self, result: Result<()>, failures_before: usize) -> Result<()> {
        match result {
            Err(e)
                if self.saver.failures > failures_before
                    && self.cfg.on_save_error == SaveErrorPolicy::WarnAndContinue =>
            {
                super::warn(&format!(
                    "checkpoint not saved, training goes on (on_save_error=WarnAndContinue): {e}"
                ));
                Ok(())
            }
            r => r,
        }
    }
}
