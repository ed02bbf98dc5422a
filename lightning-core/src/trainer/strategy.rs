//! How many processes train, on what: Lightning's `strategy`, `accelerator`, `devices` and
//! `num_nodes`.

use std::str::FromStr;
use std::time::Duration;

/// A strategy or accelerator name Lightning does not know (or we do not support yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}={given:?} is not supported; expected one of {expected}")]
pub struct StrategyError {
    /// `strategy` or `accelerator`.
    pub what: &'static str,
    /// What was given.
    pub given: String,
    /// The accepted names.
    pub expected: &'static str,
}

impl From<std::convert::Infallible> for StrategyError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

/// The options of `strategy="ddp"` (`DDPStrategy`'s).
#[derive(Clone, Debug, PartialEq)]
pub struct DdpOptions {
    /// Mark parameters the forward did not use as ready (costs a graph walk per step).
    pub find_unused_parameters: bool,
    /// Gradient bucket cap in MiB (`None`: DDP's 25 MiB with a 1 MiB first bucket).
    pub bucket_cap_mb: Option<f64>,
    /// How long a collective (or the rendezvous) may wait for the other ranks before it fails
    /// with an error naming the operation (Lightning's default: 30 minutes).
    pub timeout: Duration,
}

impl Default for DdpOptions {
    fn default() -> Self {
        DdpOptions {
            find_unused_parameters: false,
            bucket_cap_mb: None,
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// How FSDP shards (Lightning's and torch's `sharding_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShardingStrategy {
    /// Parameters, gradients and optimizer state sharded; parameters gathered for the forward
    /// and backward, then freed.
    #[default]
    FullShard,
    /// As `FullShard` here: the whole model is one FSDP unit, so the gathered parameters live
    /// from the forward through the backward either way.
    ShardGradOp,
    /// Nothing sharded: every rank holds everything and gradients are all-reduced (DDP).
    NoShard,
}

/// What an FSDP checkpoint holds (Lightning's `state_dict_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateDictType {
    /// The whole state gathered, one ordinary `.ckpt` written by global rank 0 (Lightning's
    /// default).
    #[default]
    Full,
    /// Lightning's sharded layout: a directory with a `torch.distributed.checkpoint` part,
    /// one file per rank written in parallel, and `meta.pt`.
    Sharded,
}

impl FromStr for StateDictType {
    type Err = StrategyError;

    /// `"full"` or `"sharded"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(StateDictType::Full),
            "sharded" => Ok(StateDictType::Sharded),
            other => Err(StrategyError {
                what: "state_dict_type",
                given: other.to_owned(),
                expected: "\"full\", \"sharded\"",
            }),
        }
    }
}

/// The options of `strategy="fsdp"` (`FSDPStrategy`'s).
///
/// The wrap policy (`FSDPStrategy(auto_wrap_policy=...)`, FSDP2's `fully_shard` per
/// submodule) is where the module puts [`crate::layers::FsdpUnit`]s: each one is gathered
/// only around its own forward and backward, the rest (the root) for the whole step. A module
/// without units is one unit.
#[derive(Clone, Debug, PartialEq)]
pub struct FsdpOptions {
    /// What is sharded (`ShardGradOp` keeps a unit gathered from its forward to the end of
    /// its backward; `FullShard` shards it again after its forward and gathers it again
    /// before its backward).
    pub sharding_strategy: ShardingStrategy,
    /// What checkpoints hold.
    pub state_dict_type: StateDictType,
    /// How long a collective may wait for the other ranks (30 minutes by default).
    pub timeout: Duration,
}

impl Default for FsdpOptions {
    fn default() -> Self {
        FsdpOptions {
            sharding_strategy: ShardingStrategy::FullShard,
            state_dict_type: StateDictType::Full,
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Lightning's `Trainer(strategy=...)`.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Strategy {
    /// One process (`"auto"` with one device).
    #[default]
    Auto,
    /// Distributed data parallel: one process per device, gradients averaged by c10d's
    /// reducer, one checkpoint written by global rank 0.
    Ddp(DdpOptions),
    /// Fully sharded data parallel: one process per device, each holding 1/W of the
    /// parameters, gradients and optimizer state at rest.
    Fsdp(FsdpOptions),
}

impl FromStr for Strategy {
    type Err = StrategyError;

    /// `"auto"`, `"ddp"`, `"ddp_find_unused_parameters_true"` (Lightning's names).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "single_device" => Ok(Strategy::Auto),
            "ddp" => Ok(Strategy::Ddp(DdpOptions::default())),
            "fsdp" => Ok(Strategy::Fsdp(FsdpOptions::default())),
            "ddp_find_unused_parameters_true" => Ok(Strategy::Ddp(DdpOptions {
                find_unused_parameters: true,
                ..DdpOptions::default()
            })),
            other => Err(StrategyError {
                what: "strategy",
                given: other.to_owned(),
                expected: "\"auto\", \"ddp\", \"ddp_find_unused_parameters_true\", \"fsdp\"",
            }),
        }
    }
}

impl TryFrom<&str> for Strategy {
    type Error = StrategyError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Lightning's `Trainer(accelerator=...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accelerator {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA GPUs (device `i` for local rank `i`).
    Cuda,
    /// CUDA when available, else the CPU.
    Auto,
}

impl Accelerator {
    /// `Auto` resolved for this machine.
    pub fn resolve(self) -> Accelerator {
        match self {
            Accelerator::Auto if tch::Cuda::is_available() => Accelerator::Cuda,
            Accelerator::Auto => Accelerator::Cpu,
            a => a,
        }
    }
}

impl FromStr for Accelerator {
    type Err = StrategyError;

    /// `"cpu"`, `"cuda"` (also `"gpu"`), `"auto"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Accelerator::Cpu),
            "cuda" | "gpu" => Ok(Accelerator::Cuda),
            "auto" => Ok(Accelerator::Auto),
            other => Err(StrategyError {
                what: "accelerator",
                given: other.to_owned(),
                expected: "\"cpu\", \"cuda\", \"gpu\", \"auto\"",
            }),
        }
    }
}

impl TryFrom<&str> for Accelerator {
    type Error = StrategyError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lightnings_names_parse() {
        assert_eq!(
            "ddp".parse::<Strategy>(),
            Ok(Strategy::Ddp(DdpOptions::default()))
        );
        assert!(matches!(
            "ddp_find_unused_parameters_true".parse::<Strategy>(),
            Ok(Strategy::Ddp(DdpOptions {
                find_unused_parameters: true,
                ..
            }))
        ));
        assert_eq!(
            "fsdp".parse::<Strategy>(),
            Ok(Strategy::Fsdp(FsdpOptions::default()))
        );
        let e = "deepspeed".parse::<Strategy>().unwrap_err().to_string();
        assert!(
            e.contains("strategy=\"deepspeed\"") && e.contains("\"fsdp\""),
            "{e}"
        );
        assert_eq!("sharded".parse(), Ok(StateDictType::Sharded));
        assert!("local".parse::<StateDictType>().is_err());
        assert_eq!("gpu".parse::<Accelerator>(), Ok(Accelerator::Cuda));
        assert!("tpu".parse::<Accelerator>().is_err());
    }
}
