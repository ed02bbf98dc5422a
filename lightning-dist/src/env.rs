//! Where this process sits in a distributed job: its ranks, the world, and the rendezvous
//! address, read from the environment as Lightning's cluster environments read it
//! (`TorchElasticEnvironment` for `torchrun`, `SLURMEnvironment`, and `LightningEnvironment`
//! for processes a launcher started with `LOCAL_RANK`). The store that address implies is
//! [`ClusterEnv::store`], next to [`crate::Store`] (this module knows nothing of c10d).

use std::collections::HashMap;

/// Who set up the ranks of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// No launcher yet: this process is rank 0 and starts the other local ranks itself
    /// (Lightning's subprocess launcher).
    Local,
    /// A process our launcher started (`LOCAL_RANK` set by rank 0).
    Launched,
    /// `torchrun` / torch elastic; with `agent_store` every rank, rank 0 too, is a client of
    /// the store the agent hosts (`TORCHELASTIC_USE_AGENT_STORE=True`).
    TorchElastic {
        /// Whether the elastic agent hosts the rendezvous store.
        agent_store: bool,
    },
    /// A SLURM job step (`srun`): one task per process.
    Slurm,
}

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEnv {
    /// Who started the ranks.
    pub kind: ClusterKind,
    /// Global rank (0..world_size).
    pub rank: usize,
    /// Rank on this node (0..local_world_size).
    pub local_rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Processes on this node.
    pub local_world_size: usize,
    /// This node's index.
    pub node_rank: usize,
    /// The rendezvous host (rank 0's node).
    pub master_addr: String,
    /// The rendezvous port (`None`: not chosen yet; the local launcher picks a free one).
    pub master_port: Option<u16>,
}

/// A variable that is missing or not what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}: {msg}")]
pub struct EnvError {
    /// The variable.
    pub name: String,
    /// What was wrong.
    pub msg: String,
}

/// The process environment as a map (tests pass their own).
pub type Env = HashMap<String, String>;

fn get<'a>(env: &'a Env, name: &str) -> Option<&'a str> {
    env.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn num(env: &Env, name: &str) -> Result<Option<usize>, EnvError> {
    get(env, name)
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| EnvError {
                name: name.to_owned(),
                msg: format!("expected a non-negative integer, found {v:?}"),
            })
        })
        .transpose()
}

fn need(env: &Env, name: &str) -> Result<usize, EnvError> {
    num(env, name)?.ok_or_else(|| EnvError {
        name: name.to_owned(),
        msg: "not set".into(),
    })
}

fn port(env: &Env, name: &str) -> Result<Option<u16>, EnvError> {
    get(env, name)
        .map(|v| {
            v.trim().parse::<u16>().map_err(|_| EnvError {
                name: name.to_owned(),
                msg: format!("expected a port number, found {v:?}"),
            })
        })
        .transpose()
}

/// The first host of a SLURM node list (`node[003-005,7],other` -> `node003`), as
/// Lightning's `SLURMEnvironment.resolve_root_node_address`.
pub fn first_slurm_host(nodelist: &str) -> String {
    let first_group = {
        // split at the first comma outside brackets
        let mut depth = 0;
        let mut end = nodelist.len();
        for (i, c) in nodelist.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        &nodelist[..end]
    };
    match first_group.split_once('[') {
        None => first_group.trim().to_owned(),
        Some((prefix, rest)) => {
            let first = rest
                .trim_end_matches(']')
                .split([',', '-'])
                .next()
                .unwrap_or("");
            format!("{prefix}{first}")
        }
    }
}

