//! [`CallbackError`]: what the built-in callbacks report. Its own file, below the crate's
//! [`Error`](crate::Error) that wraps it.

use crate::checkpoint::error::CheckpointError;
use crate::pyfmt;

/// Errors from callbacks: bad configuration, a monitored metric that was never logged, a bad
/// filename template, a file operation, or a malformed saved state.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// A callback option has an invalid value (the message names the option, as Lightning's).
    #[error("{0}")]
    Config(String),
    /// `ModelCheckpoint(monitor=..)` found no such metric (Lightning's wording).
    #[error(
        "`ModelCheckpoint(monitor={})` could not find the monitored key in the returned metrics: {}. \
         HINT: Did you call `log({}, value)` in the `LightningModule`?",
        pyfmt::repr_str(monitor),
        keys_repr(keys),
        pyfmt::repr_str(monitor)
    )]
    MonitorNotFound {
        /// The monitored key.
        monitor: String,
        /// The keys that were available.
        keys: Vec<String>,
    },
    /// `EarlyStopping(monitor=..)` found no such metric (Lightning's wording).
    #[error(
        "Early stopping conditioned on metric `{monitor}` which is not available. Pass in or \
         modify your `EarlyStopping` callback to use any of the following: `{}`",
        keys.join("`, `")
    )]
    EarlyStoppingMetricNotFound {
        /// The monitored key.
        monitor: String,
        /// The keys that were available.
        keys: Vec<String>,
    },
    /// A checkpoint filename template could not be rendered.
    #[error("ModelCheckpoint filename template {template:?}: {msg}")]
    Template {
        /// The template.
        template: String,
        /// What Python's `str.format` would have raised.
        msg: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a checkpoint file (the copy standing in for a `last` link) failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A saved callback state has a missing or mistyped entry.
    #[error("callback state {state_key}: key {key:?}: {msg}")]
    State {
        /// The callback's state key.
        state_key: String,
        /// The entry.
        key: String,
        /// What was expected and found.
        msg: String,
    },
}

/// Python's `repr(list_of_str)`.
fn keys_repr(keys: &[String]) -> String {
    let items: Vec<String> = keys.iter().map(|k| pyfmt::repr_str(k)).collect();
    format!("[{}]", items.join(", "))
}
