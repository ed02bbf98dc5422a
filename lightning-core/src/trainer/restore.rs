//! The checkpoint dict in Lightning 2.6's layout, and restoring a run from one.
//!
//! Keys: `epoch`, `global_step`, `pytorch-lightning_version`, `state_dict`, `loops` (the
//! fit/validate/test/predict loop progress as Lightning names it), and unless weights-only
//! `callbacks` (by state key), `optimizer_states`, `lr_schedulers`; then `hparams_name` and
//! `hyper_parameters`; then our own [`RESUME_KEY`] entry (seed, data position, end-of-epoch
//! phase), which makes a resume exact: Lightning saves no RNG state or data position. RNG is
//! reseeded from `(seed, epoch, batch)` before every training step, so the seed is all the
//! RNG state a resume needs.

use super::loops::EpochEnd;
use super::RunState;
use crate::error::{Error, Result};
use crate::hparams::Hyperparameters;
use crate::lightning_module::{LightningModule, OptimizerConfig};
use crate::traverse::{state_dict_from_value, state_dict_to_value, Traverse};
use crate::value::Value;
use std::path::Path;

/// The Lightning version our checkpoints claim (`pytorch-lightning_version`).
pub const VERSION: &str = "2.6.6";
/// Where Lightning's `MixedPrecision` plugin keeps the grad scaler's state (`16-mixed`).
pub const PRECISION_KEY: &str = "MixedPrecision";
/// Our extra top-level key: what an exact resume needs beyond Lightning's dict.
pub const RESUME_KEY: &str = "lightning_rs";

/// Copies the checkpoint's `state_dict` into the module (strict, as Lightning's resume).
pub(crate) fn load_model_state<M: Traverse>(
    model: &mut M,
    ckpt: &Value,
    path: &Path,
) -> Result<()> {
    let sd = ckpt.get("state_dict").ok_or_else(|| {
        Error::Msg(format!(
            "{}: checkpoint has no `state_dict`",
            path.display()
        ))
    })?;
    let sd =
        state_dict_from_value(sd).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    model
        .load_state_dict(&sd, true)
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    Ok(())
}

fn progress(fields: &[&str], total: i64, current: i64) -> Value {
    let part = |n: i64| {
        let mut d = Value::dict();
        for f in fields {
            d.insert(*f, n);
        }
        d
    };
    let mut v = Value::dict();
    v.insert("total", part(total));
    v.insert("current", part(current));
    v
}

const BATCH: &[&str] = &["ready", "completed", "started", "processed"];

fn batch_progress(total: i64, current: i64, is_last: bool) -> Value {
    let mut v = progress(BATCH, total, current);
    v.insert("is_last_batch", is_last);
    v
}

/// Lightning's `loops` entry, filled from our counters.
pub(crate) fn loops_state(run: &RunState) -> Value {
    let consumed = run.batches_consumed as i64;
    let mut step = Value::dict();
    step.insert(
        "step",
        progress(&["ready", "completed"], run.global_step, run.global_step),
    );
    step.insert(
        "zero_grad",
        progress(
            &["ready", "completed", "started"],
            run.global_step,
            run.global_step,
        ),
    );
    let mut optim = Value::dict();
    optim.insert("optimizer", step);
    let mut stepped = Value::dict();
    stepped.insert("_batches_that_stepped", run.global_step);
    let mut fit = Value::dict();
    fit.insert("state_dict", Value::dict());
    fit.insert("epoch_loop.state_dict", stepped);
    fit.insert(
        "epoch_loop.batch_progress",
        batch_progress(run.total_batches, consumed, run.is_last_batch),
    );
    fit.insert(
        "epoch_loop.scheduler_progress",
        progress(&["ready", "completed"], 0, 0),
    );
    fit.insert(
        "epoch_loop.automatic_optimization.state_dict",
        Value::dict(),
    );
    fit.insert("epoch_loop.automatic_optimization.optim_progress", optim);
    fit.insert("epoch_loop.manual_optimization.state_dict", Value::dict());
    fit.insert(
        "epoch_loop.manual_optimization.optim_progress",
        progress(&["ready", "completed"], 0, 0),
    );
    fit.insert("epoch_loop.val_loop.state_dict", Value::dict());
    fit.insert(
        "epoch_loop.val_loop.batch_progress",
        batch_progress(run.val_batches, 0, false),
    );
    // Epoch counters: `processed` once the epoch's batches (and validation) are done.
    let started = run.epoch + 1;
    let processed = run.epoch + i64::from(run.epoch_end >= EpochEnd::VALIDATED);
    let mut epochs = Value::dict();
    for part in ["total", "current"] {
        let mut d = Value::dict();
        d.insert("ready", started);
        d.insert("completed", run.epoch);
        d.insert("started", started);
        d.insert("processed", processed);
        epochs.insert(part, d);
    }
    fit.insert("epoch_progress", epochs);
    let mut loops = Value::dict();
    loops.insert("fit_loop", fit);
    for name in ["validate_loop", "test_loop", "predict_loop"] {
        let mut l = Value::dict();
        l.insert("state_dict", Value::dict());
        l.insert("batch_progress", batch_progress(0, 0, false));
        loops.insert(name, l);
    }
    loops
}

