//! Datasets: the map-style [`Dataset`] trait (PyTorch's `torch.utils.data.Dataset`: a length
//! and a sample per index), the in-memory [`TensorDataset`], and the random numbers a sample's
//! transform draws ([`SampleRng`], a function of `(seed, epoch, index)` only).

use super::error::DataError;
use super::sample::{Batch, Sample};
use tch::Tensor;

/// What a dataset's `get` may fail with: any error (an IO error, a decoding error); the loader
/// wraps it in [`DataError::Sample`] with the sample's index.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A map-style dataset, as PyTorch's `torch.utils.data.Dataset`: `len` samples, any of which
/// `get` loads (from memory, files, a database). A [`super::DataLoader`] calls `get` from its
/// worker threads, so a dataset is `Send + Sync`.
///
/// Randomness (augmentations) must come from `rng`: it depends only on the run's seed, the
/// epoch and `index`, so batches are the same with any number of workers and after a resume.
///
/// ```
/// use lightning_core::data::{BoxError, Dataset, Sample, SampleRng};
/// use tch::Tensor;
///
/// /// Noisy copies of `0..n`: a sample is `(x + noise, x)`.
/// struct Noisy { n: usize }
/// impl Dataset for Noisy {
///     fn len(&self) -> usize { self.n }
///     fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample, BoxError> {
///         let x = index as f32;
///         let noise = rng.uniform() as f32 - 0.5;
///         Ok(Sample::new().with("x", Tensor::from(x + noise)).with("y", index as i64))
///     }
/// }
/// let ds = Noisy { n: 4 };
/// let a = ds.get(2, &mut SampleRng::new(7, 0, 2))?;
/// let b = ds.get(2, &mut SampleRng::new(7, 0, 2))?;
/// assert_eq!(format!("{a:?}"), format!("{b:?}")); // same (seed, epoch, index): same draw
/// # Ok::<(), BoxError>(())
/// ```
pub trait Dataset: Send + Sync {
    /// The number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (`< len()`), drawing any randomness from `rng`.
    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample, BoxError>;
    /// The whole batch at `indices` at once, when the dataset can do better than loading and
    /// collating samples one by one (an in-memory tensor's `index_select`). Used only with the
    /// default collate; `None` (the default) loads sample by sample.
    fn get_batch(&self, indices: &[usize]) -> Option<Result<Batch, BoxError>> {
        let _ = indices;
        None
    }
}

/// Where a stream of an [`IterableDataset`] is: the run's seed, the epoch, and which rank of
/// how many reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamContext {
    /// The run's seed.
    pub seed: u64,
    /// The epoch.
    pub epoch: u64,
    /// This process's rank.
    pub rank: usize,
    /// The number of processes reading the dataset.
    pub world: usize,
}

