//! [`DataLoader`]: batches a [`Dataset`] as PyTorch's `torch.utils.data.DataLoader`, with
//! worker threads that load batches ahead of the training step. Stateless by design: the
//! batches of an epoch are a function of `(seed, epoch, world size)` (the order) and of
//! `(seed, epoch, index)` (each sample's random numbers), never of the number of workers, the
//! prefetch depth or timing, so a [`LoaderState`] (the epoch and the batches consumed) is all
//! a mid-epoch resume needs, and it starts without replaying the consumed samples.

use super::dataset::{
    mix_seed, permutation, BoxError, Dataset, IterableDataset, SampleRng, StreamContext,
};
use super::error::DataError;
use super::sample::{default_collate, Batch, Sample};
use super::sampler::DistributedSampler;
use super::{Elastic, LoaderState};
use crate::value::Value;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::Device;

/// A user's collate function: the samples of one batch (and their dataset indices) to a batch.
pub type CollateFn = Arc<dyn Fn(Vec<Sample>, &[usize]) -> Result<Batch, BoxError> + Send + Sync>;

/// Called once in each worker thread before it loads anything, with the worker's id
/// (PyTorch's `worker_init_fn`).
pub type WorkerInitFn = Arc<dyn Fn(usize) + Send + Sync>;

/// The order of an epoch's sample indices (PyTorch's `sampler=`): a function of the seed and
/// the epoch, so a resume recomputes it.
pub trait Sampler: Send + Sync {
    /// The indices of `epoch`, for a dataset of `dataset_len` samples.
    fn indices(&self, dataset_len: usize, seed: u64, epoch: u64) -> Vec<usize>;
}

/// The batches of an epoch as groups of sample indices (PyTorch's `batch_sampler=`): a
/// function of the seed and the epoch, so a resume recomputes it.
pub trait BatchSampler: Send + Sync {
    /// The batches of `epoch`, for a dataset of `dataset_len` samples.
    fn batches(&self, dataset_len: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>>;
}

/// Batches a [`Dataset`] (PyTorch's `DataLoader`): `batch_size`, `shuffle`, `drop_last`, a
/// custom [`Sampler`] or [`BatchSampler`], `num_workers` loader threads with
/// `prefetch_factor` batches each in flight, `pin_memory`, a `collate_fn` and a
/// `worker_init_fn`.
///
/// ```
/// use lightning_core::data::{DataLoader, LoaderState, TensorDataset};
/// use tch::{Kind, Tensor};
/// let x = Tensor::arange(10, (Kind::Float, tch::Device::Cpu));
/// let ds = TensorDataset::new(vec![x])?;
/// let loader = DataLoader::new(ds, 4).shuffle(true).num_workers(2);
/// let mut seen = Vec::new();
/// for batch in loader.epoch_iter(42, LoaderState::default()) {
///     let (_idx, batch) = batch?;
///     seen.extend(Vec::<f32>::try_from(&batch[0])?);
/// }
/// seen.sort_by(f32::total_cmp);
/// assert_eq!(seen, (0..10).map(|i| i as f32).collect::<Vec<_>>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct DataLoader {
    /// The map-style dataset (an empty one for an iterable loader).
    dataset: Arc<dyn Dataset>,
    /// The streaming dataset of [`DataLoader::iterable`].
    iterable: Option<Arc<dyn IterableDataset>>,
    batch_size: i64,
    shuffle: bool,
    drop_last: bool,
    /// `(num_replicas, rank)` when [`DataLoader::distributed`].
    shard: Option<(usize, usize)>,
    /// `(num_replicas, rank)` when [`DataLoader::eval_shard`].
    eval_shard: Option<(usize, usize)>,
    sampler: Option<Arc<dyn Sampler>>,
    batch_sampler: Option<Arc<dyn BatchSampler>>,
    num_workers: usize,
    prefetch_factor: usize,
    pin_memory: bool,
    collate: Option<CollateFn>,
    worker_init: Option<WorkerInitFn>,
    persistent_workers: bool,
    /// The threads kept across epochs with `persistent_workers` (not shared by clones).
    persistent: PersistentCache,
}

/// A loader's persistent worker threads, started at its first epoch; a clone starts its own.
#[derive(Default)]
struct PersistentCache(Mutex<Option<Persistent>>);

impl Clone for PersistentCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for DataLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("len(dataset)", &self.dataset.len())
            .field("iterable", &self.iterable.is_some())
            .field("batch_size", &self.batch_size)
            .field("shuffle", &self.shuffle)
            .field("drop_last", &self.drop_last)
            .field("shard", &self.shard)
            .field("sampler", &self.sampler.is_some())
            .field("batch_sampler", &self.batch_sampler.is_some())
            .field("num_workers", &self.num_workers)
            .field("prefetch_factor", &self.prefetch_factor)
            .field("pin_memory", &self.pin_memory)
            .field("collate_fn", &self.collate.is_some())
            .field("persistent_workers", &self.persistent_workers)
            .finish_non_exhaustive()
    }
}