/// Builds the checkpoint dict.
pub(crate) fn dump<M: LightningModule>(
    model: &M,
    optim: Option<&OptimizerConfig>,
    callback_states: &[(String, Value)],
    run: &RunState,
    weights_only: bool,
) -> Value {
    let mut c = Value::dict();
    c.insert("epoch", run.epoch);
    c.insert("global_step", run.global_step);
    c.insert("pytorch-lightning_version", VERSION);
    c.insert("state_dict", state_dict_to_value(&model.state_dict()));
    c.insert("loops", loops_state(run));
    if !weights_only {
        let mut cbs = Value::dict();
        for (k, s) in callback_states {
            cbs.insert(k.as_str(), s.clone());
        }
        c.insert("callbacks", cbs);
        let (opts, scheds) = match optim {
            Some(o) => (
                vec![o.optimizer.state_dict()],
                o.schedulers
                    .iter()
                    .map(|s| s.scheduler.state_dict())
                    .collect(),
            ),
            None => (vec![], vec![]),
        };
        c.insert("optimizer_states", Value::List(opts));
        c.insert("lr_schedulers", Value::List(scheds));
        if let Some(s) = &run.scaler {
            c.insert(PRECISION_KEY, s.state_dict());
        }
    }
    let hp = model.hparams().to_value();
    if hp.as_dict().is_some_and(|d| !d.is_empty()) {
        c.insert("hparams_name", "kwargs");
        c.insert("hyper_parameters", hp);
    }
    let mut ours = Value::dict();
    ours.insert("seed", i64::from_ne_bytes(run.seed.to_ne_bytes()));
    ours.insert("epoch", run.epoch);
    ours.insert("batches_consumed", run.batches_consumed);
    ours.insert("epoch_end", i64::from(run.epoch_end));
    ours.insert("total_batches", run.total_batches);
    ours.insert("train_time_s", run.train_time().as_secs_f64());
    c.insert(RESUME_KEY, ours);
    model.on_save_checkpoint(&mut c);
    c
}

/// Where a checkpoint says the run was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoopPosition {
    pub epoch: i64,
    pub global_step: i64,
    pub batches_consumed: usize,
    pub epoch_end: u8,
    pub total_batches: i64,
    pub seed: Option<u64>,
    pub train_time_s: f64,
}

fn int_at(ckpt: &Value, path: &str) -> Option<i64> {
    ckpt.get_path(path).and_then(Value::as_i64)
}

