//! The training step of automatic optimization (Lightning's `_AutomaticOptimization`):
//! forward under autocast, the loss divided over accumulated batches, scaled and
//! back-propagated; every `accumulate_grad_batches` batches (and at the epoch's end) the
//! optimizer step: unscale and clip, step through the grad scaler, `zero_grad`.

use super::ddp::Fsdp;
use super::fit::no_optimizer;
use super::{clip_gradients, Trainer};
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::lightning_module::{LightningModule, StepContext};

impl Trainer {
    /// Batch `idx` of the epoch's `n` in automatic optimization. Returns whether the
    /// optimizer stepped.
    pub(super) fn automatic_step<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: &Batch,
        idx: usize,
        n: usize,
        ctx: &mut StepContext,
    ) -> Result<bool> {
        let epoch = self.run.progress.epoch;
        let step_err = |what: &'static str| {
            move |e: Error| Error::Step {
                what,
                epoch,
                batch: idx,
                source: Box::new(e),
            }
        };
        if self.run.flags.skip_optimization {
            self.forward_only_step(model, batch, idx, n, ctx)?;
            // Lightning accumulates over the whole epoch but its last batch still ends in an
            // optimizer step: no parameter has a gradient, so nothing changes but the step
            // count (and what follows a step: step schedulers, checkpoints).
            if idx + 1 == n {
                self.gradless_step().map_err(step_err("optimizer step"))?;
                return Ok(true);
            }
            return Ok(false);
        }
        let acc = self.cfg.accumulate_grad_batches;
        let stepped = (idx + 1).is_multiple_of(acc) || idx + 1 == n;
        if let Some(d) = &mut self.ddp {
            d.before_forward(stepped)?;
        }
        if let Some(f) = &mut self.fsdp {
            f.unshard()?;
        }
        // FSDP units gather around their forward and backward (hooks), until `reduce_grads`
        let active = self.fsdp.as_mut().map(Fsdp::activate);
        let loss = self
            .cfg
            .precision
            .autocast(self.cfg.device, || model.training_step(batch, idx, ctx))??;
        let loss = if acc > 1 { loss / acc as f64 } else { loss };
        let scaled = match &self.optim {
            Some(o) => o.scale(loss),
            None => loss,
        };
        if let Some(d) = &mut self.ddp {
            d.before_backward(&scaled, stepped)?;
        }
        scaled
            .f_backward()
            .map_err(|e| step_err("backward of training_step's loss")(e.into()))?;
        drop(active);
        if let Some(f) = &mut self.fsdp {
            f.reduce_grads()?;
        }
        self.run.progress.batch_done(idx, n);
        if stepped {
            self.optimizer_step().map_err(step_err("optimizer step"))?;
        }
        Ok(stepped)
    }

    /// A training step without backward or optimizer step (an epoch a callback asked to run
    /// without optimization): `training_step` runs in training mode (batch-norm statistics
    /// update), its loss is dropped.
    fn forward_only_step<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: &Batch,
        idx: usize,
        n: usize,
        ctx: &mut StepContext,
    ) -> Result<()> {
        if let Some(f) = &mut self.fsdp {
            f.unshard()?;
        }
        let active = self.fsdp.as_mut().map(Fsdp::activate);
        let step = self
            .cfg
            .precision
            .autocast(self.cfg.device, || model.training_step(batch, idx, ctx));
        drop(active);
        if let Some(f) = &mut self.fsdp {
            f.reshard();
            f.take_unit_error()?;
        }
        let _loss = step??;
        self.run.progress.batch_done(idx, n);
        Ok(())
    }

    /// The optimizer step of an epoch without backward: parameters without gradients are
    /// left alone by the optimizers (torch's too), so only the step is counted.
    fn gradless_step(&mut self) -> Result<()> {
        let o = (self.optim.as_mut())
            .and_then(|o| o.config.entries_mut().first_mut())
            .ok_or_else(no_optimizer)?;
        o.optimizer.step()?;
        o.optimizer.zero_grad();
        self.run.progress.optimizer_stepped();
        Ok(())
    }

    /// Clipping (on unscaled gradients), the optimizer step through the grad scaler, and
    /// `zero_grad`.
    fn optimizer_step(&mut self) -> Result<()> {
        let optim = self.optim.as_mut().ok_or_else(no_optimizer)?;
        let o = optim
            .config
            .entries_mut()
            .first_mut()
            .ok_or_else(no_optimizer)?;
        if let Some(v) = self.cfg.gradient_clip_val {
            // Gradients are unscaled before clipping, as Lightning does.
            if let Some(s) = &mut optim.scaler {
                let _found_inf = s.unscale_(o.optimizer.as_ref())?;
            }
            match &self.fsdp {
                // The norm is over every rank's shards.
                Some(f)
                    if self.cfg.gradient_clip_algorithm == crate::optim::ClipAlgorithm::Norm =>
                {
                    f.clip_grad_norm(v)?
                }
                _ => clip_gradients(&o.optimizer.params(), v, self.cfg.gradient_clip_algorithm)?,
            }
        }
        match &mut optim.scaler {
            // A step with inf/NaN gradients is skipped; the step still counts (Lightning).
            Some(s) => {
                s.step(o.optimizer.as_mut())?;
                s.update()?;
            }
            None => o.optimizer.step()?,
        }
        o.optimizer.zero_grad();
        self.run.progress.optimizer_stepped();
        Ok(())
    }
}
