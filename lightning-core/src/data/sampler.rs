//! [`DistributedSampler`]: each rank's share of a dataset's indices, identical to PyTorch's
//! `torch.utils.data.DistributedSampler`, and [`torch_randperm`], the permutation it shuffles
//! with (PyTorch's CPU `randperm` from a generator seeded with `seed + epoch`).

use super::error::DataError;

/// Each rank's share of a dataset's indices, as PyTorch's
/// `torch.utils.data.DistributedSampler(dataset, num_replicas, rank, shuffle, seed, drop_last)`
/// after `set_epoch(epoch)`: the same indices in the same order.
///
/// With `shuffle` (the default) the indices are `torch.randperm(n)` from a generator seeded
/// with `seed + epoch` ([`torch_randperm`]), else `0..n`. Without `drop_last` (the default)
/// they are padded by repeating them from the start up to a multiple of `num_replicas` (so a
/// few samples appear twice in an epoch); with it the tail is cut to such a multiple. Rank
/// `r` then takes every `num_replicas`-th index from position `r`, so the ranks' shares
/// partition the padded (or trimmed) indices and all have [`DistributedSampler::len`] of them.
///
/// Every rank must use the same `seed` and epoch, or their shares overlap.
///
/// ```
/// use lightning_core::data::DistributedSampler;
/// // 10 samples over 3 ranks: padded to 12, so each rank gets 4.
/// let s = DistributedSampler::new(10, 3, 1)?.shuffle(false);
/// assert_eq!(s.indices(), vec![1, 4, 7, 0]);
/// assert_eq!(s.len(), 4);
/// // Trimmed to 9 with drop_last: 3 each.
/// assert_eq!(s.clone().drop_last(true).indices(), vec![1, 4, 7]);
/// // Shuffled (the default) from seed + epoch, as PyTorch.
/// let mut s = s.shuffle(true).seed(42);
/// s.set_epoch(3);
/// assert_eq!(s.indices().len(), 4);
/// assert!(DistributedSampler::new(10, 3, 3).is_err()); // rank must be < num_replicas
/// # Ok::<(), lightning_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributedSampler {
    dataset_len: usize,
    num_replicas: usize,
    rank: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    epoch: u64,
}

impl DistributedSampler {
    /// The share of rank `rank` out of `num_replicas` for a dataset of `dataset_len` samples,
    /// shuffled with seed 0 at epoch 0 and padded (PyTorch's defaults).
    ///
    /// Errors, with PyTorch's message, unless `rank < num_replicas`.
    pub fn new(dataset_len: usize, num_replicas: usize, rank: usize) -> Result<Self, DataError> {
        if rank >= num_replicas {
            return Err(DataError::Rank { rank, num_replicas });
        }
        Ok(DistributedSampler {
            dataset_len,
            num_replicas,
            rank,
            shuffle: true,
            seed: 0,
            drop_last: false,
            epoch: 0,
        })
    }
    /// Shuffle the indices every epoch (default `true`).
    pub fn shuffle(mut self, on: bool) -> Self {
        self.shuffle = on;
        self
    }
    /// The seed shuffling starts from (default 0); the same on every rank.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Cut the tail so the indices divide evenly, instead of padding (default `false`).
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }
    /// Sets the epoch, which (with the seed) decides the shuffled order; call it before each
    /// epoch, as PyTorch's `set_epoch`.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }
    /// The epoch set by [`DistributedSampler::set_epoch`] (0 until then).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// The number of ranks.
    pub fn num_replicas(&self) -> usize {
        self.num_replicas
    }
    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// The seed.
    pub fn seed_value(&self) -> u64 {
        self.seed
    }
    /// Whether the indices are shuffled.
    pub fn is_shuffled(&self) -> bool {
        self.shuffle
    }
    /// Whether the tail is cut rather than padded.
    pub fn drops_last(&self) -> bool {
        self.drop_last
    }
    /// The dataset's length.
    pub fn dataset_len(&self) -> usize {
        self.dataset_len
    }
    /// The number of indices of each rank (PyTorch's `num_samples`, `len(sampler)`).
    pub fn len(&self) -> usize {
        let (n, w) = (self.dataset_len, self.num_replicas);
        if self.drop_last {
            // PyTorch: ceil((n - w) / w) when n % w != 0, else n / w; both are n / w.
            n / w
        } else {
            n.div_ceil(w)
        }
    }
    /// Whether this rank gets no indices.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The number of indices over all ranks (PyTorch's `total_size`).
    pub fn total_size(&self) -> usize {
        self.len() * self.num_replicas
    }
    /// This rank's indices for the current epoch, in order (PyTorch's `list(sampler)`).
    pub fn indices(&self) -> Vec<i64> {
        let n = self.dataset_len;
        if n == 0 {
            return Vec::new();
        }
        let all: Vec<i64> = if self.shuffle {
            torch_randperm(n, self.seed.wrapping_add(self.epoch))
        } else {
            (0..n as i64).collect()
        };
        // Padding repeats the indices from the start (as often as needed); trimming keeps a
        // prefix: either way position `p` of the padded/trimmed list holds `all[p % n]`.
        (0..self.len())
            .map(|k| all[(self.rank + k * self.num_replicas) % n])
            .collect()
    }
}