/// Reads the loop position: ours when present, else from Lightning's `loops` entry.
pub(crate) fn loop_position(ckpt: &Value, path: &Path) -> Result<LoopPosition> {
    let global_step = ckpt
        .get("global_step")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            Error::Msg(format!(
                "{}: checkpoint has no integer `global_step`",
                path.display()
            ))
        })?;
    if let Some(ours) = ckpt.get(RESUME_KEY) {
        let get = |k: &str| {
            ours.get(k).and_then(Value::as_i64).ok_or_else(|| {
                Error::Msg(format!(
                    "{}: `{RESUME_KEY}.{k}` is missing or not an int",
                    path.display()
                ))
            })
        };
        return Ok(LoopPosition {
            epoch: get("epoch")?,
            global_step,
            batches_consumed: usize::try_from(get("batches_consumed")?).unwrap_or(0),
            epoch_end: u8::try_from(get("epoch_end")?).unwrap_or(0),
            total_batches: get("total_batches")?,
            seed: Some(u64::from_ne_bytes(get("seed")?.to_ne_bytes())),
            train_time_s: ours
                .get("train_time_s")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
        });
    }
    // A checkpoint written by Python Lightning.
    let ep = "loops.fit_loop.epoch_progress.current";
    let completed = int_at(ckpt, &format!("{ep}.completed"));
    let processed = int_at(ckpt, &format!("{ep}.processed"));
    let epoch = completed
        .or_else(|| ckpt.get("epoch").and_then(Value::as_i64))
        .unwrap_or(0);
    let bp = ckpt
        .get("loops")
        .and_then(|l| l.get("fit_loop"))
        .and_then(|f| f.get("epoch_loop.batch_progress"));
    let batches = bp
        .and_then(|b| b.get_path("current.completed"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let total_batches = bp
        .and_then(|b| b.get_path("total.completed"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let (batches_consumed, epoch_end) = match (completed, processed) {
        // The epoch's training ran (saved at its end): continue with the next epoch.
        (Some(c), Some(p)) if p > c => (usize::MAX, EpochEnd::DONE),
        _ => (usize::try_from(batches).unwrap_or(0), 0),
    };
    Ok(LoopPosition {
        epoch,
        global_step,
        batches_consumed,
        epoch_end,
        total_batches,
        seed: None,
        train_time_s: 0.0,
    })
}

/// Checks the checkpoint holds a full training state (not `save_weights_only`).
pub(crate) fn require_training_state(ckpt: &Value, path: &Path) -> Result<()> {
    if ckpt.get("optimizer_states").is_none() {
        return Err(Error::Msg(format!(
            "{}: cannot resume training from this checkpoint: it holds only the model \
             (no `optimizer_states`), probably because it was saved with \
             `ModelCheckpoint(save_weights_only=true)` or `save_checkpoint(.., weights_only=true)`",
            path.display()
        )));
    }
    if ckpt.get("state_dict").is_none() {
        return Err(Error::Msg(format!(
            "{}: checkpoint has no `state_dict`",
            path.display()
        )));
    }
    Ok(())
}

/// Restores the optimizer and schedulers (after model and loops, as Lightning).
pub(crate) fn restore_optim(ckpt: &Value, optim: &mut OptimizerConfig, path: &Path) -> Result<()> {
    let states = ckpt
        .get("optimizer_states")
        .and_then(Value::as_seq)
        .unwrap_or(&[]);
    match states {
        [s] => optim
            .optimizer
            .load_state_dict(s)
            .map_err(|e| Error::Msg(format!("{}: restoring the optimizer: {e}", path.display())))?,
        _ => {
            return Err(Error::Msg(format!(
                "{}: checkpoint has {} optimizer states, the model configures 1",
                path.display(),
                states.len()
            )))
        }
    }
    let scheds = ckpt
        .get("lr_schedulers")
        .and_then(Value::as_seq)
        .unwrap_or(&[]);
    if scheds.len() != optim.schedulers.len() {
        return Err(Error::Msg(format!(
            "{}: checkpoint has {} LR scheduler states, the model configures {}",
            path.display(),
            scheds.len(),
            optim.schedulers.len()
        )));
    }
    for (i, (s, cfg)) in scheds.iter().zip(optim.schedulers.iter_mut()).enumerate() {
        cfg.scheduler.load_state_dict(s).map_err(|e| {
            Error::Msg(format!(
                "{}: restoring LR scheduler {i}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}
