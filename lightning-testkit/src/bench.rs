//! The command line every bench binary shares: cargo's own arguments. `cargo bench` passes
//! `--bench` (the full measurement); `cargo test --all-targets` runs a bench binary without
//! it (a smoke run); a benchmark name filter may follow.

/// Cargo's arguments to a bench binary, flattened into each bench's `clap` parser.
#[derive(clap::Args, Debug, Clone)]
pub struct CargoArgs {
    /// Run the full measurement (`cargo bench` passes it); without it, a quick smoke run.
    #[arg(long)]
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
