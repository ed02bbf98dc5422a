//! Lightning's subprocess launcher: rank 0 re-runs the same binary with the same arguments for
//! the other local ranks, each with its ranks and the rendezvous address in the environment,
//! and watches them: the job fails when any rank fails, and no child outlives the launcher.

use lightning_dist::ClusterEnv;
use std::ffi::OsString;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Starting or watching the local ranks failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A local rank could not be started.
    #[error("starting local rank {local_rank} ({program}): {source}")]
    Spawn {
        /// The rank.
        local_rank: usize,
        /// The program that was run.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No free port for the rendezvous.
    #[error("finding a free port for the rendezvous on {addr}: {source}")]
    Port {
        /// The address tried.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A rank exited with an error (or was killed).
    #[error("rank {rank} (local rank {local_rank}) failed: {status}")]
    RankFailed {
        /// Its global rank.
        rank: usize,
        /// Its local rank.
        local_rank: usize,
        /// How it ended.
        status: ExitStatus,
    },
    /// Ranks were still running when the wait ran out; they were killed.
    #[error("local ranks {ranks:?} still running after {timeout:?}; killed")]
    Timeout {
        /// The local ranks still running.
        ranks: Vec<usize>,
        /// How long the launcher waited.
        timeout: Duration,
    },
}

/// A free TCP port on `addr` (bound then released, as Lightning's `find_free_network_port`).
pub fn free_port(addr: &str) -> Result<u16, LaunchError> {
    TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| LaunchError::Port {
            addr: addr.to_owned(),
            source,
        })
}

/// The local ranks 1.. this process started.
#[derive(Debug)]
pub struct LocalLaunch {
    env: ClusterEnv,
    children: Vec<(usize, Child)>,
    /// The rendezvous port every rank uses.
    pub port: u16,
}

impl LocalLaunch {
    /// Starts local ranks `1..local_world_size` as this binary with this process's
    /// arguments (picking a free rendezvous port when `MASTER_PORT` was not given).
    pub fn start(env: &ClusterEnv) -> Result<LocalLaunch, LaunchError> {
        let program = std::env::current_exe().map_err(|source| LaunchError::Spawn {
            local_rank: 1,
            program: "<current executable>".into(),
            source,
        })?;
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        Self::start_with(env, program.as_os_str(), &args)
    }

    /// [`LocalLaunch::start`] with the program and arguments given.
    pub fn start_with(
        env: &ClusterEnv,
        program: &std::ffi::OsStr,
        args: &[OsString],
    ) -> Result<LocalLaunch, LaunchError> {
        let port = match env.master_port {
            Some(p) => p,
            None => free_port(&env.master_addr)?,
        };
        let mut launch = LocalLaunch {
            env: env.clone(),
            children: Vec::new(),
            port,
        };
        for local_rank in 1..env.local_world_size {
            let child = Command::new(program)
                .args(args)
                .envs(env.child_vars(local_rank, port))
                .spawn()
                .map_err(|source| LaunchError::Spawn {
                    local_rank,
                    program: program.to_string_lossy().into_owned(),
                    source,
                })?;
            launch.children.push((local_rank, child));
        }
        Ok(launch)
    }

    fn rank_of(&self, local_rank: usize) -> usize {
        self.env.node_rank * self.env.local_world_size + local_rank
    }

    /// The first local rank that already ended with an error, without blocking.
    pub fn failed(&mut self) -> Option<LaunchError> {
        let mut failed = None;
        for (local_rank, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait()
                && !status.success()
            {
                failed = Some((*local_rank, status));
                break;
            }
        }
        failed.map(|(local_rank, status)| LaunchError::RankFailed {
            rank: self.rank_of(local_rank),
            local_rank,
            status,
        })
    }

    /// Waits (at most `timeout`) for every local rank to end; the first failure is the error,
    /// and ranks still running past the timeout, or after another failed, are killed.
    pub fn wait(mut self, timeout: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        let mut result = Ok(());
        while !self.children.is_empty() {
            let mut i = 0;
            while i < self.children.len() {
                match self.children[i].1.try_wait() {
                    Ok(Some(status)) => {
                        let (local_rank, _) = self.children.remove(i);
                        if !status.success() && result.is_ok() {
                            result = Err(LaunchError::RankFailed {
                                rank: self.rank_of(local_rank),
                                local_rank,
                                status,
                            });
                            self.kill_all();
                        }
                    }
                    _ => i += 1,
                }
            }
            if self.children.is_empty() {
                break;
            }
            if start.elapsed() > timeout {
                let ranks = self.children.iter().map(|(r, _)| *r).collect();
                self.kill_all();
                return result.and(Err(LaunchError::Timeout { ranks, timeout }));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        result
    }

    /// Kills every local rank still running (and reaps it).
    pub fn kill_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalLaunch {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightning_dist::Env;

    fn sh(script: &str) -> (OsString, Vec<OsString>) {
        ("/bin/sh".into(), vec!["-c".into(), script.into()])
    }

    #[test]
    fn children_get_their_ranks_and_failures_name_the_rank() {
        let env = ClusterEnv::detect(&Env::new(), 3, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let (p, a) = sh(&format!(
            "echo $RANK $LOCAL_RANK $WORLD_SIZE $MASTER_PORT > {out}/r$LOCAL_RANK"
        ));
        let l = LocalLaunch::start_with(&env, &p, &a).unwrap();
        let port = l.port;
        l.wait(Duration::from_secs(20)).unwrap();
        for r in [1, 2] {
            let got = std::fs::read_to_string(dir.path().join(format!("r{r}"))).unwrap();
            assert_eq!(got.trim(), format!("{r} {r} 3 {port}"));
        }
        let (p, a) = sh("[ \"$LOCAL_RANK\" = 2 ] && exit 3; sleep 30");
        let l = LocalLaunch::start_with(&env, &p, &a).unwrap();
        let t = Instant::now();
        let e = l.wait(Duration::from_secs(20)).unwrap_err();
        assert!(
            matches!(
                e,
                LaunchError::RankFailed {
                    rank: 2,
                    local_rank: 2,
                    ..
                }
            ),
            "{e}"
        );
        // the other rank (sleeping) was killed rather than waited for
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_hanging_rank_is_killed_at_the_timeout() {
        let env = ClusterEnv::detect(&Env::new(), 2, 1).unwrap();
        let (p, a) = sh("sleep 30");
        let l = LocalLaunch::start_with(&env, &p, &a).unwrap();
        let e = l.wait(Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(e, LaunchError::Timeout { ref ranks, .. } if ranks == &[1]),
            "{e}"
        );
    }
}
