//! The progress bar: one bar per epoch with the loss (and `prog_bar` metrics) and it/s,
//! drawn only when enabled and stdout is a terminal.

use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A possibly hidden progress bar.
pub(crate) struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar of `len` steps titled `title`; hidden unless `enabled` and stdout is a terminal.
    pub fn new(enabled: bool, len: usize, title: String) -> Self {
        if !enabled || !Self::drawn() {
            return Bar(None);
        }
        let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{prefix} {bar:30} {pos}/{len} [{elapsed}<{eta}, {per_sec}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        pb.set_style(style);
        pb.set_prefix(title);
        Bar(Some(pb))
    }

    /// Whether bars are drawn at all: stdout is a terminal.
    pub fn drawn() -> bool {
        std::io::stdout().is_terminal()
    }

    /// Advances one step and shows `metrics`.
    pub fn step(&self, metrics: &IndexMap<String, f64>) {
        if let Some(pb) = &self.0 {
            pb.inc(1);
            pb.set_message(
                metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v:.4}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }

    /// Finishes the bar, leaving it on screen.
    pub fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish();
        }
    }
}
