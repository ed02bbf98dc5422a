//! The training step of manual optimization (Lightning's `_ManualOptimization`): the
//! trainer lends its optimizers and grad scaler, together, to the step's context;
//! `training_step` runs backward and the optimizer steps itself; the trainer takes them back
//! and counts the steps taken.

use super::fit::no_optimizer;
use super::Trainer;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::lightning_module::{LightningModule, ManualOptim, StepContext};

impl Trainer {
    /// Batch `idx` of the epoch's `n` in manual optimization: `training_step` gets the
    /// optimizers and the grad scaler (through `ctx`); the trainer counts its optimizer steps
    /// (`global_step`, as Lightning's `optim_step_progress`). Every batch "steps" for
    /// Lightning's loggers and counters (no accumulation here): returns true.
    pub(super) fn manual_step<M: LightningModule>(
        &mut self,
        model: &mut M,
        batch: &Batch,
        idx: usize,
        n: usize,
        ctx: &mut StepContext,
    ) -> Result<bool> {
        let lent = self.optim.take().ok_or_else(no_optimizer)?;
        let mut manual = ManualOptim::new(lent);
        // Under DDP the reducer is lent too: armed for this forward, re-armed before every
        // `manual_backward` (Lightning's `pre_backward`).
        if let Some(mut d) = self.ddp.take() {
            let armed = d.before_forward(true);
            manual.sync = Some(Box::new(d));
            if let Err(e) = armed {
                self.take_back(manual);
                return Err(e);
            }
        }
        ctx.manual = Some(manual);
        let out = self
            .cfg
            .precision
            .autocast(self.cfg.device, || model.training_step(batch, idx, ctx))
            .map_err(Error::from)
            .and_then(|r| r);
        if let Some(m) = ctx.manual.take() {
            self.run.progress.manual_stepped(m.steps);
            self.take_back(m);
        }
        // the returned loss is not back-propagated (Lightning detaches it)
        let _loss = out.map_err(|e| Error::Step {
            what: "training_step (manual optimization)",
            epoch: self.run.progress.epoch,
            batch: idx,
            source: Box::new(e),
        })?;
        self.run.progress.batch_done(idx, n);
        Ok(true)
    }

    /// The optimizers (and the DDP reducer) lent to a manual step, back with the trainer.
    fn take_back(&mut self, mut m: ManualOptim) {
        if let Some(sync) = m.sync.take() {
            self.ddp = sync.into_any().downcast().ok().map(|d| *d);
        }
        self.optim = Some(m.lent);
    }
}
