//! Data, as `torch.utils.data`: map-style [`Dataset`]s (the in-memory [`TensorDataset`], the
//! [`ImageFolder`] of image files, or a user's own) yielding [`Sample`]s, a [`DataLoader`] that
//! loads them on worker threads and collates them into [`Batch`]es, and a [`DataModule`]
//! holding the train/val/test/predict loaders. A loader made [`DataLoader::distributed`]
//! yields only its rank's share, chosen by a [`DistributedSampler`] (PyTorch's).
//!
//! The batches of an epoch, and the random numbers each sample's transform draws
//! ([`SampleRng`]), depend only on the seed, the epoch, the sample index and the world size:
//! never on the number of workers or on timing. So a [`LoaderState`] (epoch, batches
//! consumed) is a loader's whole state: a mid-epoch resume continues without replaying the
//! consumed samples, exactly on the same world size and, with each remaining sample seen
//! exactly once, on another ([`Elastic`]).
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

mod dataset;
pub(crate) mod error;
mod loader;
mod sample;
mod sampler;
#[cfg(feature = "vision")]
mod vision;

pub use dataset::{
    mix_seed, permutation, BoxError, Dataset, IterableDataset, SampleRng, StreamContext,
    TensorDataset,
};
pub use error::DataError;
pub use loader::{BatchSampler, CollateFn, DataLoader, EpochIter, Sampler, WorkerInitFn};
pub use sample::{default_collate, Batch, Column, Field, Sample};
pub use sampler::{torch_randperm, DistributedSampler};
#[cfg(feature = "vision")]
pub use vision::{ImageFolder, Pixels, Transforms, IMAGE_EXTENSIONS};

use crate::error::Result;
use crate::value::Value;
use std::sync::{Arc, Mutex, PoisonError};
use tch::{Device, Kind, Tensor};

/// Where a run is in its data: the epoch and how many of its batches were consumed, so a
/// mid-epoch resume continues with the next batch; after an elastic resume, how the rest of
/// the epoch is dealt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderState {
    /// The epoch.
    pub epoch: i64,
    /// Batches of the epoch already used.
    pub batches_consumed: usize,
    /// Set when a run continues an epoch another world size (or batch size) started.
    pub elastic: Option<Elastic>,
}

impl LoaderState {
    /// Batch `batches_consumed` of `epoch`, in the loader's own plan.
    pub fn at(epoch: i64, batches_consumed: usize) -> Self {
        LoaderState {
            epoch,
            batches_consumed,
            elastic: None,
        }
    }
}

/// The rest of an epoch after an elastic resume: the epoch's order (PyTorch's
/// `DistributedSampler` order, or the single-process loader's) from `offset` on, dealt to the
/// current ranks, after `skip` batch indices the saving run used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Elastic {
    /// Samples of the epoch's order consumed before (all ranks together).
    pub offset: usize,
    /// Whether the epoch follows the `DistributedSampler` order (the saving run was
    /// distributed) rather than the single-process loader's.
    pub distributed_order: bool,
    /// Batch indices already used in the epoch (the plan's first `skip` batches are empty).
    pub skip: usize,
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
    hparams: Option<crate::value::Dict>,
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
    /// The datamodule's hyperparameters (what Lightning's `LightningDataModule` keeps with
    /// `save_hyperparameters()`): saved in checkpoints as `datamodule_hyper_parameters`
    /// (`datamodule_hparams_name = "kwargs"`), so `YourDataModule.load_from_checkpoint` in
    /// Python rebuilds it.
    pub fn hyper_parameters(mut self, hparams: crate::value::Dict) -> Self {
        self.hparams = Some(hparams);
        self
    }
    /// The hyperparameters given to [`DataModule::hyper_parameters`].
    pub fn hparams(&self) -> Option<&crate::value::Dict> {
        self.hparams.as_ref()
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
            .flat_map(|r| ids(&r.unwrap().1))
            .collect();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(DataLoader::new(ds(10), 4).drop_last(true).len(), 2);
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch_and_resumes_mid_epoch() {
        let l = DataLoader::new(ds(20), 3).shuffle(true);
        let epoch = |seed, e| -> Vec<Vec<i64>> {
            l.epoch_iter(seed, LoaderState::at(e, 0))
                .map(|r| ids(&r.unwrap().1))
                .collect()
        };
        assert_eq!(epoch(1, 0), epoch(1, 0));
        assert_ne!(epoch(1, 0), epoch(1, 1));
        assert_ne!(epoch(1, 0), epoch(2, 0));
        let mut sorted: Vec<i64> = epoch(1, 0).concat();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        let rest: Vec<Vec<i64>> = l
            .epoch_iter(1, LoaderState::at(0, 4))
            .map(|r| ids(&r.unwrap().1))
            .collect();
        assert_eq!(rest, epoch(1, 0)[4..].to_vec());
    }

    fn epoch_ids(l: &DataLoader, seed: u64, state: LoaderState) -> Vec<Vec<i64>> {
        l.epoch_iter(seed, state)
            .map(|r| ids(&r.unwrap().1))
            .collect()
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
                    let state = LoaderState::at(2, 0);
                    let s = l.distributed_sampler(7, 2).unwrap();
                    assert_eq!((s.len(), s.is_shuffled(), s.epoch()), (8, shuffle, 2));
                    let batches = epoch_ids(&l, 7, state);
                    // 8 samples each (23 padded to 24): batches of 3, 3, 2 (or 3, 3).
                    assert_eq!(l.len(), if drop_last { 2 } else { 3 });
                    assert_eq!(batches.len(), l.len());
                    let flat = batches.concat();
                    let n = flat.len();
                    assert_eq!(flat, s.indices()[..n].to_vec());
                    // Targets follow their inputs.
                    let first = l.epoch_iter(7, state).next().unwrap().unwrap().1;
                    let y = Vec::<i64>::try_from(&first[1]).unwrap();
                    assert_eq!(y, batches[0].iter().map(|i| i * 10).collect::<Vec<_>>());
                    for k in 0..=batches.len() {
                        let rest = epoch_ids(&l, 7, LoaderState::at(2, k));
                        assert_eq!(rest, batches[k..].to_vec(), "resume after {k} batches");
                    }
                    let other = epoch_ids(&l, 7, LoaderState::at(3, 0));
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
        assert!(DataLoader::new(ds(4), 2)
            .distributed_sampler(0, 0)
            .is_none());
    }

    #[test]
    fn state_round_trips_and_bad_input_errors() {
        let l = DataLoader::new(ds(40), 3).shuffle(true);
        let s = LoaderState::at(3, 7);
        assert_eq!(l.resume_at(&l.state_dict(&s)).unwrap(), s);
        assert!(l.resume_at(&Value::dict()).is_err());
        assert!(TensorDataset::new(vec![arange(3), arange(4)]).is_err());
        assert!(ds(5).random_split([2, 2], 0).is_err());
        let [a, b] = ds(5).random_split([3, 2], 0).unwrap();
        assert_eq!((a.len(), b.len()), (3, 2));
    }
}