/// A streaming dataset, as PyTorch's `IterableDataset`: samples come as a stream (token
/// shards, records, a database cursor) rather than by index. Each rank reads its own share,
/// which the dataset chooses from `rank` and `world`; its length for an epoch is known ahead
/// (PyTorch's `__len__`, which the trainer's progress and schedulers need).
///
/// Exact resume without replay: [`IterableDataset::stream`] opens the stream `skip` samples in
/// (a dataset seeks: a file offset, a record number), so a mid-epoch resume reads nothing
/// twice. Randomness should come from `SampleRng::new(ctx.seed, ctx.epoch, position)`.
///
/// ```
/// use lightning_core::data::{BoxError, IterableDataset, Sample, StreamContext};
/// use tch::Tensor;
///
/// /// The numbers `0..n`, rank `r` of `w` taking every `w`-th from `r`.
/// struct Counter { n: usize }
/// impl IterableDataset for Counter {
///     fn len(&self, _epoch: u64, rank: usize, world: usize) -> usize {
///         self.n.saturating_sub(rank).div_ceil(world)
///     }
///     fn stream(
///         &self,
///         ctx: &StreamContext,
///         skip: usize,
///     ) -> Result<Box<dyn Iterator<Item = Result<Sample, BoxError>> + Send>, BoxError> {
///         let first = ctx.rank + skip * ctx.world; // seek, do not replay
///         let it = (first..self.n).step_by(ctx.world);
///         Ok(Box::new(it.map(|i| Ok(Sample::new().push(Tensor::from(i as i64))))))
///     }
/// }
/// let ctx = StreamContext { seed: 0, epoch: 0, rank: 1, world: 2 };
/// assert_eq!(Counter { n: 7 }.len(0, 1, 2), 3);
/// assert_eq!(Counter { n: 7 }.stream(&ctx, 1)?.count(), 2);
/// # Ok::<(), BoxError>(())
/// ```
pub trait IterableDataset: Send + Sync {
    /// How many samples rank `rank` of `world` reads in `epoch`.
    fn len(&self, epoch: u64, rank: usize, world: usize) -> usize;
    /// This rank's samples of the epoch, from the `skip`-th on.
    #[allow(clippy::type_complexity)]
    fn stream(
        &self,
        ctx: &StreamContext,
        skip: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Sample, BoxError>> + Send>, BoxError>;
}

/// The random numbers of one sample's transform: a splitmix64 stream seeded from
/// `(seed, epoch, index)`, so a sample draws the same numbers whichever worker loads it, with
/// any number of workers, and again after a resume.
#[derive(Clone, Debug)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    /// The stream of sample `index` in `epoch` of a run seeded with `seed`.
    pub fn new(seed: u64, epoch: u64, index: u64) -> Self {
        SampleRng {
            state: mix_seed(seed, &[0x5A4D_504C, epoch, index]),
        }
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A float uniform in `[0, 1)` (53 random bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A float uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// An integer uniform in `0..n` (0 when `n` is 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
    /// `true` with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
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

// SAFETY: a loader's worker threads share the dataset by reference. TensorDataset never
// mutates its tensors after construction and only calls libtorch ops that read them
// (`index_select`, `narrow`, `select`), which are safe to run concurrently on one tensor (its
// storage's reference count is atomic, as when PyTorch's threads read a shared tensor).
// tch marks `Tensor` `Send` but not `Sync` only because a tensor may be mutated in place.
unsafe impl Sync for TensorDataset {}

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
    /// The tensors.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
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
            let tensors = self
                .tensors
                .iter()
                .map(|t| t.index_select(0, &idx))
                .collect();
            TensorDataset { tensors, len: l }
        });
        Ok(parts)
    }
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(0)
    }
    fn get(&self, index: usize, _rng: &mut SampleRng) -> Result<Sample, BoxError> {
        let i = i64::try_from(index)?;
        if i >= self.len {
            return Err(format!("index {index} out of range for {} rows", self.len).into());
        }
        Ok(Sample::from_tensors(
            self.tensors.iter().map(|t| t.get(i)).collect(),
        ))
    }
    fn get_batch(&self, indices: &[usize]) -> Option<Result<Batch, BoxError>> {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len) {
            return Some(Err(format!(
                "index {bad} out of range for {} rows",
                self.len
            )
            .into()));
        }
        // consecutive rows: views, no copy
        let consecutive = idx.windows(2).all(|w| w[1] == w[0] + 1);
        Some(Ok(match (consecutive, idx.first(), idx.last()) {
            (true, Some(&a), Some(&b)) => self.slice(a, b + 1),
            _ => self.gather(&Tensor::from_slice(&idx)),
        }))
    }
}

/// A random permutation of `0..n` from a splitmix64 stream (stable across platforms and
/// crate versions, so a resumed run sees the same order).
pub fn permutation(n: i64, seed: u64) -> Vec<i64> {
    let mut rng = SampleRng { state: seed };
    let mut v: Vec<i64> = (0..n).collect();
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_rng_depends_only_on_seed_epoch_and_index() {
        let draw = |s, e, i| {
            let mut r = SampleRng::new(s, e, i);
            (r.next_u64(), r.uniform(), r.below(10))
        };
        assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
        assert_ne!(draw(1, 2, 3), draw(1, 2, 4));
        assert_ne!(draw(1, 2, 3), draw(1, 3, 3));
        assert_ne!(draw(1, 2, 3), draw(2, 2, 3));
        let mut r = SampleRng::new(0, 0, 0);
        for _ in 0..1000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(7) < 7);
            let x = r.range(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&x));
        }
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn tensor_dataset_rows_match_its_batches() {
        let x = Tensor::arange(12, tch::kind::FLOAT_CPU).view([6, 2]);
        let ds = TensorDataset::new(vec![x, Tensor::arange(6, tch::kind::INT64_CPU)]).unwrap();
        let mut rng = SampleRng::new(0, 0, 0);
        let s = ds.get(4, &mut rng).unwrap();
        assert_eq!(s.len(), 2);
        let b = ds.get_batch(&[4, 1]).unwrap().unwrap();
        assert_eq!(Vec::<i64>::try_from(&b[1]).unwrap(), vec![4, 1]);
        let c = ds.get_batch(&[2, 3, 4]).unwrap().unwrap();
        assert_eq!(Vec::<i64>::try_from(&c[1]).unwrap(), vec![2, 3, 4]);
        assert!(ds.get(6, &mut rng).is_err());
        assert!(ds.get_batch(&[0, 6]).unwrap().is_err());
    }
}
