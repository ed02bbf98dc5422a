//! A child process with a time limit: a watchdog kills it (SIGKILL) when it runs past the
//! limit, so a hung child fails its test instead of hanging it.

use std::io::Read;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A spawned child under a watchdog. Waiting and signalling go through one lock on the
/// `Child`, so a signal is never sent to a pid that was already reaped (and maybe reused).
pub struct Supervised {
    child: Arc<Mutex<Child>>,
    /// Set (and notified) once the child was reaped: the watchdog stops.
    done: Arc<(Mutex<bool>, Condvar)>,
    timed_out: Arc<AtomicBool>,
    watchdog: Option<JoinHandle<()>>,
    limit: Duration,
    what: String,
    /// The child's stdout, when piped (take it to stream lines).
    pub stdout: Option<ChildStdout>,
    /// The child's stderr, when piped.
    pub stderr: Option<ChildStderr>,
}

impl Supervised {
    /// Spawns `cmd`; it is killed if it has not exited `limit` after this call.
    ///
    /// # Panics
    /// When the command cannot be started.
    pub fn spawn(cmd: &mut Command, limit: Duration) -> Supervised {
        let what = format!(
            "{:?} {:?}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>()
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let child = Arc::new(Mutex::new(child));
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let timed_out = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (child, done, timed_out) = (child.clone(), done.clone(), timed_out.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + limit;
                let (lock, cv) = &*done;
                let mut finished = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*finished {
                    let now = Instant::now();
                    if now >= deadline {
                        let mut c = child.lock().unwrap_or_else(|e| e.into_inner());
                        if matches!(c.try_wait(), Ok(None)) {
                            timed_out.store(true, Ordering::SeqCst);
                            let _ = c.kill();
                        }
                        return;
                    }
                    finished = cv
                        .wait_timeout(finished, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })
        };
        Supervised {
            child,
            done,
            timed_out,
            watchdog: Some(watchdog),
            limit,
            what,
            stdout,
            stderr,
        }
    }

    /// Sends `signal` to the child unless it has already exited; returns whether it was sent.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(c.try_wait(), Ok(None)) {
            return false;
        }
        // SAFETY: kill(2) on our own child, which the lock keeps from being reaped meanwhile.
        unsafe { libc::kill(c.id() as libc::pid_t, signal) == 0 }
    }

    /// Waits for the child to exit.
    ///
    /// # Panics
    /// When the watchdog killed it (it ran past the limit).
    pub fn wait(mut self) -> ExitStatus {
        let status = self.reap();
        self.check_timeout("");
        status
    }

    /// Waits for the child, collecting the piped stdout and stderr not taken before.
    ///
    /// # Panics
    /// When the watchdog killed it (it ran past the limit); the message has its output.
    pub fn wait_with_output(mut self) -> Output {
        fn drain<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        }
        let out = drain(self.stdout.take());
        let err = drain(self.stderr.take());
        let status = self.reap();
        let output = Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        };
        self.check_timeout(&format!(
            "; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
        output
    }

    fn reap(&mut self) -> ExitStatus {
        let status = loop {
            match self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
            {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        status
    }

    fn check_timeout(&self, details: &str) {
        assert!(
            !self.timed_out.load(Ordering::SeqCst),
            "child {} ran past its {:?} limit and was killed{details}",
            self.what,
            self.limit
        );
    }
}

impl Drop for Supervised {
    /// A child dropped unwaited (its test panicked) is killed and reaped, not left running.
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
            drop(c);
            let (lock, cv) = &*self.done;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        }
    }
}
