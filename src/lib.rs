//! Support shared by the workspace's examples and integration tests (not a public API):
//! finding the project's Python (the venv scripts/setup.sh creates) to compare with PyTorch,
//! and running the tests' child processes (`src/bin/test-child`) under a time limit.

mod child;

pub use child::Supervised;

use std::path::PathBuf;
use std::process::Command;

/// The venv's Python, from `LIGHTNING_RS_PYTHON` (set by `.cargo/config.toml`), if it exists.
pub fn python() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("LIGHTNING_RS_PYTHON")?);
    p.exists().then_some(p)
}

/// Runs a Python snippet with the venv's Python and returns its stdout.
///
/// Errors (with stderr) when the script fails; `None` when there is no Python venv.
pub fn run_python(script: &str, args: &[&str]) -> Option<Result<String, String>> {
    let py = python()?;
    let out = match Command::new(py).arg("-c").arg(script).args(args).output() {
        Ok(o) => o,
        Err(e) => return Some(Err(format!("could not start python: {e}"))),
    };
    Some(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "python failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}