impl DataLoader {
    /// Batches of `batch_size` samples in dataset order (values below 1 are treated as 1),
    /// loaded on the calling thread ([`DataLoader::num_workers`] adds loader threads).
    pub fn new<D: Dataset + 'static>(dataset: D, batch_size: i64) -> Self {
        Self::from_shared(Arc::new(dataset), batch_size)
    }
    /// As [`DataLoader::new`], sharing a dataset with other loaders.
    pub fn from_shared(dataset: Arc<dyn Dataset>, batch_size: i64) -> Self {
        DataLoader {
            dataset,
            iterable: None,
            batch_size: batch_size.max(1),
            shuffle: false,
            drop_last: false,
            shard: None,
            eval_shard: None,
            sampler: None,
            batch_sampler: None,
            num_workers: 0,
            prefetch_factor: 2,
            pin_memory: false,
            collate: None,
            worker_init: None,
            persistent_workers: false,
            persistent: PersistentCache::default(),
        }
    }
    /// Batches of `batch_size` samples of a streaming dataset, in the order it yields them
    /// (PyTorch's `DataLoader` over an `IterableDataset`). The stream is read on one thread
    /// (the training thread, or with [`DataLoader::num_workers`] a loader thread reading ahead),
    /// so its order never depends on the workers; a mid-epoch resume opens the stream at the
    /// next sample ([`IterableDataset::stream`]'s `skip`). `shuffle`, samplers and elastic
    /// resume do not apply; under DDP each rank streams its own share.
    pub fn iterable<D: IterableDataset + 'static>(dataset: D, batch_size: i64) -> Self {
        let mut l = Self::from_shared(Arc::new(NoSamples), batch_size);
        l.iterable = Some(Arc::new(dataset));
        l
    }
    /// Whether each epoch's order is shuffled.
    pub fn shuffles(&self) -> bool {
        self.shuffle
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
    /// Take the epoch's indices from `sampler` instead of dataset order or `shuffle`.
    pub fn sampler(mut self, sampler: impl Sampler + 'static) -> Self {
        self.sampler = Some(Arc::new(sampler));
        self
    }
    /// Take the epoch's batches from `batch_sampler` (`batch_size`, `shuffle`, `drop_last`
    /// and `sampler` then do not apply, as PyTorch).
    pub fn batch_sampler(mut self, batch_sampler: impl BatchSampler + 'static) -> Self {
        self.batch_sampler = Some(Arc::new(batch_sampler));
        self
    }
    /// Load batches on `n` threads (0, the default: on the training thread). The batches,
    /// and the random numbers each sample draws, are the same for every `n`.
    pub fn num_workers(mut self, n: usize) -> Self {
        self.num_workers = n;
        self
    }
    /// Batches each worker loads ahead (default 2, as PyTorch; values below 1 are 1).
    pub fn prefetch_factor(mut self, n: usize) -> Self {
        self.prefetch_factor = n.max(1);
        self
    }
    /// Put batches in page-locked host memory when a GPU is present, so the trainer's copy
    /// to the GPU is non-blocking and overlaps the step (a no-op without a GPU).
    pub fn pin_memory(mut self, on: bool) -> Self {
        self.pin_memory = on;
        self
    }
    /// Collate a batch's samples with `f` instead of [`default_collate`].
    pub fn collate_fn(
        mut self,
        f: impl Fn(Vec<Sample>, &[usize]) -> Result<Batch, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.collate = Some(Arc::new(f));
        self
    }
    /// Keep the worker threads between epochs (PyTorch's `persistent_workers`): they start
    /// at the loader's first epoch, `worker_init_fn` runs once in each, and they serve every
    /// later epoch of this loader (a clone starts its own). Without it each epoch starts its
    /// own threads (cheap, unlike PyTorch's worker processes).
    pub fn persistent_workers(mut self, on: bool) -> Self {
        self.persistent_workers = on;
        self
    }
    /// Run `f(worker_id)` once in each worker thread before it loads anything.
    pub fn worker_init_fn(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.worker_init = Some(Arc::new(f));
        self
    }
    /// Yield only rank `rank`'s share of every epoch, as Lightning does under DDP: the
    /// samples of [`DataLoader::distributed_sampler`] (a [`DistributedSampler`] with this
    /// loader's `shuffle`, the run's seed, the epoch, and padding), in its order, batched as
    /// usual. [`DataLoader::len`] becomes the share's batch count, and a [`LoaderState`]
    /// counts batches of the share, so a mid-epoch resume continues within it.
    ///
    /// The order is PyTorch's (`torch.randperm` from `seed + epoch`), not the
    /// single-process loader's, even with one replica. Errors, with PyTorch's message,
    /// unless `rank < num_replicas`.
    pub fn distributed(mut self, num_replicas: usize, rank: usize) -> Result<Self, DataError> {
        DistributedSampler::new(0, num_replicas, rank)?;
        self.shard = Some((num_replicas, rank));
        Ok(self)
    }
    /// Only rank `rank`'s share of an evaluation epoch: every `num_replicas`-th sample of
    /// the loader's order from position `rank`, without padding, so the ranks' shares
    /// partition the dataset (their lengths differ by at most one sample). `None` when the
    /// dataset has fewer samples than ranks, or with a batch sampler.
    pub fn eval_shard(&self, num_replicas: usize, rank: usize) -> Option<Self> {
        if rank >= num_replicas
            || self.iterable.is_some()
            || self.dataset.len() < num_replicas
            || self.batch_sampler.is_some()
            || self.shard.is_some()
        {
            return None;
        }
        let mut l = self.clone();
        l.eval_shard = Some((num_replicas, rank));
        Some(l)
    }
    /// The sampler choosing this rank's samples in epoch `epoch` of a run seeded with
    /// `seed`, or `None` when not [`DataLoader::distributed`].
    pub fn distributed_sampler(&self, seed: u64, epoch: i64) -> Option<DistributedSampler> {
        let (num_replicas, rank) = self.shard?;
        let mut s = DistributedSampler::new(self.dataset.len(), num_replicas, rank)
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
    /// The map-style dataset (`None` for an iterable loader).
    pub fn dataset(&self) -> Option<&Arc<dyn Dataset>> {
        self.iterable.is_none().then_some(&self.dataset)
    }
    /// The streaming dataset of an iterable loader.
    pub fn iterable_dataset(&self) -> Option<&Arc<dyn IterableDataset>> {
        self.iterable.as_ref()
    }
    /// The batch size.
    pub fn batch_size(&self) -> i64 {
        self.batch_size
    }
    /// The number of loader threads.
    pub fn workers(&self) -> usize {
        self.num_workers
    }
    /// Whether batches are pinned for a non-blocking copy to the GPU.
    pub fn pins_memory(&self) -> bool {
        self.pin_memory
    }
    /// Batches per epoch (of this rank's share when distributed).
    pub fn len(&self) -> usize {
        self.len_in(0)
    }
    /// Batches in epoch `epoch` (an iterable dataset's length may change with the epoch).
    fn len_in(&self, epoch: i64) -> usize {
        if let Some(it) = &self.iterable {
            let (world, rank) = self.shard.unwrap_or((1, 0));
            return self.batches_of(it.len(epoch as u64, rank, world));
        }
        if self.batch_sampler.is_some() {
            return self.plan(0, 0).len();
        }
        let n = match (&self.sampler, self.distributed_sampler(0, 0)) {
            (Some(s), _) => s.indices(self.dataset.len(), 0, 0).len(),
            (None, Some(s)) => s.len(),
            (None, None) => self.dataset.len(),
        };
        self.batches_of(match self.eval_shard {
            Some((w, r)) => n.saturating_sub(r).div_ceil(w),
            None => n,
        })
    }
    /// Batches of `samples` samples: partial last batch dropped with `drop_last`.
    fn batches_of(&self, samples: usize) -> usize {
        let b = self.batch_size as usize;
        match self.drop_last {
            true => samples / b,
            false => samples.div_ceil(b),
        }
    }
    /// Whether an epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The sample indices of each batch of `epoch` in a run seeded with `seed`.
    pub fn plan(&self, seed: u64, epoch: i64) -> Vec<Vec<usize>> {
        let len = self.dataset.len();
        if let Some(b) = &self.batch_sampler {
            return b.batches(len, seed, epoch as u64);
        }
        let order: Vec<usize> = if let Some(s) = &self.sampler {
            s.indices(len, seed, epoch as u64)
        } else if let Some(s) = self.distributed_sampler(seed, epoch) {
            s.indices().into_iter().map(|i| i as usize).collect()
        } else if self.shuffle {
            permutation(len as i64, mix_seed(seed, &[epoch as u64]))
                .into_iter()
                .map(|i| i as usize)
                .collect()
        } else {
            (0..len).collect()
        };
        let order: Vec<usize> = match self.eval_shard {
            Some((w, r)) => order.into_iter().skip(r).step_by(w).collect(),
            None => order,
        };
        let b = self.batch_size as usize;
        order
            .chunks(b)
            .filter(|c| !self.drop_last || c.len() == b)
            .map(<[usize]>::to_vec)
            .collect()
    }
    /// The sample indices of each batch of the epoch `state` is in: [`DataLoader::plan`], or
    /// after an elastic resume ([`Elastic`]) the `skip` batches already run (empty, never
    /// loaded) followed by the rest of the epoch's order shared among this loader's ranks.
    pub fn plan_at(&self, seed: u64, state: &LoaderState) -> Vec<Vec<usize>> {
        let Some(e) = state.elastic else {
            return self.plan(seed, state.epoch);
        };
        let mut plan = vec![Vec::new(); e.skip];
        let Some(order) = self.epoch_order(seed, state.epoch, e.distributed_order) else {
            return plan;
        };
        let rest = &order[e.offset.min(order.len())..];
        let (world, rank) = self.shard.unwrap_or((1, 0));
        let mut at = 0;
        for size in self.elastic_steps(rest.len()) {
            let chunk = &rest[at..at + size];
            at += size;
            // this step's samples, dealt to the ranks in turn; only an epoch's whole rest
            // shorter than the ranks makes a rank repeat a sample (every rank takes the step)
            let mut mine: Vec<usize> = chunk.iter().skip(rank).step_by(world).copied().collect();
            if mine.is_empty() {
                mine.push(chunk[rank % chunk.len()]);
            }
            plan.push(mine);
        }
        plan
    }
    /// How many samples (all ranks together) each step of an elastic epoch's rest of `rest`
    /// samples takes: `world * batch_size`, the last step shorter (with drop_last, only full
    /// steps). A last step with fewer samples than ranks takes some from the step before it,
    /// so every rank has a sample in every step without repeating one.
    fn elastic_steps(&self, rest: usize) -> Vec<usize> {
        let world = self.shard.map_or(1, |(w, _)| w);
        let step = world * self.batch_size as usize;
        let mut sizes = vec![step; rest / step];
        let tail = rest % step;
        if tail > 0 && !self.drop_last {
            match sizes.last_mut() {
                Some(prev) if tail < world && *prev >= 2 * world => {
                    *prev -= world - tail;
                    sizes.push(world);
                }
                _ => sizes.push(tail),
            }
        }
        sizes
    }
    /// Batches in the epoch `state` is in (of this rank's share): [`DataLoader::len`], or
    /// after an elastic resume the batches of [`DataLoader::plan_at`].
    pub fn epoch_len(&self, seed: u64, state: &LoaderState) -> usize {
        match state.elastic {
            None => self.len_in(state.epoch),
            Some(_) => self.plan_at(seed, state).len(),
        }
    }
    /// The whole order of an epoch's samples before any sharding or padding: PyTorch's
    /// `DistributedSampler` order when `distributed`, else this loader's own; `None` with a
    /// custom sampler or batch sampler, whose orders cannot be re-dealt.
    fn epoch_order(&self, seed: u64, epoch: i64, distributed: bool) -> Option<Vec<usize>> {
        if self.sampler.is_some() || self.batch_sampler.is_some() || self.iterable.is_some() {
            return None;
        }
        let len = self.dataset.len();
        Some(match (distributed, self.shuffle) {
            (true, true) => {
                let mut s = DistributedSampler::new(len, 1, 0).ok()?.seed(seed);
                s.set_epoch(epoch as u64);
                s.indices().into_iter().map(|i| i as usize).collect()
            }
            (false, true) => permutation(len as i64, mix_seed(seed, &[epoch as u64]))
                .into_iter()
                .map(|i| i as usize)
                .collect(),
            (_, false) => (0..len).collect(),
        })
    }
    /// How many samples of the epoch's order (all ranks together) the batches before
    /// `state.batches_consumed` took; `None` with a custom sampler or batch sampler.
    pub fn samples_consumed(&self, state: &LoaderState) -> Option<usize> {
        if self.sampler.is_some() || self.batch_sampler.is_some() || self.iterable.is_some() {
            return None;
        }
        let (world, _) = self.shard.unwrap_or((1, 0));
        let per_batch = world * self.batch_size as usize;
        let n = self.dataset.len();
        Some(match state.elastic {
            None => state.batches_consumed.saturating_mul(per_batch).min(n),
            Some(e) => {
                let ran = state.batches_consumed.saturating_sub(e.skip);
                let steps = self.elastic_steps(n.saturating_sub(e.offset));
                e.offset + steps.iter().take(ran).sum::<usize>()
            }
        })
    }
    /// The loader's state at `state`, as saved in a checkpoint (Lightning keeps a stateful
    /// loader's under `loops.fit_loop.state_dict.combined_loader`): the epoch, the batches
    /// this rank consumed (`_num_yielded`, torchdata's name), the batch size, the world size,
    /// which order the epoch follows, and how many of its samples all ranks consumed, which
    /// lets a run on another number of ranks continue the epoch ([`DataLoader::resume_at`]).
    pub fn state_dict(&self, state: &LoaderState) -> Value {
        let mut v = Value::dict();
        v.insert("epoch", state.epoch);
        v.insert("_num_yielded", state.batches_consumed as i64);
        v.insert("batch_size", self.batch_size);
        v.insert("world_size", self.shard.map_or(1, |(w, _)| w) as i64);
        let consumed = self.samples_consumed(state);
        let order = match (consumed, state.elastic) {
            (None, _) => "custom",
            (Some(_), Some(e)) if e.distributed_order => "distributed",
            (Some(_), Some(_)) => "local",
            (Some(_), None) if self.shard.is_some() => "distributed",
            (Some(_), None) => "local",
        };
        v.insert("order", order);
        let e = state.elastic.unwrap_or_default();
        v.insert("epoch_offset", e.offset as i64);
        v.insert("skip", e.skip as i64);
        let consumed = consumed.map_or(Value::None, |n| Value::from(n as i64));
        v.insert("samples_consumed", consumed);
        v
    }
    /// Where to continue from a saved [`DataLoader::state_dict`]: on the same world size and
    /// batch size, exactly where it stopped (the same batches); else, elastically, with the
    /// samples of the epoch not consumed yet dealt to this loader's ranks (each exactly once),
    /// batch indices continuing from where the saving run stopped. Errors when the state is
    /// malformed, or when it must be re-dealt but its order cannot be (a custom sampler).
    pub fn resume_at(&self, saved: &Value) -> Result<LoaderState, DataError> {
        let bad = |key: &str| DataError::LoaderState {
            key: key.to_owned(),
            state: format!("{saved:?}"),
        };
        let int = |k: &str| saved.get(k).and_then(Value::as_i64).ok_or_else(|| bad(k));
        let count = |k: &str| usize::try_from(int(k)?).map_err(|_| bad(k));
        let epoch = int("epoch")?;
        let consumed = count("_num_yielded")?;
        let world = count("world_size")?;
        let batch_size = int("batch_size")?;
        let order = saved
            .get("order")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("order"))?;
        let (offset, skip) = (count("epoch_offset")?, count("skip")?);
        let same_world = world == self.shard.map_or(1, |(w, _)| w);
        let kept = (offset, skip) != (0, 0);
        let elastic = |offset| Elastic {
            offset,
            distributed_order: order == "distributed",
            skip: consumed,
        };
        if same_world && batch_size == self.batch_size {
            return Ok(LoaderState {
                epoch,
                batches_consumed: consumed,
                elastic: kept.then_some(Elastic {
                    offset,
                    distributed_order: order == "distributed",
                    skip,
                }),
            });
        }
        let samples = match saved.get("samples_consumed").and_then(Value::as_i64) {
            Some(n) if order != "custom" => {
                usize::try_from(n).map_err(|_| bad("samples_consumed"))?
            }
            _ => {
                return Err(DataError::NotElastic {
                    world,
                    batch_size,
                    now_world: self.shard.map_or(1, |(w, _)| w),
                    now_batch_size: self.batch_size,
                });
            }
        };
        Ok(LoaderState {
            epoch,
            batches_consumed: consumed,
            elastic: Some(elastic(samples)),
        })
    }
    /// The batches of `state.epoch` in a run seeded with `seed`, starting after
    /// `state.batches_consumed`: `(batch_idx, batch)`, or the error of a batch that failed to
    /// load (naming the sample). With workers, loading runs ahead on their threads.
    pub fn epoch_iter(&self, seed: u64, state: LoaderState) -> EpochIter {
        self.epoch_iter_until(seed, state, usize::MAX)
    }
    /// As [`DataLoader::epoch_iter`], stopping before batch `end` (a `limit_*_batches`):
    /// workers load nothing past it.
    pub fn epoch_iter_until(&self, seed: u64, state: LoaderState, end: usize) -> EpochIter {
        if let Some(it) = &self.iterable {
            let end = end.min(self.len_in(state.epoch));
            let start = state.batches_consumed.min(end);
            let (world, rank) = self.shard.unwrap_or((1, 0));
            let ctx = StreamContext {
                seed,
                epoch: state.epoch as u64,
                rank,
                world,
            };
            let skip = start * self.batch_size as usize;
            let feed = Stream {
                opened: Some((it.clone(), ctx, skip)),
                stream: None,
                batch_size: self.batch_size as usize,
                drop_last: self.drop_last,
                collate: self.collate.clone(),
                position: skip,
                pin: self.pin_memory && tch::Cuda::is_available(),
            };
            let feed = match self.num_workers {
                0 => Feed::Stream(Box::new(feed)),
                _ => Feed::Reader(Reader::start(
                    feed,
                    self.num_workers * self.prefetch_factor,
                    end - start,
                )),
            };
            return EpochIter {
                feed,
                next: start,
                end,
                waited: Duration::ZERO,
            };
        }
        let plan = Arc::new(self.plan_at(seed, &state));
        let end = end.min(plan.len());
        let job = Arc::new(Job {
            loader: self.clone(),
            plan,
            seed,
            epoch: state.epoch as u64,
            pin: self.pin_memory && tch::Cuda::is_available(),
        });
        let start = state.batches_consumed.min(end);
        let depth = self.num_workers * self.prefetch_factor;
        let pool = (self.num_workers > 0 && start < end).then(|| match self.persistent_workers {
            true => {
                let mut cache = self
                    .persistent
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let p = match cache.take() {
                    Some(p) if p.threads.len() == self.num_workers => p,
                    _ => Persistent::start(self.num_workers, self.worker_init.clone()),
                };
                let pool = p.assign(job.clone(), depth, start, end);
                *cache = Some(p);
                pool
            }
            false => Pool::start(job.clone(), self.num_workers, depth, start, end),
        });
        EpochIter {
            feed: Feed::Map { job, pool },
            next: start,
            end,
            waited: Duration::ZERO,
        }
    }
}