/// `torch.randperm(n, generator=g).tolist()` after `g = torch.Generator(); g.manual_seed(seed)`
/// (CPU): PyTorch's Fisher-Yates shuffles driven by its MT19937 engine, reproduced here so
/// that no global generator is touched (tch exposes no `torch.Generator`). As in PyTorch,
/// only the seed's low 32 bits matter.
pub fn torch_randperm(n: usize, seed: u64) -> Vec<i64> {
    let mut g = Mt19937::new(seed);
    let mut r: Vec<i64> = Vec::with_capacity(n);
    // ATen's randperm_cpu: `n < uint32 max / 20` keeps the original swap-forward shuffle
    // with 32-bit draws; larger `n` use the inside-out variant with 64-bit draws.
    if (n as u64) < u64::from(u32::MAX / 20) {
        r.extend(0..n as i64);
        for i in 0..n.saturating_sub(1) {
            let z = g.next_u32() as usize % (n - i);
            r.swap(i, i + z);
        }
    } else {
        for i in 0..n {
            let z = (g.next_u64() % (i as u64 + 1)) as usize;
            r.push(i as i64);
            r[i] = r[z];
            r[z] = i as i64;
        }
    }
    r
}

const MT_N: usize = 624;
const MT_M: usize = 397;

/// ATen's `at::mt19937` (the standard MT19937, seeded with the seed's low 32 bits).
struct Mt19937 {
    state: [u32; MT_N],
    next: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 { state, next: MT_N }
    }

    fn twist(&mut self) {
        for k in 0..MT_N {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % MT_N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// `CPUGeneratorImpl::random()`.
    fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `CPUGeneratorImpl::random64()`: the first draw is the high half.
    fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (hi << 32) | lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_stream() {
        // std::mt19937 with the default seed 5489: its 10000th output is 4123659995.
        let mut g = Mt19937::new(5489);
        let first = g.next_u32();
        assert_eq!(first, 3_499_211_612);
        let mut g = Mt19937::new(5489);
        let v = (0..10_000).map(|_| g.next_u32()).last().unwrap();
        assert_eq!(v, 4_123_659_995);
    }

    #[test]
    fn randperm_matches_pytorch_for_known_seeds() {
        // torch.randperm(10, generator=torch.Generator().manual_seed(s)).tolist()
        assert_eq!(torch_randperm(0, 0), Vec::<i64>::new());
        assert_eq!(torch_randperm(1, 0), vec![0]);
        assert_eq!(torch_randperm(10, 0), vec![4, 1, 7, 5, 3, 9, 0, 8, 6, 2]);
        assert_eq!(torch_randperm(10, 42), vec![2, 6, 1, 8, 4, 5, 0, 9, 3, 7]);
        let p17 = vec![8, 15, 3, 2, 11, 12, 4, 10, 13, 0, 16, 6, 7, 14, 5, 9, 1];
        assert_eq!(torch_randperm(17, 45), p17);
        let mut p = torch_randperm(1000, 42);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        // Only the low 32 bits of the seed matter, as in PyTorch.
        assert_eq!(torch_randperm(50, 7), torch_randperm(50, (1 << 32) + 7));
    }

    #[test]
    fn bad_rank_errors_with_pytorchs_message() {
        let e = DistributedSampler::new(10, 2, 2).unwrap_err().to_string();
        assert_eq!(e, "Invalid rank 2, rank should be in the interval [0, 1]");
        let e = DistributedSampler::new(10, 0, 0).unwrap_err().to_string();
        assert_eq!(e, "Invalid rank 0, rank should be in the interval [0, -1]");
    }

    #[test]
    fn shards_partition_the_padded_or_trimmed_indices() {
        for n in [0usize, 1, 2, 5, 7, 10, 16, 17] {
            for w in 1..=5usize {
                for drop_last in [false, true] {
                    for shuffle in [false, true] {
                        let shards: Vec<Vec<i64>> = (0..w)
                            .map(|r| {
                                let mut s = DistributedSampler::new(n, w, r)
                                    .unwrap()
                                    .shuffle(shuffle)
                                    .seed(3)
                                    .drop_last(drop_last);
                                s.set_epoch(2);
                                assert_eq!(s.indices().len(), s.len());
                                s.indices()
                            })
                            .collect();
                        let len = shards[0].len();
                        assert!(shards.iter().all(|s| s.len() == len));
                        // Interleaving the shards gives the epoch's padded/trimmed order.
                        let total: Vec<i64> = (0..len * w).map(|p| shards[p % w][p / w]).collect();
                        let base: Vec<i64> = if shuffle && n > 0 {
                            torch_randperm(n, 5)
                        } else {
                            (0..n as i64).collect()
                        };
                        if drop_last {
                            assert_eq!(len, n / w);
                            assert_eq!(total, base[..len * w].to_vec());
                        } else {
                            assert_eq!(len, n.div_ceil(w));
                            let want: Vec<i64> = (0..len * w).map(|p| base[p % n]).collect();
                            assert_eq!(total, want);
                            let mut seen = total.clone();
                            seen.sort();
                            seen.dedup();
                            assert_eq!(seen.len(), n, "every sample is in some shard");
                        }
                    }
                }
            }
        }
    }
}
