//! `DistributedSampler` against PyTorch's `torch.utils.data.DistributedSampler`: the same
//! indices for every (n, world, rank, seed, epoch, shuffle, drop_last) case, all computed by
//! one Python process; and `torch_randperm` against libtorch's own `randperm`.

use lightning_core::data::{torch_randperm, DistributedSampler};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// Reads the cases (JSON) from argv[1] and prints, for each, the sampler's indices after
/// `set_epoch(epoch)`.
const SCRIPT: &str = r#"
import json, sys
from torch.utils.data import DistributedSampler
out = []
for c in json.loads(sys.argv[1]):
    s = DistributedSampler(range(c["n"]), num_replicas=c["world"], rank=c["rank"],
                           shuffle=c["shuffle"], seed=c["seed"], drop_last=c["drop_last"])
    s.set_epoch(c["epoch"])
    idx = list(s)
    assert len(idx) == len(s)
    out.append(idx)
print(json.dumps(out))
"#;

struct Case {
    n: usize,
    world: usize,
    rank: usize,
    seed: u64,
    epoch: u64,
    shuffle: bool,
    drop_last: bool,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let grid =
        |ns: &[usize], worlds: &[usize], seeds: &[u64], epochs: &[u64], v: &mut Vec<Case>| {
            for &n in ns {
                for &world in worlds {
                    for rank in 0..world {
                        for &seed in seeds {
                            for &epoch in epochs {
                                for shuffle in [true, false] {
                                    for drop_last in [true, false] {
                                        v.push(Case {
                                            n,
                                            world,
                                            rank,
                                            seed,
                                            epoch,
                                            shuffle,
                                            drop_last,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
    grid(
        &[0, 1, 7, 10, 17, 100],
        &[1, 2, 3, 4],
        &[0, 42],
        &[0, 3],
        &mut v,
    );
    // Larger n and world; seeds past 32 bits (only the low 32 matter) and `seed + epoch`
    // crossing 2**32.
    grid(
        &[2, 5, 1000],
        &[5, 8],
        &[(1 << 32) + 7, (1 << 32) - 1],
        &[3],
        &mut v,
    );
    v
}

#[test]
fn indices_equal_pytorchs_distributed_sampler() {
    let cases = cases();
    let arg = Value::Array(
        cases
            .iter()
            .map(|c| {
                json!({"n": c.n, "world": c.world, "rank": c.rank, "seed": c.seed,
                       "epoch": c.epoch, "shuffle": c.shuffle, "drop_last": c.drop_last})
            })
            .collect(),
    )
    .to_string();
    let Some(out) = lightning_testkit::run_python(SCRIPT, &[&arg]) else {
        return;
    };
    let out = out.unwrap();
    let expected: Vec<Vec<i64>> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(expected.len(), cases.len());
    for (c, want) in cases.iter().zip(&expected) {
        let mut s = DistributedSampler::new(c.n, c.world, c.rank)
            .unwrap()
            .shuffle(c.shuffle)
            .seed(c.seed)
            .drop_last(c.drop_last);
        s.set_epoch(c.epoch);
        assert_eq!(
            &s.indices(),
            want,
            "n={} world={} rank={} seed={} epoch={} shuffle={} drop_last={}",
            c.n,
            c.world,
            c.rank,
            c.seed,
            c.epoch,
            c.shuffle,
            c.drop_last
        );
        assert_eq!(s.len(), want.len());
    }
}

/// `torch_randperm(n, seed)` is libtorch's `randperm` after seeding the default CPU
/// generator with `seed` (under the binary's lock: other tests here seed it too).
fn check_against_libtorch(n: usize, seed: u64) {
    let _serial = lightning_testkit::serial();
    tch::manual_seed(seed as i64);
    let theirs = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
    let ours = torch_randperm(n, seed);
    assert_eq!(theirs.size(), [n as i64]);
    // In chunks, so that the large case holds one extra copy at most per chunk.
    let chunk = 1 << 22;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let t = Vec::<i64>::try_from(theirs.narrow(0, start as i64, len as i64)).unwrap();
        assert!(
            t == ours[start..start + len],
            "randperm({n}) seed {seed} differs in [{start}, {})",
            start + len
        );
    }
}

#[test]
fn randperm_equals_libtorchs() {
    for seed in [0u64, 1, 42, 12345, (1 << 32) + 9] {
        for n in [0usize, 1, 2, 3, 10, 623, 624, 625, 5000] {
            check_against_libtorch(n, seed);
        }
    }
}

// From `uint32 max / 20` samples on, PyTorch switches to another shuffle (64-bit draws);
// `torch_randperm` implements it too. Checking it needs two 1.7 GB permutations and ~2 minutes
// in a debug build, too much for CI: it was compared with libtorch's once by hand (n =
// u32::MAX / 20, seed 3: equal) when it was written.
