//! The rule for tests that need Python (`lightning_testkit::python`, lightning-testkit/src/python.rs): without a
//! usable `LIGHTNING_RS_PYTHON`, a test fails when `LIGHTNING_RS_REQUIRE_PYTHON=1` and is
//! skipped, saying why, otherwise. Checked on `test-child python-check`, which asks the rule
//! with the environment given here (no Python is started: the names are not interpreters).

use lightning_testkit::{Supervised, PYTHON_ENV, REQUIRE_ENV};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn check(python: &str, require: Option<&str>) -> (Output, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-child"));
    cmd.arg("python-check")
        .env(PYTHON_ENV, python)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match require {
        Some(v) => cmd.env(REQUIRE_ENV, v),
        None => cmd.env_remove(REQUIRE_ENV),
    };
    let out = Supervised::spawn(&mut cmd, Duration::from_secs(30)).wait_with_output();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn a_missing_python_fails_when_required() {
    let (out, stdout, stderr) = check("/nonexistent/lightning-rs/python", Some("1"));
    assert_eq!(
        out.status.code(),
        Some(101),
        "must panic: {stdout} {stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/lightning-rs/python")
            && stderr.contains("cannot be run")
            && stderr.contains(REQUIRE_ENV),
        "the panic names the interpreter, the reason and the rule: {stderr}"
    );
}

#[test]
fn a_program_that_is_not_a_python_with_torch_fails_when_required() {
    // Exists and exits 0, but is no Python with torch and lightning.
    let (out, stdout, stderr) = check("/bin/true", Some("1"));
    assert_eq!(
        out.status.code(),
        Some(101),
        "must panic: {stdout} {stderr}"
    );
    assert!(
        stderr.contains("/bin/true is not a working Python"),
        "{stderr}"
    );
}

#[test]
fn a_missing_python_is_a_reported_skip_otherwise() {
    for require in [None, Some("0"), Some("")] {
        let (out, stdout, stderr) = check("/nonexistent/lightning-rs/python", require);
        assert!(out.status.success(), "{require:?}: {stdout} {stderr}");
        assert_eq!(stdout.trim(), "python: none", "{require:?}");
        assert!(
            stderr.contains("skipped") && stderr.contains("/nonexistent/lightning-rs/python"),
            "{require:?}: the skip says why: {stderr}"
        );
    }
}
