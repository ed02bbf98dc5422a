//! Runs the ranks of a scenario as child processes (`lightning-dist-child`), each under a
//! time limit: a rank still running at the deadline is killed, so no test can hang.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one rank did.
#[derive(Debug)]
pub struct RankRun {
    pub rank: usize,
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RankRun {
    /// The value of the first `key value` line of stdout.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
    }

    /// Panics with the rank's output unless it exited 0.
    pub fn assert_ok(&self) {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "rank {} failed ({}) after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.rank,
            match self.status {
                Some(s) => s.to_string(),
                None => "killed at the time limit".to_owned(),
            },
            self.elapsed,
            self.stdout,
            self.stderr
        );
    }
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The rank binary: the one cargo built, or `LIGHTNING_DIST_CHILD` (a test binary carried to
/// another machine with its child, as `scripts/gpu_check.sh` does).
fn child_binary() -> std::path::PathBuf {
    std::env::var_os("LIGHTNING_DIST_CHILD")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_lightning-dist-child").into())
}

/// Runs `world` ranks of `scenario` against the store at 127.0.0.1:`port`, with `env` added,
/// and returns each rank's result once all have exited or `limit` has passed (the rest are
/// killed).
pub fn run_ranks(
    scenario: &str,
    world: usize,
    port: u16,
    env: &[(&str, &str)],
    limit: Duration,
) -> Vec<RankRun> {
    let started = Instant::now();
    let mut children: Vec<(Child, JoinHandle<String>, JoinHandle<String>)> = (0..world)
        .map(|rank| {
            let mut cmd = Command::new(child_binary());
            cmd.arg(scenario)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawning lightning-dist-child");
            let out = drain(child.stdout.take().expect("piped stdout"));
            let err = drain(child.stderr.take().expect("piped stderr"));
            (child, out, err)
        })
        .collect();
    let mut done: Vec<Option<(ExitStatus, Duration)>> = vec![None; world];
    let deadline = started + limit;
    while done.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, (child, _, _)) in children.iter_mut().enumerate() {
            if done[i].is_none()
                && let Ok(Some(status)) = child.try_wait()
            {
                done[i] = Some((status, started.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    children
        .into_iter()
        .enumerate()
        .map(|(rank, (mut child, out, err))| {
            let (status, elapsed) = match done[rank] {
                Some((s, t)) => (Some(s), t),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    (None, started.elapsed())
                }
            };
            RankRun {
                rank,
                status,
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
                elapsed,
            }
        })
        .collect()
}
