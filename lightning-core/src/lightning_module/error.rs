//! [`ModuleError`]: a module that lacks a hook the run needs, or a step that uses manual
//! optimization wrongly.

/// A `LightningModule` was used in a way it does not support; Lightning's messages.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module lacks a hook the run calls (`training_step`, `predict_step`,
    /// `configure_optimizers`).
    #[error("`{hook}` must be implemented to be used with {used_by}")]
    NotImplemented {
        /// The hook.
        hook: &'static str,
        /// What calls it (`the Lightning Trainer`, `` `Trainer::predict` ``).
        used_by: &'static str,
    },
    /// A manual-optimization call (`optimizers`, `lr_schedulers`, `manual_backward`) made
    /// outside a training step with manual optimization.
    #[error(
        "`{call}` is only available in a training step with manual optimization \
         (`LightningModule::automatic_optimization` returning false)"
    )]
    ManualOnly {
        /// The call.
        call: &'static str,
    },
    /// An optimizer or scheduler index beyond what `configure_optimizers` returned.
    #[error("{what} index {index} is out of range: `configure_optimizers` returned {count}")]
    IndexOutOfRange {
        /// `optimizer` or `LR scheduler`.
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// `manual_backward` failed in libtorch.
    #[error("manual_backward: backward of the loss failed: {0}")]
    Backward(#[source] tch::TchError),
}
