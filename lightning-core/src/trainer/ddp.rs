//! `strategy="ddp"` in the trainer. The engine (`engine.rs`: the process group, the launch of
//! the other local ranks, DDP's reducer) is lightning-core's `distributed` cargo feature (on by
//! default); without it, `disabled.rs` stands in, and a run on several devices or nodes fails
//! with an error naming the feature. What follows works either way.

#[cfg(not(feature = "distributed"))]
mod disabled;
#[cfg(feature = "distributed")]
mod engine;
#[cfg(feature = "distributed")]
mod fsdp;
#[cfg(not(feature = "distributed"))]
pub use disabled::finish_distributed;
#[cfg(not(feature = "distributed"))]
pub(crate) use disabled::Fsdp;
#[cfg(not(feature = "distributed"))]
pub(crate) use disabled::{Ddp, World};
#[cfg(feature = "distributed")]
pub use engine::finish_distributed;
#[cfg(feature = "distributed")]
pub(crate) use engine::{Ddp, World};
#[cfg(feature = "distributed")]
pub(crate) use fsdp::Fsdp;

use crate::error::Result;

/// Runs an [`crate::layers::FsdpUnit`]'s `forward` under this thread's FSDP step, if one is
/// running (gathering the unit's parameters around it); else just `forward`.
pub(crate) fn around_fsdp_unit(id: u64, forward: impl FnOnce() -> tch::Tensor) -> tch::Tensor {
    #[cfg(feature = "distributed")]
    {
        fsdp::around_unit(id, forward)
    }
    #[cfg(not(feature = "distributed"))]
    {
        let _ = id;
        forward()
    }
}

/// Whether this process writes files (checkpoints, logs): global rank 0 of a DDP job, or the
/// only process.
pub(crate) fn writes_files(world: Option<&World>) -> bool {
    world.is_none_or(|w| w.env.is_global_zero())
}

/// A checkpoint save as every save goes under DDP: only the writing rank builds and writes the
/// file (`wait`: until it is durable; else an async save may still be in flight), then every
/// rank meets at a barrier. Without DDP, just the save.
///
/// Under FSDP every rank builds the checkpoint (its shards) and [`Fsdp::save`] writes it as
/// its `state_dict_type` says (async too: each rank's writer thread writes its file).
pub(crate) fn save_on_rank_zero(
    world: Option<&World>,
    fsdp: Option<&Fsdp>,
    saver: &mut super::saver::Saver,
    path: &std::path::Path,
    wait: bool,
    ckpt: impl FnOnce() -> crate::value::Value,
) -> Result<()> {
    if let Some(f) = fsdp {
        return f.save(path, ckpt(), saver, wait);
    }
    if writes_files(world) {
        saver.save(path, ckpt())?;
        if wait {
            saver.wait()?;
        }
    }
    match world {
        Some(w) => w.barrier("save_checkpoint"),
        None => Ok(()),
    }
}
