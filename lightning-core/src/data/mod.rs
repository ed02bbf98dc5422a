//! Data: an in-memory [`TensorDataset`], a [`DataLoader`] that batches it (shuffled from
//! `(seed, epoch)`, so any epoch's order can be recomputed on resume), and a [`DataModule`]
//! holding the train/val/test/predict loaders. A loader made [`DataLoader::distributed`]
//! yields only its rank's share, chosen by a [`DistributedSampler`] (PyTorch's).
//!
//! ```
//! use lightning_core::data::{DataLoader, DataModule, TensorDataset};
//! use tch::{Kind, Tensor};
//! let x = Tensor::randn([10, 3], (Kind::Float, tch::Device::Cpu));
//! let y = Tensor::arange(10, (Kind::Int64, tch::Device::Cpu));
//! let ds = TensorDataset::new(vec![x, y]).unwrap();
//! let [train, val] = ds.random_split([8, 2], 0).unwrap();
//! let dm = DataModule::new()
//!     .train(DataLoader::new(train, 4).shuffle(true))
//!     .val(DataLoader::new(val, 4));
//! assert_eq!(dm.train_loader().unwrap().len(), 2);
//! ```

pub(crate) mod error;
mod sampler;

pub use error::DataError;
pub use sampler::{torch_randperm, DistributedSampler};

use crate::error::Result;
use crate::value::Value;
use std::ops::Index;
use std::sync::{Arc, Mutex, PoisonError};
use tch::{Device, Kind, Tensor};

/// A batch: the dataset's tensors, each with the batch as its first dimension
/// (`batch[0]` inputs, `batch[1]` targets for a `(x, y)` dataset).
#[derive(Debug)]
pub struct Batch {
    tensors: Vec<Tensor>,
}

impl Batch {
    /// A batch of these tensors.
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Batch { tensors }
    }
    /// The number of samples (first dimension of the first tensor; 0 when empty).
    pub fn size(&self) -> i64 {
        self.tensors
            .first()
            .and_then(|t| t.size().first().copied())
            .unwrap_or(0)
    }
    /// The tensors.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }
    /// The `i`-th tensor, or an error naming how many there are.
    pub fn get(&self, i: usize) -> Result<&Tensor, DataError> {
        self.tensors.get(i).ok_or(DataError::NoTensor {
            index: i,
            len: self.tensors.len(),
        })
    }
    /// Moves every tensor to `device` (no copy when already there).
    pub fn to_device(self, device: Device) -> Self {
        if self.tensors.iter().all(|t| t.device() == device) {
            return self;
        }
        Batch {
            tensors: self.tensors.iter().map(|t| t.to_device(device)).collect(),
        }
    }
}

impl Index<usize> for Batch {
    type Output = Tensor;
    /// Panics when out of range, as slices do; use [`Batch::get`] for an error instead.
    fn index(&self, i: usize) -> &Tensor {
        &self.tensors[i]
    }
}

/// Tensors sharing their first dimension, as PyTorch's `TensorDataset`.
#[derive(Debug)]
pub struct TensorDataset {
    tensors: Vec<Tensor>,
    len: i64,
}

impl Clone for TensorDataset {
    /// Shares the tensors (no copy).
    fn clone(&self) -> Self {
        TensorDataset {
            tensors: self.tensors.iter().map(|t| t.shallow_clone()).collect(),
            len: self.len,
        }
    }
}

