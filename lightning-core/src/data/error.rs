//! [`DataError`]: what datasets, loaders and samplers report, each naming what a user needs
//! to fix it.

/// An error from a dataset, a batch, a loader's saved state or a sampler.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A batch was asked for a tensor it does not have.
    #[error("batch has {len} tensors, no index {index}")]
    NoTensor {
        /// The index asked for.
        index: usize,
        /// How many tensors the batch has.
        len: usize,
    },
    /// A dataset was built from no tensor, or from a 0-d one.
    #[error("TensorDataset needs at least one tensor with a first dimension")]
    NoRows,
    /// A dataset's tensors disagree on their first dimension.
    #[error("TensorDataset: tensor {index} has {rows} rows, expected {expected} (as tensor 0)")]
    Rows {
        /// The tensor that differs.
        index: usize,
        /// Its first dimension (-1 when it has none).
        rows: i64,
        /// Tensor 0's first dimension.
        expected: i64,
    },
    /// `random_split`'s lengths do not add up to the dataset.
    #[error("random_split: lengths {lengths:?} must be >= 0 and sum to the dataset's {rows} rows")]
    Split {
        /// The lengths given.
        lengths: Vec<i64>,
        /// The dataset's rows.
        rows: i64,
    },
    /// A saved data loader state lacks an entry.
    #[error("data loader state: missing or non-integer `{key}` in {state}")]
    LoaderState {
        /// The entry.
        key: String,
        /// The state as found (`Debug`).
        state: String,
    },
    /// A rank outside the job (PyTorch's `DistributedSampler` message).
    #[error(
        "Invalid rank {rank}, rank should be in the interval [0, {}]",
        *num_replicas as i128 - 1
    )]
    Rank {
        /// The rank given.
        rank: usize,
        /// The number of replicas.
        num_replicas: usize,
    },
}
