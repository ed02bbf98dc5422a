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
    #[error("data loader state: missing or malformed `{key}` in {state}")]
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
    /// A batch column asked for as a tensor holds strings.
    #[error("batch column `{column}` holds strings, not a tensor (use Batch::strings)")]
    NotATensor {
        /// The column's name (or position).
        column: String,
    },
    /// A batch has no column of that name.
    #[error("batch has no column named `{name}`; its named columns are {names:?}")]
    NoColumn {
        /// The name asked for.
        name: String,
        /// The batch's named columns.
        names: Vec<String>,
    },
    /// The default collate found samples that do not stack.
    #[error("cannot collate field `{field}`: {detail}")]
    Collate {
        /// The field (its name, or its position).
        field: String,
        /// What differs (kinds, shapes), naming the samples.
        detail: String,
    },
    /// A dataset failed to load a sample.
    #[error("loading sample {index} failed: {source}")]
    Sample {
        /// The sample's index in the dataset.
        index: usize,
        /// The dataset's error (naming the file, when it has one).
        source: crate::data::BoxError,
    },
    /// A dataset's batch loading or a user's collate function failed.
    #[error("loading the batch of samples {indices:?} failed: {source}")]
    Batch {
        /// The samples' indices in the dataset.
        indices: Vec<usize>,
        /// The error.
        source: crate::data::BoxError,
    },
    /// The dataset, the collate or a worker's init function panicked.
    #[error("loading batch {batch} (samples {indices:?}) panicked: {message}")]
    Panicked {
        /// The batch's index in the epoch.
        batch: usize,
        /// The samples' indices in the dataset.
        indices: Vec<usize>,
        /// The panic's message.
        message: String,
    },
    /// A newer epoch of the same loader took its persistent workers while this one was read.
    #[error(
        "the loader's persistent workers moved on to a newer epoch before batch {batch} was \
         loaded; read one epoch of a loader at a time"
    )]
    Superseded {
        /// The batch waited for.
        batch: usize,
    },
    /// Every loader worker exited before batch `batch` was loaded.
    #[error("the data loader's workers exited before batch {batch} was loaded")]
    WorkersGone {
        /// The batch waited for.
        batch: usize,
    },
    /// A mid-epoch loader state cannot be continued on another world or batch size.
    #[error(
        "this checkpoint stopped mid-epoch with {world} process(es) and batch size {batch_size}; \
         continuing that epoch with {now_world} process(es) and batch size {now_batch_size} \
         needs the epoch's order, which a custom sampler, a batch sampler or an iterable \
         dataset does not give: resume \
         with {world} process(es) and batch size {batch_size}, or from an epoch-end checkpoint"
    )]
    NotElastic {
        /// The saving run's world size.
        world: usize,
        /// The saving run's batch size.
        batch_size: i64,
        /// This run's world size.
        now_world: usize,
        /// This run's batch size.
        now_batch_size: i64,
    },
    /// An image folder cannot be listed, or is not one folder per class of images.
    #[error("image folder {}: {detail}", path.display())]
    Folder {
        /// The folder.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
}