impl TensorDataset {
    /// A dataset of these tensors; errors when empty or when first dimensions differ.
    pub fn new(tensors: Vec<Tensor>) -> Result<Self, DataError> {
        let len = match tensors.first().map(|t| t.size()) {
            Some(s) if !s.is_empty() => s[0],
            _ => return Err(DataError::NoRows),
        };
        for (i, t) in tensors.iter().enumerate() {
            let n = t.size().first().copied().unwrap_or(-1);
            if n != len {
                return Err(DataError::Rows {
                    index: i,
                    rows: n,
                    expected: len,
                });
            }
        }
        Ok(TensorDataset { tensors, len })
    }
    /// The number of samples.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The rows at `indices` (an int64 tensor) as a batch.
    pub fn gather(&self, indices: &Tensor) -> Batch {
        Batch::new(
            self.tensors
                .iter()
                .map(|t| t.index_select(0, indices))
                .collect(),
        )
    }
    /// The rows `start..end` as a batch (views, no copy).
    pub fn slice(&self, start: i64, end: i64) -> Batch {
        Batch::new(
            self.tensors
                .iter()
                .map(|t| t.narrow(0, start, end - start))
                .collect(),
        )
    }
    /// Splits into parts of the given lengths after a permutation seeded by `seed`
    /// (as `torch.utils.data.random_split` with a seeded generator; the order differs).
    pub fn random_split<const N: usize>(
        &self,
        lengths: [i64; N],
        seed: u64,
    ) -> Result<[TensorDataset; N], DataError> {
        let total: i64 = lengths.iter().sum();
        if total != self.len || lengths.iter().any(|&l| l < 0) {
            return Err(DataError::Split {
                lengths: lengths.to_vec(),
                rows: self.len,
            });
        }
        let perm = permutation(self.len, seed);
        let mut start = 0usize;
        let parts = lengths.map(|l| {
            let idx = Tensor::from_slice(&perm[start..start + l as usize]);
            start += l as usize;
            let batch = self.gather(&idx);
            TensorDataset {
                tensors: batch.tensors,
                len: l,
            }
        });
        Ok(parts)
    }
}

/// A random permutation of `0..n` from a splitmix64 stream (stable across platforms and
/// crate versions, so a resumed run sees the same order).
pub fn permutation(n: i64, seed: u64) -> Vec<i64> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<i64> = (0..n).collect();
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Mixes a seed with further numbers (epoch, step) into a new seed.
pub fn mix_seed(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(seed ^ 0x5851_F42D_4C95_7F2D, |acc, &p| {
        let mut z = acc.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Batches a [`TensorDataset`]. Stateless: the batches of an epoch are a function of
/// `(seed, epoch)`, and a [`LoaderState`] says where in the epoch a run is.
#[derive(Clone, Debug)]
pub struct DataLoader {
    dataset: TensorDataset,
    batch_size: i64,
    shuffle: bool,
    drop_last: bool,
    /// `(num_replicas, rank)` when [`DataLoader::distributed`].
    shard: Option<(usize, usize)>,
}

impl DataLoader {
    /// Batches of `batch_size` rows in dataset order (values below 1 are treated as 1).
    pub fn new(dataset: TensorDataset, batch_size: i64) -> Self {
        DataLoader {
            dataset,
            batch_size: batch_size.max(1),
            shuffle: false,
            drop_last: false,
            shard: None,
        }
    }
    /// Shuffle every epoch (the order depends on the trainer's seed and the epoch).
    pub fn shuffle(mut self, on: bool) -> Self {
        self.shuffle = on;
        self
    }
    /// Drop the last incomplete batch.
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }
    /// Yield only rank `rank`'s share of every epoch, as Lightning does under DDP: the
    /// samples of [`DataLoader::sampler`] (a [`DistributedSampler`] with this loader's
    /// `shuffle`, the run's seed, the epoch, and padding), in its order, batched as usual.
    /// [`DataLoader::len`] becomes the share's batch count, and a [`LoaderState`] counts
    /// batches of the share, so a mid-epoch resume continues within it.
    ///
    /// The order is PyTorch's (`torch.randperm` from `seed + epoch`), not the
    /// single-process loader's, even with one replica. Errors, with PyTorch's message,
    /// unless `rank < num_replicas`.
    pub fn distributed(mut self, num_replicas: usize, rank: usize) -> Result<Self, DataError> {
        DistributedSampler::new(0, num_replicas, rank)?;
        self.shard = Some((num_replicas, rank));
        Ok(self)
    }
    /// The sampler choosing this rank's samples in epoch `epoch` of a run seeded with
    /// `seed` (what [`DataLoader::epoch_iter`] uses), or `None` when not
    /// [`DataLoader::distributed`].
    pub fn sampler(&self, seed: u64, epoch: i64) -> Option<DistributedSampler> {
        let (num_replicas, rank) = self.shard?;
        let len = usize::try_from(self.dataset.len()).unwrap_or(0);
        let mut s = DistributedSampler::new(len, num_replicas, rank)
            .ok()?
            .shuffle(self.shuffle)
            .seed(seed);
        s.set_epoch(epoch as u64);
        Some(s)
    }
    /// `(num_replicas, rank)` when [`DataLoader::distributed`].
    pub fn shard(&self) -> Option<(usize, usize)> {
        self.shard
    }
    /// The dataset.
    pub fn dataset(&self) -> &TensorDataset {
        &self.dataset
    }
    /// The batch size.
    pub fn batch_size(&self) -> i64 {
        self.batch_size
    }
    /// Samples per epoch: the dataset's, or this rank's share when distributed.
    fn samples(&self) -> i64 {
        match self.sampler(0, 0) {
            Some(s) => s.len() as i64,
            None => self.dataset.len(),
        }
    }
    /// Batches per epoch (of this rank's share when distributed).
    pub fn len(&self) -> usize {
        let n = self.samples();
        let b = if self.drop_last {
            n / self.batch_size
        } else {
            (n + self.batch_size - 1) / self.batch_size
        };
        usize::try_from(b).unwrap_or(0)
    }
    /// Whether an epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batches of `epoch`, starting after `state.batches_consumed` when resuming.
    pub fn epoch_iter(&self, seed: u64, state: LoaderState) -> EpochIter<'_> {
        if let Some(s) = self.sampler(seed, state.epoch) {
            return EpochIter {
                loader: self,
                order: Some(Tensor::from_slice(&s.indices())),
                samples: s.len() as i64,
                next: state.batches_consumed,
                end: self.len(),
            };
        }
        let order = self.shuffle.then(|| {
            Tensor::from_slice(&permutation(
                self.dataset.len(),
                mix_seed(seed, &[state.epoch as u64]),
            ))
        });
        EpochIter {
            loader: self,
            order,
            samples: self.dataset.len(),
            next: state.batches_consumed,
            end: self.len(),
        }
    }
    /// Batch `i` of an epoch of `samples` samples whose order is `order` (dataset order
    /// when `None`).
    fn batch(&self, order: Option<&Tensor>, samples: i64, i: usize) -> Batch {
        let start = i as i64 * self.batch_size;
        let end = (start + self.batch_size).min(samples);
        match order {
            Some(o) => self.dataset.gather(&o.narrow(0, start, end - start)),
            None => self.dataset.slice(start, end),
        }
    }
}

/// The batches of one epoch, in order: `(batch_idx, batch)`.
pub struct EpochIter<'a> {
    loader: &'a DataLoader,
    order: Option<Tensor>,
    samples: i64,
    next: usize,
    end: usize,
}

