//! The one place that decides whether a test that needs Python runs, skips or fails.
//!
//! The rule: a test needing Python calls [`python`] (or [`run_python`]). When
//! `LIGHTNING_RS_PYTHON` names a Python that has torch and lightning, it gets that path.
//! Otherwise, with `LIGHTNING_RS_REQUIRE_PYTHON=1` (scripts/test.sh, and so CI, set it) the
//! test panics with the reason; without it the test prints the reason (`skipped ...`) on
//! stderr and returns without asserting anything.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The Python to compare with (`.cargo/config.toml` sets it to the venv's `.venv/bin/python`).
pub const PYTHON_ENV: &str = "LIGHTNING_RS_PYTHON";
/// When set (to anything but `0` or empty), a missing or unusable Python fails the test.
pub const REQUIRE_ENV: &str = "LIGHTNING_RS_REQUIRE_PYTHON";

/// Asks the interpreter whether torch and lightning are installed. `find_spec` does not
/// import them (importing lightning takes seconds, and this runs once per test binary); a
/// broken install still fails loudly, in the test's own script.
const PROBE: &str = "import importlib.util as u\n\
missing = [m for m in ('torch', 'lightning') if u.find_spec(m) is None]\n\
print('missing: ' + ', '.join(missing) if missing else 'lightning-rs: python ok')";

/// `Ok(path)` when `python` names an interpreter with torch and lightning, else why not.
fn probe(python: Option<OsString>) -> Result<PathBuf, String> {
    let hint = "run scripts/setup.sh; .cargo/config.toml points it at .venv/bin/python";
    let p = match python {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => return Err(format!("{PYTHON_ENV} is not set ({hint})")),
    };
    let shown = format!("{PYTHON_ENV}={}", p.display());
    let out = Command::new(&p)
        .args(["-c", PROBE])
        .output()
        .map_err(|e| format!("{shown} cannot be run: {e} ({hint})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.trim() {
        "lightning-rs: python ok" if out.status.success() => Ok(p),
        s if s.starts_with("missing: ") => Err(format!("{shown} lacks {} ({hint})", &s[9..])),
        _ => Err(format!(
            "{shown} is not a working Python ({}; stderr: {}) ({hint})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The Python for a test that needs one, or `None` after printing why the test is skipped.
///
/// # Panics
/// When there is none and `LIGHTNING_RS_REQUIRE_PYTHON` is set: the test fails instead of
/// passing without checking anything.
pub fn python() -> Option<PathBuf> {
    static PROBED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let probed = PROBED.get_or_init(|| probe(std::env::var_os(PYTHON_ENV)));
    match probed {
        Ok(p) => Some(p.clone()),
        Err(why) if required() => {
            panic!("this test needs Python but {why}; {REQUIRE_ENV} is set, so that is a failure")
        }
        Err(why) => {
            let test = std::thread::current().name().unwrap_or("test").to_owned();
            eprintln!("skipped {test}: {why} (set {REQUIRE_ENV}=1 to make this a failure)");
            None
        }
    }
}

/// For a test whose Python lacks an optional package it needs (the probe checks only torch
/// and lightning): fails the test when `LIGHTNING_RS_REQUIRE_PYTHON` is set, else prints why
/// it is skipped. `why` says what is missing.
///
/// # Panics
/// When Python is required.
pub fn skip_or_fail(why: &str) {
    if required() {
        panic!("this test needs {why}; {REQUIRE_ENV} is set, so that is a failure")
    }
    let test = std::thread::current().name().unwrap_or("test").to_owned();
    eprintln!("skipped {test}: {why} (set {REQUIRE_ENV}=1 to make this a failure)");
}

/// [`run_python`] under a time limit: the interpreter is killed (and the test fails, with
/// its output) when it runs past `limit`.
pub fn run_python_within(
    script: &str,
    args: &[&str],
    limit: std::time::Duration,
) -> Option<Result<String, String>> {
    let py = python()?;
    let mut cmd = Command::new(py);
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = crate::child::Supervised::spawn(&mut cmd, limit).wait_with_output();
    Some(stdout_or_error(&out))
}

/// The script's stdout, or an error with its exit status and stderr.
fn stdout_or_error(out: &std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "python failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs a Python snippet with [`python`] and returns its stdout.
///
/// Errors (with stderr) when the script fails; `None` when the test is skipped (see
/// [`python`], which panics instead when Python is required).
pub fn run_python(script: &str, args: &[&str]) -> Option<Result<String, String>> {
    let py = python()?;
    let out = match Command::new(py).arg("-c").arg(script).args(args).output() {
        Ok(o) => o,
        Err(e) => return Some(Err(format!("could not start python: {e}"))),
    };
    Some(stdout_or_error(&out))
}
