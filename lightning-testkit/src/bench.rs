//! The command line every bench binary shares: cargo's own arguments. `cargo bench` passes
//! `--bench` (the full measurement); `cargo test --all-targets` runs a bench binary without
//! it (a smoke run); a benchmark name filter may follow.

/// Cargo's arguments to a bench binary, flattened into each bench's `clap` parser.
#[derive(clap::Args, Debug, Clone)]
pub struct CargoArgs {
    /// Run the full measurement (`cargo bench` passes it); without it, a quick smoke run.
    /// (Given twice by `cargo bench -- --bench`, as the README's commands do: accepted.)
    #[arg(long, overrides_with = "bench")]
    pub bench: bool,
    /// Accepted for cargo and libtest compatibility; ignored.
    #[arg(long, hide = true)]
    pub nocapture: bool,
    /// Accepted for cargo and libtest compatibility; ignored.
    #[arg(long, hide = true)]
    pub test: bool,
    /// A benchmark name filter from cargo: ignored.
    #[arg(hide = true)]
    pub filter: Vec<String>,
}

/// A positive count (`--rounds 3`): clap's parser for `T` from 1 up.
pub fn positive<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::fmt::Display + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::<T>::new().range(1..)
}

/// Runs a bench's Python anchor (`cmd`, its output piped) under `limit`, without the
/// distributed variables of this process (a launcher's rank, world size and port): its
/// output, or why not (killed at the limit, or a failure with the tail of its stderr).
pub fn run_anchor(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> Result<std::process::Output, String> {
    for v in [
        "MASTER_PORT",
        "MASTER_ADDR",
        "LOCAL_RANK",
        "RANK",
        "WORLD_SIZE",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("OMP_NUM_THREADS", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = crate::Supervised::spawn(cmd, limit);
    let output =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child.wait_with_output()))
            .map_err(|_| format!("killed after {limit:?}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!(
            "python failed ({}):\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(output)
}