/// The stand-in map-style dataset of an iterable loader.
struct NoSamples;

impl Dataset for NoSamples {
    fn len(&self) -> usize {
        0
    }
    fn get(&self, index: usize, _rng: &mut SampleRng) -> Result<Sample, BoxError> {
        Err(format!("an iterable loader has no sample {index} by index").into())
    }
}

/// One rank's stream of an epoch, batched and collated.
struct Stream {
    /// The dataset, where its stream starts and how many samples it skips: opened on the
    /// first batch (on the reader thread, with workers).
    opened: Option<(Arc<dyn IterableDataset>, StreamContext, usize)>,
    stream: Option<Box<dyn Iterator<Item = Result<Sample, BoxError>> + Send>>,
    batch_size: usize,
    drop_last: bool,
    collate: Option<CollateFn>,
    /// The position (in this rank's epoch) of the stream's next sample.
    position: usize,
    pin: bool,
}

impl Stream {
    /// The next batch, `None` when the stream ended (or only a partial batch is left with
    /// `drop_last`). Panics in the dataset or the collate become errors.
    fn next_batch(&mut self, batch: usize) -> Option<Result<Batch, DataError>> {
        catch_unwind(AssertUnwindSafe(|| self.next_unguarded())).unwrap_or_else(|payload| {
            Some(Err(DataError::Panicked {
                batch,
                indices: Vec::new(),
                message: panic_message(payload.as_ref()),
            }))
        })
    }