impl Iterator for EpochIter<'_> {
    type Item = (usize, Batch);
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some((i, self.loader.batch(self.order.as_ref(), self.samples, i)))
    }
}

/// Where a run is in its data: the epoch and how many of its batches were consumed, so a
/// mid-epoch resume continues with the next batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderState {
    /// The epoch.
    pub epoch: i64,
    /// Batches of the epoch already used.
    pub batches_consumed: usize,
}

impl LoaderState {
    /// `{"epoch": e, "batches_consumed": n}`.
    pub fn state_dict(&self) -> Value {
        let mut v = Value::dict();
        v.insert("epoch", self.epoch);
        v.insert("batches_consumed", self.batches_consumed);
        v
    }
    /// Reads [`LoaderState::state_dict`]'s layout.
    pub fn load_state_dict(v: &Value) -> Result<Self, DataError> {
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| DataError::LoaderState {
                    key: k.to_owned(),
                    state: format!("{v:?}"),
                })
        };
        Ok(LoaderState {
            epoch: get("epoch")?,
            batches_consumed: usize::try_from(get("batches_consumed")?).unwrap_or(0),
        })
    }
}

/// The state of a datamodule (Lightning's `LightningDataModule.state_dict` /
/// `load_state_dict`): saved in every checkpoint under the datamodule's name (Lightning uses
/// the class's `__qualname__`) when it is not empty, and restored on resume and by
/// `validate`/`test`/`predict` with a `ckpt_path`.
///
/// ```
/// use lightning_core::data::{DataModule, DataModuleState};
/// use lightning_core::value::Value;
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Default)]
/// struct Vocab { size: i64 }
/// impl DataModuleState for Vocab {
///     fn state_dict(&self) -> Value {
///         let mut v = Value::dict();
///         v.insert("size", self.size);
///         v
///     }
///     fn load_state_dict(&mut self, state: &Value) -> lightning_core::Result<()> {
///         self.size = state.get("size").and_then(Value::as_i64).unwrap_or(0);
///         Ok(())
///     }
/// }
/// let vocab = Arc::new(Mutex::new(Vocab { size: 7 }));
/// let dm = DataModule::new().state("MyDataModule", vocab.clone());
/// assert_eq!(dm.state_name(), Some("MyDataModule"));
/// ```
pub trait DataModuleState: Send {
    /// The state to save; an empty dict (the default) saves nothing, as Lightning.
    fn state_dict(&self) -> Value {
        Value::dict()
    }
    /// Restores what [`DataModuleState::state_dict`] returned.
    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        let _ = state;
        Ok(())
    }
}

