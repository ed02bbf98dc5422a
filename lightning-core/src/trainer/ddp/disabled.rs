//! `strategy="ddp"` without lightning-core's `distributed` feature: joining a job is an error
//! naming the feature, so no [`World`] (nor [`Ddp`]) ever exists and the rest is unreachable.

use crate::error::{Error, Result};
use crate::trainer::strategy::DdpOptions;
use crate::trainer::TrainerConfig;
use std::convert::Infallible;
use std::sync::Arc;
use tch::{Device, Tensor};

/// What the trainer reads of a job's place (never made).
pub(crate) struct Place {
    pub rank: usize,
    pub world_size: usize,
    never: Infallible,
}

impl Place {
    pub fn is_global_zero(&self) -> bool {
        match self.never {}
    }
}

/// A distributed job (never made without the feature).
pub(crate) struct World {
    pub env: Place,
}

impl World {
    /// The error a run on several devices or nodes gets.
    pub fn get(_cfg: &TrainerConfig, _opts: &DdpOptions) -> Result<Arc<World>> {
        Err(Error::Config(
            "strategy=\"ddp\" on several devices or nodes needs lightning-core's `distributed` \
             cargo feature, which this build leaves out"
                .into(),
        ))
    }

    fn never(&self) -> ! {
        match self.env.never {}
    }

    pub fn device(&self, _cfg: &TrainerConfig) -> Device {
        self.never()
    }

    pub fn barrier(&self, _what: &str) -> Result<()> {
        self.never()
    }

    pub fn sync_logged(&self, _logged: &mut [crate::lightning_module::Logged]) -> Result<()> {
        self.never()
    }

    pub fn sum(&self, _values: &mut [f64]) -> Result<()> {
        self.never()
    }

    pub fn any_of<const N: usize>(&self, _flags: [bool; N]) -> Result<[bool; N]> {
        self.never()
    }

    pub fn failed_rank(&self) -> Option<Error> {
        self.never()
    }
}

/// A no-op: no local ranks were launched.
pub fn finish_distributed() -> Result<()> {
    Ok(())
}

/// DDP around a module (never made without the feature).
pub(crate) struct Ddp {
    pub world: Arc<World>,
}

impl Ddp {
    pub fn wrap(
        world: Arc<World>,
        _opts: &DdpOptions,
        _params: &[Tensor],
        _buffers: &[Tensor],
    ) -> Result<Ddp> {
        world.never()
    }

    pub fn before_forward(&mut self, _sync: bool) -> Result<()> {
        self.world.never()
    }

    pub fn before_backward(&mut self, _loss: &Tensor, _sync: bool) -> Result<()> {
        self.world.never()
    }
}

/// `strategy="fsdp"` without the `distributed` feature: never built ([`World::get`] fails).
pub(crate) struct Fsdp {
    pub world: Arc<World>,
}

impl Fsdp {
    pub fn shard(
        world: Arc<World>,
        _opts: &crate::trainer::strategy::FsdpOptions,
        _named: Vec<(String, Tensor)>,
        _buffers: &[Tensor],
        _units: &[Option<u64>],
    ) -> Result<Fsdp> {
        world.never()
    }

    pub fn activate(&mut self) -> NotActive {
        NotActive
    }

    pub fn take_unit_error(&mut self) -> Result<()> {
        self.world.never()
    }

    pub fn peak_gathered_bytes(&self) -> i64 {
        0
    }

    pub fn bind(&mut self, _optimizers: &[Vec<Tensor>]) -> Result<()> {
        self.world.never()
    }

    pub fn unshard(&mut self) -> Result<()> {
        self.world.never()
    }

    pub fn reduce_grads(&mut self) -> Result<()> {
        self.world.never()
    }

    pub fn reshard(&mut self) {
        self.world.never()
    }

    pub fn clip_grad_norm(&self, _max_norm: f64) -> Result<()> {
        self.world.never()
    }

    pub fn localize(&self, _ckpt: &mut crate::value::Value) -> Result<()> {
        self.world.never()
    }

    pub fn save(
        &self,
        _path: &std::path::Path,
        _ckpt: crate::value::Value,
        _saver: &mut crate::trainer::saver::Saver,
        _wait: bool,
    ) -> Result<()> {
        self.world.never()
    }
}

impl crate::lightning_module::BackwardSync for Ddp {
    fn before_backward(&mut self, _loss: &Tensor) -> Result<()> {
        self.world.never()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// `Fsdp::activate`'s guard without the `distributed` feature (never made: no `Fsdp` is).
pub(crate) struct NotActive;

impl Drop for NotActive {
    fn drop(&mut self) {}
}

#[cfg(test)]
mod tests {
    use crate::trainer::Trainer;

    #[test]
    fn ddp_on_several_devices_is_an_error_naming_the_feature() {
        let e = super::World::get(
            &Trainer::builder()
                .strategy("ddp")
                .devices(2)
                .build()
                .expect("a valid configuration")
                .cfg,
            &Default::default(),
        )
        .err()
        .expect("no distributed engine");
        assert!(e.to_string().contains("`distributed` cargo feature"), "{e}");
        super::finish_distributed().expect("a no-op");
    }
}