    fn next_unguarded(&mut self) -> Option<Result<Batch, DataError>> {
        if let Some((ds, ctx, skip)) = self.opened.take() {
            match ds.stream(&ctx, skip) {
                Ok(s) => self.stream = Some(s),
                Err(source) => {
                    return Some(Err(DataError::Sample {
                        index: skip,
                        source,
                    }));
                }
            }
        }
        let stream = self.stream.as_mut()?;
        let (first, mut samples) = (self.position, Vec::with_capacity(self.batch_size));
        while samples.len() < self.batch_size {
            match stream.next() {
                Some(Ok(s)) => samples.push(s),
                Some(Err(source)) => {
                    let index = self.position;
                    self.stream = None;
                    return Some(Err(DataError::Sample { index, source }));
                }
                None => break,
            }
            self.position += 1;
        }
        if samples.is_empty() || (self.drop_last && samples.len() < self.batch_size) {
            return None;
        }
        let indices: Vec<usize> = (first..self.position).collect();
        let batch = collate(self.collate.as_ref(), samples, &indices);
        Some(batch.map(|b| pinned_if(b, self.pin)))
    }
}

/// A thread reading a [`Stream`] ahead of the consumer, `depth` batches at most.
struct Reader {
    rx: Option<std::sync::mpsc::Receiver<Result<Batch, DataError>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(mut stream: Stream, depth: usize, batches: usize) -> Reader {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let thread = std::thread::Builder::new()
            .name("lightning-data-stream".into())
            .spawn(move || {
                for b in 0..batches {
                    let Some(r) = stream.next_batch(b) else {
                        return;
                    };
                    let failed = r.is_err();
                    // the consumer hung up (dropped the iterator): stop reading
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        match thread {
            Ok(t) => Reader {
                rx: Some(rx),
                thread: Some(t),
            },
            Err(e) => {
                tracing::warn!("could not start the data loader's stream reader: {e}");
                Reader {
                    rx: None,
                    thread: None,
                }
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // dropping the receiver makes the reader's next send fail, so it stops
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where an [`EpochIter`]'s batches come from.
enum Feed {
    /// A map-style dataset: batches by index, on this thread or the workers'.
    Map { job: Arc<Job>, pool: Option<Pool> },
    /// A stream read on this thread.
    Stream(Box<Stream>),
    /// A stream read ahead on a reader thread.
    Reader(Reader),
}

/// What loading one epoch needs, shared by its worker threads.
struct Job {
    loader: DataLoader,
    plan: Arc<Vec<Vec<usize>>>,
    seed: u64,
    epoch: u64,
    pin: bool,
}

impl Job {
    /// Loads batch `i`: the dataset's own batch when it has one and the collate is the
    /// default, else sample by sample (each with its own random numbers) and collated.
    /// A panic in the dataset or the collate is an error naming the batch.
    fn load(&self, i: usize) -> Result<Batch, DataError> {
        let indices = &self.plan[i];
        // everything a worker does with a batch is guarded: a worker that died silently would
        // leave its batch missing and the consumer waiting
        let r = catch_unwind(AssertUnwindSafe(|| {
            Ok(pinned_if(self.load_unguarded(indices)?, self.pin))
        }));
        r.unwrap_or_else(|payload| {
            Err(DataError::Panicked {
                batch: i,
                indices: indices.clone(),
                message: panic_message(payload.as_ref()),
            })
        })
    }

    fn load_unguarded(&self, indices: &[usize]) -> Result<Batch, DataError> {
        let ds = &self.loader.dataset;
        if self.loader.collate.is_none()
            && let Some(r) = ds.get_batch(indices)
        {
            return r.map_err(|source| DataError::Batch {
                indices: indices.to_vec(),
                source,
            });
        }
        let mut samples = Vec::with_capacity(indices.len());
        for &index in indices {
            let mut rng = SampleRng::new(self.seed, self.epoch, index as u64);
            let s = ds
                .get(index, &mut rng)
                .map_err(|source| DataError::Sample { index, source })?;
            samples.push(s);
        }
        collate(self.loader.collate.as_ref(), samples, indices)
    }
}

/// Collates a batch's samples with the user's function, or [`default_collate`].
fn collate(
    f: Option<&CollateFn>,
    samples: Vec<Sample>,
    indices: &[usize],
) -> Result<Batch, DataError> {
    match f {
        Some(f) => f(samples, indices).map_err(|source| DataError::Batch {
            indices: indices.to_vec(),
            source,
        }),
        None => default_collate(samples, indices),
    }
}

/// The batch in page-locked memory when `pin` (a GPU is present and `pin_memory` is on).
fn pinned_if(batch: Batch, pin: bool) -> Batch {
    match pin {
        true => batch.pinned(Device::Cuda(0)),
        false => batch,
    }
}

/// A panic's message (`panic!` with a literal or with formatting), for the error it becomes.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The state the workers and the consumer share.
struct Shared {
    /// The next batch a worker may claim.
    next_claim: usize,
    /// The next batch the consumer takes.
    next_take: usize,
    /// Loaded batches waiting for the consumer.
    ready: BTreeMap<usize, Result<Batch, DataError>>,
    /// Workers still running.
    alive: usize,
    stop: bool,
    /// A newer epoch took the (persistent) workers.
    superseded: bool,
    /// Workers whose `worker_init_fn` has not returned yet: none loads a batch before
    /// they all did, so a failed init is reported before any batch, whatever the timing.
    inits_pending: usize,
    /// A `worker_init_fn` that panicked, reported to the consumer in place of the next batch.
    init_error: Option<DataError>,
}

/// The worker threads of one epoch: each claims the next unclaimed batch while fewer than
/// `depth` are loaded or loading ahead of the consumer, loads it, and files it by index; the
/// consumer takes them in order.
struct Pool {
    state: Arc<(Mutex<Shared>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

/// One epoch handed to persistent workers.
#[derive(Clone)]
struct Work {
    job: Arc<Job>,
    state: Arc<(Mutex<Shared>, Condvar)>,
    depth: usize,
    end: usize,
}

/// What persistent workers wait on: the latest epoch (by generation), or shutdown.
#[derive(Default)]
struct Slot {
    generation: u64,
    work: Option<Work>,
    shutdown: bool,
}

/// Worker threads kept across epochs (`persistent_workers`): each runs `worker_init_fn` once,
/// then serves every epoch assigned to it; dropped with their loader.
struct Persistent {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl Persistent {
    fn start(workers: usize, worker_init: Option<WorkerInitFn>) -> Persistent {
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let threads = (0..workers)
            .filter_map(|w| {
                let (slot, worker_init) = (slot.clone(), worker_init.clone());
                spawn_worker(w, move || {
                    let ok = init(w, worker_init.as_ref());
                    let mut seen = 0;
                    loop {
                        let work = {
                            let mut s = lock(&slot.0);
                            while !s.shutdown && s.generation == seen {
                                s = slot.1.wait(s).unwrap_or_else(PoisonError::into_inner);
                            }
                            if s.shutdown {
                                return;
                            }
                            seen = s.generation;
                            s.work.clone()
                        };
                        let Some(work) = work else { continue };
                        let _exit = Exit(&work.state);
                        match ok {
                            true => serve(&work.job, &work.state, work.depth, work.end),
                            false => init_failed(w, &work.state),
                        }
                    }
                })
            })
            .collect();
        Persistent { slot, threads }
    }

    /// Hands the workers an epoch; the returned pool is the consumer's side of it.
    fn assign(&self, job: Arc<Job>, depth: usize, start: usize, end: usize) -> Pool {
        let state = Shared::new(start, self.threads.len(), 0);
        let mut s = lock(&self.slot.0);
        // an earlier epoch still being read (two iterators of one loader at once) ends with
        // an error rather than waiting for workers that moved on
        if let Some(prev) = &s.work {
            let mut p = lock(&prev.state.0);
            p.stop = true;
            p.superseded = true;
            prev.state.1.notify_all();
        }
        s.generation += 1;
        s.work = Some(Work {
            job,
            state: state.clone(),
            depth,
            end,
        });
        self.slot.1.notify_all();
        Pool {
            state,
            threads: Vec::new(),
        }
    }
}

impl Drop for Persistent {
    fn drop(&mut self) {
        lock(&self.slot.0).shutdown = true;
        self.slot.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Locks `m`, also after a thread panicked holding it (the state stays consistent: every
/// change under these locks is a single assignment or insert).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// An epoch from batch `start` served by `workers` workers, `inits_pending` of which
    /// still have to run `worker_init_fn`.
    fn new(start: usize, workers: usize, inits_pending: usize) -> Arc<(Mutex<Shared>, Condvar)> {
        Arc::new((
            Mutex::new(Shared {
                next_claim: start,
                next_take: start,
                ready: BTreeMap::new(),
                alive: workers,
                stop: false,
                superseded: false,
                inits_pending,
                init_error: None,
            }),
            Condvar::new(),
        ))
    }
}

/// Starts loader thread `w` running `f`; `None` (with a warning) when the system refuses.
fn spawn_worker(w: usize, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new()
        .name(format!("lightning-data-{w}"))
        .spawn(f)
    {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("could not start data loader worker {w}: {e}");
            None
        }
    }
}

impl Pool {
    fn start(job: Arc<Job>, workers: usize, depth: usize, start: usize, end: usize) -> Pool {
        let state = Shared::new(start, workers, workers);
        let threads: Vec<JoinHandle<()>> = (0..workers)
            .filter_map(|w| {
                let (job, shared) = (job.clone(), state.clone());
                spawn_worker(w, move || worker(w, &job, &shared, depth, end))
            })
            .collect();
        // threads that did not start neither run nor init: the others must not wait for them
        let missing = workers - threads.len();
        if missing > 0 {
            let mut s = lock(&state.0);
            s.alive -= missing;
            s.inits_pending -= missing;
            state.1.notify_all();
        }
        Pool { state, threads }
    }
}

/// Leaving an epoch: one worker fewer (the consumer stops waiting when none is left).
struct Exit<'a>(&'a (Mutex<Shared>, Condvar));

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        lock(&self.0 .0).alive -= 1;
        self.0 .1.notify_all();
    }
}

/// Runs `worker_init_fn(w)`; `false` when it panicked.
fn init(w: usize, f: Option<&WorkerInitFn>) -> bool {
    f.is_none_or(|f| catch_unwind(AssertUnwindSafe(|| f(w))).is_ok())
}

/// A worker whose init panicked: the epoch ends with that error.
fn init_failed(w: usize, state: &(Mutex<Shared>, Condvar)) {
    let mut s = lock(&state.0);
    let batch = s.next_take;
    s.init_error.get_or_insert(DataError::Panicked {
        batch,
        indices: Vec::new(),
        message: format!("worker_init_fn panicked in worker {w}"),
    });
    s.stop = true;
    state.1.notify_all();
}

fn worker(w: usize, job: &Job, state: &(Mutex<Shared>, Condvar), depth: usize, end: usize) {
    let _exit = Exit(state);
    let ok = init(w, job.loader.worker_init.as_ref());
    if !ok {
        init_failed(w, state);
    }
    {
        let mut s = lock(&state.0);
        s.inits_pending = s.inits_pending.saturating_sub(1);
        state.1.notify_all();
        while s.inits_pending > 0 && !s.stop {
            s = state.1.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
    if ok {
        serve(job, state, depth, end);
    }
}

/// Claims, loads and files batches of one epoch until none is left (or the epoch stopped).
fn serve(job: &Job, state: &(Mutex<Shared>, Condvar), depth: usize, end: usize) {
    loop {
        let i = {
            let mut s = lock(&state.0);
            loop {
                if s.stop || s.next_claim >= end {
                    return;
                }
                if s.next_claim < s.next_take + depth {
                    break;
                }
                s = state.1.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            s.next_claim += 1;
            s.next_claim - 1
        };
        let r = job.load(i);
        let failed = r.is_err();
        let mut s = lock(&state.0);
        s.ready.insert(i, r);
        if failed {
            // nothing after a failed batch is needed: the epoch ends with its error
            s.next_claim = end;
        }
        state.1.notify_all();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.state.0).stop = true;
        self.state.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The batches of one epoch, in order: `(batch_idx, batch)` or the error of the batch that
/// failed (the iteration ends after it). Dropping it stops the workers.
pub struct EpochIter {
    feed: Feed,
    next: usize,
    end: usize,
    waited: Duration,
}

impl EpochIter {
    /// Time the consumer spent waiting for batches that were not loaded yet.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for EpochIter {
    type Item = Result<(usize, Batch), DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let started = Instant::now();
        let r = match &mut self.feed {
            Feed::Stream(s) => match s.next_batch(i) {
                Some(r) => r,
                None => {
                    self.end = i;
                    return None;
                }
            },
            Feed::Reader(reader) => match reader.rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok(r)) => r,
                // the stream ended early (shorter than its `len`), or the reader is gone
                Some(Err(_)) | None => {
                    self.end = i;
                    return None;
                }
            },
            Feed::Map { job, pool: None } => job.load(i),
            Feed::Map {
                pool: Some(pool), ..
            } => {
                let (m, cv) = &*pool.state;
                let mut s = lock(m);
                loop {
                    if let Some(e) = s.init_error.take() {
                        break Err(e);
                    }
                    if let Some(r) = s.ready.remove(&i) {
                        s.next_take = i + 1;
                        cv.notify_all();
                        break r;
                    }
                    if s.superseded {
                        break Err(DataError::Superseded { batch: i });
                    }
                    if s.alive == 0 {
                        break Err(DataError::WorkersGone { batch: i });
                    }
                    s = cv.wait(s).unwrap_or_else(PoisonError::into_inner);
                }
            }
        };
        self.waited += started.elapsed();
        if r.is_err() {
            self.end = i + 1;
        }
        Some(r.map(|b| (i, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tch::{Kind, Tensor};

    /// Sample `i`: `[i, noise]` and the label `i`, where the noise is drawn from the sample's
    /// RNG; loading takes longer for some indices, so workers finish out of order.
    struct Slow {
        n: usize,
        loads: AtomicUsize,
        fail_at: Option<usize>,
        panic_at: Option<usize>,
    }
    impl Slow {
        fn new(n: usize) -> Self {
            Slow {
                n,
                loads: AtomicUsize::new(0),
                fail_at: None,
                panic_at: None,
            }
        }
    }
    impl Dataset for Slow {
        fn len(&self) -> usize {
            self.n
        }
        fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample, BoxError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            if index.is_multiple_of(3) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if self.fail_at == Some(index) {
                return Err(format!("cannot read /data/{index}.png").into());
            }
            if self.panic_at == Some(index) {
                panic!("decoder bug at {index}");
            }
            let x = Tensor::from_slice(&[index as f32, rng.uniform() as f32]);
            Ok(Sample::new().with("x", x).with("y", index as i64))
        }
    }

    fn run(l: &DataLoader, seed: u64, state: LoaderState) -> Vec<(usize, Vec<f32>, Vec<i64>)> {
        l.epoch_iter(seed, state)
            .map(|r| {
                let (i, b) = r.unwrap();
                let x = Vec::<f32>::try_from(b.named("x").unwrap().flatten(0, -1)).unwrap();
                (i, x, Vec::<i64>::try_from(b.named("y").unwrap()).unwrap())
            })
            .collect()
    }

    #[test]
    fn batches_and_random_numbers_do_not_depend_on_workers_or_prefetch() {
        let base = DataLoader::new(Slow::new(37), 5).shuffle(true);
        let want = run(&base, 11, LoaderState::at(2, 0));
        assert_eq!(want.len(), 8);
        for (w, p) in [(1, 1), (2, 2), (4, 1), (4, 3), (9, 2)] {
            let l = base.clone().num_workers(w).prefetch_factor(p);
            let got = run(&l, 11, LoaderState::at(2, 0));
            assert_eq!(got, want, "{w} workers, prefetch {p}");
            // resuming mid-epoch yields the rest, loading nothing before it
            let rest = run(&l, 11, LoaderState::at(2, 5));
            assert_eq!(rest, want[5..].to_vec());
        }
        let other = run(&base, 11, LoaderState::at(3, 0));
        assert_ne!(other, want, "a new epoch reshuffles and redraws");
    }

    #[test]
    fn workers_load_nothing_past_the_limit_and_stop_when_dropped() {
        let ds = Arc::new(Slow::new(100));
        let l = DataLoader::from_shared(ds.clone(), 4)
            .num_workers(3)
            .prefetch_factor(2);
        let got: Vec<_> = l
            .epoch_iter_until(0, LoaderState::default(), 2)
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(got, vec![0, 1]);
        assert_eq!(ds.loads.load(Ordering::SeqCst), 8);
        ds.loads.store(0, Ordering::SeqCst);
        let mut it = l.epoch_iter(0, LoaderState::default());
        it.next().unwrap().unwrap();
        drop(it);
        // at most the prefetch window (6 batches ahead of the one taken) was loaded
        assert!(ds.loads.load(Ordering::SeqCst) <= 7 * 4);
    }

    #[test]
    fn a_bad_sample_is_an_error_naming_it_and_ends_the_epoch() {
        for workers in [0, 1, 3] {
            let mut ds = Slow::new(20);
            ds.fail_at = Some(13);
            let l = DataLoader::new(ds, 4).num_workers(workers);
            let all: Vec<_> = l.epoch_iter(0, LoaderState::default()).collect();
            assert_eq!(
                all.len(),
                4,
                "three good batches, then the error, then nothing"
            );
            assert!(all[..3].iter().all(Result::is_ok));
            let msg = all[3].as_ref().unwrap_err().to_string();
            assert!(
                msg.contains("sample 13") && msg.contains("/data/13.png"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_panicking_dataset_is_an_error_not_an_abort() {
        for workers in [0, 2] {
            let mut ds = Slow::new(12);
            ds.panic_at = Some(6);
            let l = DataLoader::new(ds, 4).num_workers(workers);
            let all: Vec<_> = l.epoch_iter(0, LoaderState::default()).collect();
            assert_eq!(all.len(), 2);
            let msg = all[1].as_ref().unwrap_err().to_string();
            assert!(
                msg.contains("batch 1") && msg.contains("decoder bug at 6"),
                "{msg}"
            );
        }
        let l = DataLoader::new(Slow::new(8), 4)
            .num_workers(2)
            .worker_init_fn(|w| assert_ne!(w, 1, "worker 1 refuses"));
        let errs: Vec<_> = l
            .epoch_iter(0, LoaderState::default())
            .filter_map(Result::err)
            .collect();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].to_string().contains("worker_init_fn"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn worker_init_runs_once_per_worker_and_user_collate_and_samplers_apply() {
        let inits = Arc::new(AtomicUsize::new(0));
        let seen = inits.clone();
        struct Reverse;
        impl Sampler for Reverse {
            fn indices(&self, n: usize, _: u64, _: u64) -> Vec<usize> {
                (0..n).rev().collect()
            }
        }
        let l = DataLoader::new(Slow::new(6), 4)
            .num_workers(3)
            .sampler(Reverse)
            .worker_init_fn(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })
            .collate_fn(|samples, idx| {
                let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
                assert_eq!(samples.len(), idx.len());
                Ok(Batch::new(vec![Tensor::from_slice(&ids)]))
            });
        let got: Vec<Vec<i64>> = l
            .epoch_iter(0, LoaderState::default())
            .map(|r| Vec::<i64>::try_from(&r.unwrap().1[0]).unwrap())
            .collect();
        assert_eq!(got, vec![vec![5, 4, 3, 2], vec![1, 0]]);
        assert_eq!(inits.load(Ordering::SeqCst), 3);
        assert_eq!(l.len(), 2);
        struct Pairs;
        impl BatchSampler for Pairs {
            fn batches(&self, n: usize, _: u64, epoch: u64) -> Vec<Vec<usize>> {
                (0..n / 2)
                    .map(|i| vec![2 * i + epoch as usize % 2, 2 * i])
                    .collect()
            }
        }
        let l = DataLoader::new(Slow::new(6), 100).batch_sampler(Pairs);
        assert_eq!(l.len(), 3);
        let b = l.epoch_iter(0, LoaderState::at(1, 2)).next();
        let (i, b) = b.unwrap().unwrap();
        assert_eq!(i, 2);
        assert_eq!(
            Vec::<i64>::try_from(b.named("y").unwrap()).unwrap(),
            vec![5, 4]
        );
        assert_eq!(b.named("x").unwrap().kind(), Kind::Float);
    }

    /// The indices rank `rank` of `world` takes in batches `from..to` of `state`'s epoch.
    fn taken(l: &DataLoader, state: LoaderState, to: usize) -> Vec<usize> {
        l.plan_at(5, &state)[state.batches_consumed..to.min(l.epoch_len(5, &state))].concat()
    }

    #[test]
    fn an_elastic_resume_sees_every_remaining_sample_exactly_once() {
        let base = DataLoader::new(Slow::new(61), 4).shuffle(true);
        for (world, then) in [(2, 1), (2, 3), (1, 2), (3, 2)] {
            let ranks = |w: usize| -> Vec<DataLoader> {
                match w {
                    1 => vec![base.clone()],
                    _ => (0..w)
                        .map(|r| base.clone().distributed(w, r).unwrap())
                        .collect(),
                }
            };
            // `world` ranks run 3 batches of epoch 2 and save (every rank's state agrees)
            let before = ranks(world);
            let mut seen: Vec<usize> = before
                .iter()
                .flat_map(|l| taken(l, LoaderState::at(2, 0), 3))
                .collect();
            let saved = before[0].state_dict(&LoaderState::at(2, 3));
            assert_eq!(saved, before[world - 1].state_dict(&LoaderState::at(2, 3)));
            // `then` ranks continue the epoch: batch indices go on from 3, each rank runs the
            // same number of steps, and every sample not seen yet comes exactly once
            let after = ranks(then);
            let states: Vec<LoaderState> =
                after.iter().map(|l| l.resume_at(&saved).unwrap()).collect();
            let lens: Vec<usize> = after
                .iter()
                .zip(&states)
                .map(|(l, s)| l.epoch_len(5, s))
                .collect();
            assert!(lens.iter().all(|&n| n == lens[0] && n > 3), "{lens:?}");
            for (l, s) in after.iter().zip(&states) {
                assert_eq!(s.batches_consumed, 3);
                seen.extend(taken(l, *s, usize::MAX));
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..61).collect::<Vec<_>>(), "{world} -> {then} ranks");
            // a second save mid-way through the elastic part, resumed on one rank, still
            // covers the epoch exactly once
            let mid = LoaderState {
                batches_consumed: 5,
                ..states[0]
            };
            let saved2 = after[0].state_dict(&mid);
            let mut seen2: Vec<usize> = before
                .iter()
                .flat_map(|l| taken(l, LoaderState::at(2, 0), 3))
                .chain(after.iter().zip(&states).flat_map(|(l, s)| taken(l, *s, 5)))
                .collect();
            let last = base.resume_at(&saved2).unwrap();
            seen2.extend(taken(&base, last, usize::MAX));
            seen2.sort_unstable();
            assert_eq!(
                seen2,
                (0..61).collect::<Vec<_>>(),
                "{world} -> {then} -> 1 ranks"
            );
            // on the same world size the saved plan continues unchanged
            let same = ranks(then)[0].resume_at(&saved2).unwrap();
            assert_eq!(same, mid);
        }
        // the next epoch is a fresh run's on the new world size
        let l = base.clone().distributed(3, 1).unwrap();
        assert_eq!(l.plan_at(5, &LoaderState::at(3, 0)), l.plan(5, 3));
    }

    /// `0..n` as a stream (rank `r` of `w`: every `w`-th from `r`), each value with noise from
    /// its own RNG; counts what it yields; fails or panics at chosen positions.
    struct Counter {
        n: usize,
        yielded: Arc<AtomicUsize>,
        fail_at: Option<usize>,
        panic_at: Option<usize>,
    }
    impl Counter {
        fn new(n: usize) -> Self {
            Counter {
                n,
                yielded: Arc::new(AtomicUsize::new(0)),
                fail_at: None,
                panic_at: None,
            }
        }
    }
    impl IterableDataset for Counter {
        fn len(&self, _epoch: u64, rank: usize, world: usize) -> usize {
            self.n.saturating_sub(rank).div_ceil(world)
        }
        fn stream(
            &self,
            ctx: &StreamContext,
            skip: usize,
        ) -> Result<Box<dyn Iterator<Item = Result<Sample, BoxError>> + Send>, BoxError> {
            let (yielded, fail, panic_at, ctx) =
                (self.yielded.clone(), self.fail_at, self.panic_at, *ctx);
            let it = (ctx.rank + skip * ctx.world..self.n)
                .step_by(ctx.world)
                .map(move |i| {
                    yielded.fetch_add(1, Ordering::SeqCst);
                    if fail == Some(i) {
                        return Err(format!("record {i} is corrupt").into());
                    }
                    if panic_at == Some(i) {
                        panic!("reader bug at {i}");
                    }
                    let noise = SampleRng::new(ctx.seed, ctx.epoch, i as u64).uniform() as f32;
                    Ok(Sample::new()
                        .with("x", Tensor::from_slice(&[i as f32, noise]))
                        .with("y", i as i64))
                });
            Ok(Box::new(it))
        }
    }

    #[test]
    fn an_iterable_loader_is_the_same_with_any_workers_and_resumes_without_replay() {
        let ds = Counter::new(23);
        let yielded = ds.yielded.clone();
        let base = DataLoader::iterable(ds, 4);
        assert_eq!(base.len(), 6);
        let want = run(&base, 9, LoaderState::at(1, 0));
        assert_eq!(want.len(), 6);
        assert_eq!(want[5].2, vec![20, 21, 22]);
        for w in [1, 3] {
            let l = base.clone().num_workers(w).prefetch_factor(1);
            assert_eq!(run(&l, 9, LoaderState::at(1, 0)), want, "{w} workers");
            yielded.store(0, Ordering::SeqCst);
            let rest = run(&l, 9, LoaderState::at(1, 2));
            assert_eq!(rest, want[2..].to_vec());
            // opened at sample 8: the consumed samples are not read again
            assert_eq!(yielded.load(Ordering::SeqCst), 23 - 8);
        }
        assert_ne!(
            run(&base, 9, LoaderState::at(2, 0)),
            want,
            "another epoch draws anew"
        );
        // under DDP each rank streams its share
        let r1 = base.clone().distributed(2, 1).unwrap();
        assert_eq!(r1.len(), 3);
        let ys: Vec<i64> = run(&r1, 9, LoaderState::at(1, 0))
            .into_iter()
            .flat_map(|b| b.2)
            .collect();
        assert_eq!(ys, (1..23).step_by(2).collect::<Vec<_>>());
        // with drop_last the partial batch goes
        assert_eq!(base.clone().drop_last(true).len(), 5);
        assert_eq!(
            run(&base.clone().drop_last(true), 9, LoaderState::at(1, 0)).len(),
            5
        );
        // an iterable loader's position cannot be re-dealt to another world size
        let saved = r1.state_dict(&LoaderState::at(1, 2));
        assert!(matches!(
            base.resume_at(&saved),
            Err(DataError::NotElastic { .. })
        ));
        assert_eq!(r1.resume_at(&saved).unwrap(), LoaderState::at(1, 2));
        assert!(base.dataset().is_none() && base.iterable_dataset().is_some());
    }

    #[test]
    fn a_failing_or_panicking_stream_is_an_error_naming_the_sample() {
        for workers in [0, 2] {
            let mut ds = Counter::new(20);
            ds.fail_at = Some(9);
            let all: Vec<_> = DataLoader::iterable(ds, 4)
                .num_workers(workers)
                .epoch_iter(0, LoaderState::default())
                .collect();
            assert_eq!(all.len(), 3);
            let msg = all[2].as_ref().unwrap_err().to_string();
            assert!(
                msg.contains("sample 9") && msg.contains("record 9 is corrupt"),
                "{msg}"
            );
            let mut ds = Counter::new(20);
            ds.panic_at = Some(5);
            let all: Vec<_> = DataLoader::iterable(ds, 4)
                .num_workers(workers)
                .epoch_iter(0, LoaderState::default())
                .collect();
            assert_eq!(all.len(), 2);
            let msg = all[1].as_ref().unwrap_err().to_string();
            assert!(msg.contains("reader bug at 5"), "{msg}");
        }
    }

    #[test]
    fn persistent_workers_start_once_and_serve_every_epoch_the_same() {
        let inits = Arc::new(AtomicUsize::new(0));
        let counted = |persistent: bool| {
            let seen = inits.clone();
            DataLoader::new(Slow::new(30), 4)
                .shuffle(true)
                .num_workers(3)
                .persistent_workers(persistent)
                .worker_init_fn(move |_| {
                    seen.fetch_add(1, Ordering::SeqCst);
                })
        };
        let plain = counted(false);
        let want: Vec<_> = (0..3)
            .map(|e| run(&plain, 4, LoaderState::at(e, 0)))
            .collect();
        assert_eq!(inits.swap(0, Ordering::SeqCst), 9, "3 threads per epoch");
        let kept = counted(true);
        for (e, w) in want.iter().enumerate() {
            assert_eq!(&run(&kept, 4, LoaderState::at(e as i64, 0)), w);
        }
        // a mid-epoch start and an epoch left early work too
        assert_eq!(run(&kept, 4, LoaderState::at(1, 5)), want[1][5..].to_vec());
        let mut it = kept.epoch_iter(4, LoaderState::at(2, 0));
        it.next().unwrap().unwrap();
        drop(it);
        assert_eq!(run(&kept, 4, LoaderState::at(2, 0)), want[2]);
        assert_eq!(
            inits.load(Ordering::SeqCst),
            3,
            "each thread ran worker_init once"
        );
        // two epochs of one loader read at once: the older one ends with an error, no hang
        let mut first = kept.epoch_iter(4, LoaderState::at(0, 0));
        let second = kept.epoch_iter(4, LoaderState::at(1, 0));
        let got: Vec<_> = second.map(|r| r.unwrap().0).collect();
        assert_eq!(got.len(), 8);
        let stale: Vec<_> = first.by_ref().collect();
        // what was loaded before the newer epoch came (at most the 6-batch window), then
        // the error naming why
        assert!(stale.len() <= 7, "{}", stale.len());
        let last = stale.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(last.contains("newer epoch"), "{last}");
        // a clone starts its own threads
        let _ = run(&kept.clone(), 4, LoaderState::at(0, 0));
        assert_eq!(inits.load(Ordering::SeqCst), 6);
    }
}