impl ClusterEnv {
    /// Reads this process's place from `env`, for a job of `devices` processes per node on
    /// `num_nodes` nodes. A torchrun or SLURM environment wins (its sizes must agree with
    /// `devices`/`num_nodes`); a `LOCAL_RANK` set by our launcher comes next; else this is
    /// rank 0 of a job it will launch itself.
    pub fn detect(env: &Env, devices: usize, num_nodes: usize) -> Result<ClusterEnv, EnvError> {
        let expected_world = devices * num_nodes;
        let check_world = |world: usize, from: &str| {
            if world == expected_world {
                Ok(())
            } else {
                Err(EnvError {
                    name: from.to_owned(),
                    msg: format!(
                        "says {world} processes, but the trainer was given devices={devices} x \
                         num_nodes={num_nodes} = {expected_world}"
                    ),
                })
            }
        };
        let torchelastic = ["RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"]
            .iter()
            .all(|k| get(env, k).is_some());
        if torchelastic {
            let world = need(env, "WORLD_SIZE")?;
            check_world(world, "WORLD_SIZE")?;
            return Ok(ClusterEnv {
                kind: ClusterKind::TorchElastic {
                    agent_store: get(env, "TORCHELASTIC_USE_AGENT_STORE")
                        .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                },
                rank: need(env, "RANK")?,
                local_rank: need(env, "LOCAL_RANK")?,
                world_size: world,
                local_world_size: need(env, "LOCAL_WORLD_SIZE")?,
                node_rank: need(env, "GROUP_RANK")?,
                master_addr: get(env, "MASTER_ADDR").unwrap_or("127.0.0.1").to_owned(),
                master_port: port(env, "MASTER_PORT")?,
            });
        }
        // Lightning skips SLURM for interactive jobs (`SLURM_JOB_NAME` in {bash, interactive})
        let interactive = matches!(get(env, "SLURM_JOB_NAME"), Some("bash" | "interactive"));
        if get(env, "SLURM_NTASKS").is_some() && !interactive {
            let world = need(env, "SLURM_NTASKS")?;
            check_world(world, "SLURM_NTASKS")?;
            let host = get(env, "MASTER_ADDR")
                .map(str::to_owned)
                .or_else(|| get(env, "SLURM_NODELIST").map(first_slurm_host))
                .unwrap_or_else(|| "127.0.0.1".into());
            // Lightning's default port for SLURM: 10000 + the last 4 digits of the job id
            let port = match port(env, "MASTER_PORT")? {
                Some(p) => Some(p),
                None => get(env, "SLURM_JOB_ID")
                    .and_then(|id| id.parse::<u64>().ok())
                    .map(|id| 10000 + (id % 10000) as u16),
            };
            return Ok(ClusterEnv {
                kind: ClusterKind::Slurm,
                rank: need(env, "SLURM_PROCID")?,
                local_rank: need(env, "SLURM_LOCALID")?,
                world_size: world,
                local_world_size: devices,
                node_rank: need(env, "SLURM_NODEID")?,
                master_addr: host,
                master_port: port,
            });
        }
        let node_rank = num(env, "NODE_RANK")?.unwrap_or(0);
        let master_addr = get(env, "MASTER_ADDR").unwrap_or("127.0.0.1").to_owned();
        let master_port = port(env, "MASTER_PORT")?;
        if let Some(local_rank) = num(env, "LOCAL_RANK")? {
            if local_rank >= devices {
                return Err(EnvError {
                    name: "LOCAL_RANK".into(),
                    msg: format!("{local_rank} is not below devices={devices}"),
                });
            }
            return Ok(ClusterEnv {
                kind: ClusterKind::Launched,
                rank: node_rank * devices + local_rank,
                local_rank,
                world_size: expected_world,
                local_world_size: devices,
                node_rank,
                master_addr,
                master_port,
            });
        }
        Ok(ClusterEnv {
            kind: ClusterKind::Local,
            rank: node_rank * devices,
            local_rank: 0,
            world_size: expected_world,
            local_world_size: devices,
            node_rank,
            master_addr,
            master_port,
        })
    }

    /// The current process's environment.
    pub fn from_process(devices: usize, num_nodes: usize) -> Result<ClusterEnv, EnvError> {
        Self::detect(&std::env::vars().collect(), devices, num_nodes)
    }

