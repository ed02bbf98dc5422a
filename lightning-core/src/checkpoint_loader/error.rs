//! [`LoaderError`]: what `load_from_checkpoint` reports beyond the checkpoint file itself,
//! each naming the file.

use super::map_location::MapLocationError;
use crate::checkpoint::CheckpointError;
use std::path::PathBuf;

/// An error of `M::loader(path)...load()` about its options: the `hparams_file`,
/// `weights_only=false`, `map_location`.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The `hparams_file` has an extension Lightning does not read.
    #[error(
        "hparams_file {}: .csv, .yml or .yaml is required for `hparams_file` \
         (Lightning's rule; lightning-rs also reads .json)",
        path.display()
    )]
    HparamsFileExtension {
        /// The file.
        path: PathBuf,
    },
    /// The `hparams_file` is not valid: not UTF-8, not a document of its format, not a
    /// mapping.
    #[error("hparams_file {}: {reason}", path.display())]
    HparamsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint did not load, and the caller asked for `weights_only=false` (which
    /// lightning-rs never honours).
    #[error(
        "loading checkpoint: {source} (weights_only=False would let Python run the file's \
         pickled code; lightning-rs never does)"
    )]
    NotWeightsOnly {
        /// Why the file did not load.
        #[source]
        source: CheckpointError,
    },
    /// A storage's saved location has no target under `map_location`.
    #[error("{}: map_location: {source}", path.display())]
    MapLocation {
        /// The checkpoint.
        path: PathBuf,
        /// What did not map.
        #[source]
        source: MapLocationError,
    },
}