/// A datamodule's named, shared state (see [`DataModule::state`]).
#[derive(Clone)]
pub(crate) struct NamedState {
    pub name: String,
    pub state: Arc<Mutex<dyn DataModuleState>>,
}

impl NamedState {
    /// The state to save, or `None` when it is empty (Lightning saves nothing then).
    pub fn state_dict(&self) -> Option<Value> {
        let v = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state_dict();
        let empty = match &v {
            Value::None => true,
            Value::Dict(d) | Value::OrderedDict(d) => d.is_empty(),
            Value::List(l) | Value::Tuple(l) => l.is_empty(),
            _ => false,
        };
        (!empty).then_some(v)
    }

    /// Restores a saved state.
    pub fn load_state_dict(&self, v: &Value) -> Result<()> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .load_state_dict(v)
    }
}

impl std::fmt::Debug for NamedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedState")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The loaders of a run, as Lightning's `LightningDataModule`, and optionally its state
/// ([`DataModule::state`]).
#[derive(Clone, Debug, Default)]
pub struct DataModule {
    train: Option<DataLoader>,
    val: Option<DataLoader>,
    test: Option<DataLoader>,
    predict: Option<DataLoader>,
    state: Option<NamedState>,
}

impl DataModule {
    /// No loaders yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the training loader.
    pub fn train(mut self, l: DataLoader) -> Self {
        self.train = Some(l);
        self
    }
    /// Sets the validation loader.
    pub fn val(mut self, l: DataLoader) -> Self {
        self.val = Some(l);
        self
    }
    /// Sets the test loader.
    pub fn test(mut self, l: DataLoader) -> Self {
        self.test = Some(l);
        self
    }
    /// Sets the predict loader.
    pub fn predict(mut self, l: DataLoader) -> Self {
        self.predict = Some(l);
        self
    }
    /// Gives the datamodule a state saved in checkpoints under `name` (Lightning's key is the
    /// datamodule class's `__qualname__`, e.g. `"MNISTDataModule"`; use that name to read or
    /// write files Python Lightning shares). The trainer locks `state` to save and restore it;
    /// keep a clone of the `Arc` to read it after a resume.
    pub fn state<S: DataModuleState + 'static>(
        mut self,
        name: impl Into<String>,
        state: Arc<Mutex<S>>,
    ) -> Self {
        self.state = Some(NamedState {
            name: name.into(),
            state,
        });
        self
    }
    /// The name the datamodule's state is saved under, when it has one.
    pub fn state_name(&self) -> Option<&str> {
        self.state.as_ref().map(|s| s.name.as_str())
    }
    pub(crate) fn named_state(&self) -> Option<&NamedState> {
        self.state.as_ref()
    }
    /// The training loader.
    pub fn train_loader(&self) -> Option<&DataLoader> {
        self.train.as_ref()
    }
    /// The validation loader.
    pub fn val_loader(&self) -> Option<&DataLoader> {
        self.val.as_ref()
    }
    /// The test loader.
    pub fn test_loader(&self) -> Option<&DataLoader> {
        self.test.as_ref()
    }
    /// The predict loader.
    pub fn predict_loader(&self) -> Option<&DataLoader> {
        self.predict.as_ref()
    }
}