    /// Whether this is global rank 0 (the only one that writes checkpoints and logs).
    pub fn is_global_zero(&self) -> bool {
        self.rank == 0
    }

    /// Whether this process must start the other local ranks (Lightning's subprocess
    /// launcher runs on local rank 0 when nothing else launched the job).
    pub fn must_launch(&self) -> bool {
        self.kind == ClusterKind::Local && self.local_world_size > 1
    }

    /// The variables a launched local rank gets (Lightning's names, plus `RANK` and
    /// `LOCAL_WORLD_SIZE` as torchrun sets them).
    pub fn child_vars(&self, local_rank: usize, port: u16) -> Vec<(String, String)> {
        let rank = self.node_rank * self.local_world_size + local_rank;
        [
            ("RANK", rank.to_string()),
            ("LOCAL_RANK", local_rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
            ("NODE_RANK", self.node_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_plain_process_is_rank_zero_and_launches_the_rest() {
        let c = ClusterEnv::detect(&env(&[]), 2, 1).unwrap();
        assert_eq!(c.kind, ClusterKind::Local);
        assert_eq!((c.rank, c.world_size, c.local_world_size), (0, 2, 2));
        assert!(c.must_launch() && c.is_global_zero());
        let vars = c.child_vars(1, 29500);
        assert!(vars.contains(&("RANK".into(), "1".into())));
        assert!(vars.contains(&("LOCAL_RANK".into(), "1".into())));
        assert!(vars.contains(&("MASTER_PORT".into(), "29500".into())));
        let single = ClusterEnv::detect(&env(&[]), 1, 1).unwrap();
        assert!(!single.must_launch());
    }

    #[test]
    fn launched_ranks_and_nodes() {
        let e = env(&[
            ("LOCAL_RANK", "1"),
            ("NODE_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]);
        let c = ClusterEnv::detect(&e, 2, 2).unwrap();
        assert_eq!(c.kind, ClusterKind::Launched);
        assert_eq!(
            (c.rank, c.local_rank, c.node_rank, c.world_size),
            (3, 1, 1, 4)
        );
        assert_eq!(c.master_port, Some(1234));
        let bad = ClusterEnv::detect(&env(&[("LOCAL_RANK", "x")]), 2, 1).unwrap_err();
        assert_eq!(bad.name, "LOCAL_RANK");
    }

    #[test]
    fn torchrun_with_an_agent_store() {
        let e = env(&[
            ("RANK", "3"),
            ("GROUP_RANK", "1"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]);
        let c = ClusterEnv::detect(&e, 2, 2).unwrap();
        assert_eq!(c.kind, ClusterKind::TorchElastic { agent_store: true });
        assert_eq!((c.rank, c.node_rank), (3, 1));
        assert!(!c.must_launch());
        let wrong = ClusterEnv::detect(&e, 4, 2).unwrap_err();
        assert!(
            wrong.to_string().contains("devices=4 x num_nodes=2"),
            "{wrong}"
        );
    }

    #[test]
    fn slurm_tasks_and_the_first_host() {
        let e = env(&[
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODEID", "1"),
            ("SLURM_NODELIST", "gpu[007-008],cpu1"),
            ("SLURM_JOB_ID", "123456"),
        ]);
        let c = ClusterEnv::detect(&e, 2, 2).unwrap();
        assert_eq!(c.kind, ClusterKind::Slurm);
        assert_eq!((c.rank, c.local_rank, c.node_rank), (2, 0, 1));
        assert_eq!(c.master_addr, "gpu007");
        assert_eq!(c.master_port, Some(13456));
        assert_eq!(first_slurm_host("node1"), "node1");
        assert_eq!(first_slurm_host("a[1,3],b"), "a1");
        // an interactive allocation is not a SLURM launch
        let mut i = e.clone();
        i.insert("SLURM_JOB_NAME".into(), "bash".into());
        assert_eq!(
            ClusterEnv::detect(&i, 2, 2).unwrap().kind,
            ClusterKind::Local
        );
    }
}
