//! The launcher's environment (torchrun's variables) and the store it implies.

use std::time::Duration;

use crate::error::{DistError, Result};
use crate::store::{Store, StoreOptions};

/// Where this process sits in a run, as torchrun (or any launcher) describes it in `RANK`,
/// `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` and
/// `TORCHELASTIC_USE_AGENT_STORE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this node (`LOCAL_RANK`; the global rank when unset).
    pub local_rank: usize,
    /// The store's host (`MASTER_ADDR`).
    pub master_addr: String,
    /// The store's port (`MASTER_PORT`).
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: the launcher's agent hosts the store and every
    /// rank, rank 0 too, joins as a client.
    pub use_agent_store: bool,
}

fn var(name: &'static str) -> Result<String> {
    std::env::var(name).map_err(|e| DistError::Env {
        name,
        message: e.to_string(),
    })
}

fn parse<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| DistError::Env {
        name,
        message: format!("{value:?}: {e}"),
    })
}

impl DistEnv {
    /// Reads the launcher's variables.
    pub fn from_env() -> Result<Self> {
        let rank = parse("RANK", &var("RANK")?)?;
        let world_size: usize = parse("WORLD_SIZE", &var("WORLD_SIZE")?)?;
        if rank >= world_size {
            return Err(DistError::Env {
                name: "RANK",
                message: format!("rank {rank} is not below WORLD_SIZE {world_size}"),
            });
        }
        let local_rank = match std::env::var("LOCAL_RANK") {
            Ok(v) => parse("LOCAL_RANK", &v)?,
            Err(_) => rank,
        };
        Ok(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr: var("MASTER_ADDR")?,
            master_port: parse("MASTER_PORT", &var("MASTER_PORT")?)?,
            use_agent_store: std::env::var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Ok("True"),
        })
    }

    /// Connects to the run's store as c10d's `env://` rendezvous does: rank 0 hosts it and
    /// waits for all `world_size` ranks to join, the others connect, unless an agent hosts it
    /// (then every rank is a client).
    pub fn store(&self, timeout: Duration) -> Result<Store> {
        let is_server = self.rank == 0 && !self.use_agent_store;
        Store::tcp(&StoreOptions {
            world_size: (!self.use_agent_store).then_some(self.world_size),
            is_server,
            wait_for_workers: true,
            timeout,
            ..StoreOptions::new(self.master_addr.clone(), self.master_port)
        })
    }
}
