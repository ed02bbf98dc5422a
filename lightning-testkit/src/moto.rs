//! A local S3 API server for tests and benches: `moto_server` from the project's venv
//! (`scripts/setup.sh` installs `moto[server]`), on 127.0.0.1 at a free port, killed on drop.
//! A missing one follows the Python rule: under `LIGHTNING_RS_REQUIRE_PYTHON` it fails,
//! elsewhere [`Moto::start`] prints why and returns `None`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lightning_core::storage::RETRIES_ENV;

/// A `moto_server` on 127.0.0.1 (a free port), killed on drop.
pub struct Moto {
    proc: Option<crate::Supervised>,
    port: u16,
}

impl Moto {
    /// Starts one (with signature checks when `auth`), or says why not (`None`: skipped).
    pub fn start(auth: bool) -> Option<Moto> {
        let python = crate::python()?;
        let bin = python.with_file_name("moto_server");
        if !bin.exists() {
            let why = format!(
                "{} is missing: scripts/setup.sh installs moto[server] into the venv",
                bin.display()
            );
            let required =
                std::env::var_os(crate::REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
            assert!(!required, "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        // The server dies with the thread that started it, even when this process is killed
        // before `Drop` runs: no server is ever left behind.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let proc = crate::Supervised::spawn(&mut cmd, Duration::from_secs(600));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Moto {
            proc: Some(proc),
            port,
        })
    }

    /// [`Moto::start`] for a server shared by a whole test binary (kept in a `static`, so its
    /// `Drop` never runs): it is started from a thread that never ends, so it lives exactly as
    /// long as this process (the parent-death signal fires when the process exits).
    pub fn start_for_process(auth: bool) -> Option<Moto> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(|| Moto::start(auth)));
            loop {
                std::thread::park();
            }
        });
        match rx.recv() {
            Ok(Ok(m)) => m,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the thread starting moto_server ended"),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment object_store reads to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            (RETRIES_ENV, "1".into()),
        ]
    }

    /// A plain HTTP request (moto accepts unsigned ones unless `auth`); returns the body.
    pub fn http(&self, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("moto is up");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    pub fn create_bucket(&self, bucket: &str) {
        let r = self.http("PUT", &format!("/{bucket}"));
        assert!(r.starts_with("HTTP/1.1 200"), "creating {bucket}: {r}");
    }

    /// Multipart uploads in progress in `bucket` (started, neither completed nor aborted).
    pub fn uploads_in_progress(&self, bucket: &str) -> usize {
        self.http("GET", &format!("/{bucket}?uploads"))
            .matches("<UploadId>")
            .count()
    }

    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            p.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}