/// A 1-D int64 tensor of `0..n` (used by tests and examples to build labels).
pub fn arange(n: i64) -> Tensor {
    Tensor::arange(n, (Kind::Int64, Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n: i64) -> TensorDataset {
        TensorDataset::new(vec![arange(n), arange(n) * 10]).unwrap()
    }

    fn ids(b: &Batch) -> Vec<i64> {
        Vec::<i64>::try_from(&b[0]).unwrap()
    }

    #[test]
    fn batches_cover_the_data_with_and_without_drop_last() {
        let l = DataLoader::new(ds(10), 4);
        assert_eq!(l.len(), 3);
        let all: Vec<i64> = l
            .epoch_iter(0, LoaderState::default())
            .flat_map(|(_, b)| ids(&b))
            .collect();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(DataLoader::new(ds(10), 4).drop_last(true).len(), 2);
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_and_resumes_mid_epoch() {
        let l = DataLoader::new(ds(20), 3).shuffle(true);
        let epoch = |seed, e| -> Vec<Vec<i64>> {
            l.epoch_iter(
                seed,
                LoaderState {
                    epoch: e,
                    batches_consumed: 0,
                },
            )
            .map(|(_, b)| ids(&b))
            .collect()
        };
        assert_eq!(epoch(1, 0), epoch(1, 0));
        assert_ne!(epoch(1, 0), epoch(1, 1));
        assert_ne!(epoch(1, 0), epoch(2, 0));
        let mut sorted: Vec<i64> = epoch(1, 0).concat();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        let rest: Vec<Vec<i64>> = l
            .epoch_iter(
                1,
                LoaderState {
                    epoch: 0,
                    batches_consumed: 4,
                },
            )
            .map(|(_, b)| ids(&b))
            .collect();
        assert_eq!(rest, epoch(1, 0)[4..].to_vec());
    }

    fn epoch_ids(l: &DataLoader, seed: u64, state: LoaderState) -> Vec<Vec<i64>> {
        l.epoch_iter(seed, state).map(|(_, b)| ids(&b)).collect()
    }

    #[test]
    fn distributed_loader_yields_the_samplers_share_batched_and_resumes_within_it() {
        for shuffle in [false, true] {
            for drop_last in [false, true] {
                let world = 3;
                let mut all = Vec::new();
                for rank in 0..world {
                    let l = DataLoader::new(ds(23), 3)
                        .shuffle(shuffle)
                        .drop_last(drop_last)
                        .distributed(world, rank)
                        .unwrap();
                    let state = LoaderState {
                        epoch: 2,
                        batches_consumed: 0,
                    };
                    let s = l.sampler(7, 2).unwrap();
                    assert_eq!((s.len(), s.is_shuffled(), s.epoch()), (8, shuffle, 2));
                    let batches = epoch_ids(&l, 7, state);
                    // 8 samples each (23 padded to 24): batches of 3, 3, 2 (or 3, 3).
                    assert_eq!(l.len(), if drop_last { 2 } else { 3 });
                    assert_eq!(batches.len(), l.len());
                    let flat = batches.concat();
                    let n = flat.len();
                    assert_eq!(flat, s.indices()[..n].to_vec());
                    // Targets follow their inputs.
                    let first = l.epoch_iter(7, state).next().unwrap().1;
                    let y = Vec::<i64>::try_from(&first[1]).unwrap();
                    assert_eq!(y, batches[0].iter().map(|i| i * 10).collect::<Vec<_>>());
                    for k in 0..=batches.len() {
                        let rest = epoch_ids(
                            &l,
                            7,
                            LoaderState {
                                epoch: 2,
                                batches_consumed: k,
                            },
                        );
                        assert_eq!(rest, batches[k..].to_vec(), "resume after {k} batches");
                    }
                    let other = epoch_ids(
                        &l,
                        7,
                        LoaderState {
                            epoch: 3,
                            batches_consumed: 0,
                        },
                    );
                    assert_eq!(other != batches, shuffle, "the epoch reshuffles");
                    all.extend(s.indices());
                }
                // The shares partition the padded epoch: every sample, one twice.
                all.sort();
                all.dedup();
                assert_eq!(all, (0..23).collect::<Vec<_>>());
            }
        }
        let e = DataLoader::new(ds(4), 2).distributed(2, 5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid rank 5, rank should be in the interval [0, 1]"
        );
        assert!(DataLoader::new(ds(4), 2).sampler(0, 0).is_none());
    }

    #[test]
    fn state_round_trips_and_bad_input_errors() {
        let s = LoaderState {
            epoch: 3,
            batches_consumed: 7,
        };
        assert_eq!(LoaderState::load_state_dict(&s.state_dict()).unwrap(), s);
        assert!(LoaderState::load_state_dict(&Value::dict()).is_err());
        assert!(TensorDataset::new(vec![arange(3), arange(4)]).is_err());
        assert!(ds(5).random_split([2, 2], 0).is_err());
        let [a, b] = ds(5).random_split([3, 2], 0).unwrap();
        assert_eq!((a.len(), b.len()), (3, 2));
    }
}
