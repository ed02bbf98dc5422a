//! `Trainer::predict`: `predict_step` over the predict loader.

use super::{need, CkptPath, Trainer};
use crate::data::{DataModule, LoaderState};
use crate::error::Result;
use crate::lightning_module::{LightningModule, Stage, StepContext};
use tch::Tensor;

impl Trainer {
    /// Runs `predict_step` over the predict loader and returns each batch's output.
    pub fn predict<M: LightningModule>(
        &mut self,
        model: &mut M,
        data: &DataModule,
        ckpt_path: Option<CkptPath>,
    ) -> Result<Vec<Tensor>> {
        let loader = need(data.predict_loader(), "predict: predict")?;
        self.eval_setup(model, data, ckpt_path)?;
        let n = self.cfg.limit_predict_batches.apply(loader.len());
        let (device, epoch, step) = (
            self.cfg.device,
            self.run.progress.epoch,
            self.run.progress.global_step,
        );
        let precision = self.cfg.precision;
        tch::no_grad(|| {
            loader
                .epoch_iter_until(0, LoaderState::default(), n)
                .map(|next| {
                    let (idx, batch) = next?;
                    let mut ctx = StepContext::new(Stage::Predict, epoch, step);
                    // Under the precision's autocast, as Lightning's predict loop runs it.
                    precision.autocast(device, || {
                        model.predict_step(
                            &batch.to_device_with(device, loader.pins_memory()),
                            idx,
                            &mut ctx,
                        )
                    })?
                })
                .collect()
        })
    }
}
