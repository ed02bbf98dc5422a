//! A libFuzzer-free fuzzer on stable Rust: mutates the seeds (bit flips, byte sets, 32-bit
//! length overwrites, truncation, splices, inserted opcodes) for a time budget and runs
//! [`lightning_core_fuzz::check`] on each; panics (findings) are caught, saved, and counted.
//!
//! Usage: `cargo run --release --features fallback --bin fallback -- [SECONDS] [SEED]`

use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let i = rng.below(b.len());
        match rng.below(7) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = rng.next() as u8,
            2 if b.len() > i + 4 => {
                let v = [u32::MAX, 0x7FFF_FFFF, 1 << 31, rng.next() as u32][rng.below(4)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => b.truncate(i),
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let j = rng.below(other.len());
                let n = rng.below(64).min(other.len() - j);
                b.splice(i..i, other[j..j + n].iter().copied());
            }
            5 => {
                // pickle opcodes that build containers, memo, globals
                let ops: &[&[u8]] = &[b"]", b"}", b"(", b"t", b"a", b"u", b"h\x00", b"q\x00",
                    b"cos\nsystem\n", b"R", b"b", b"Q", b"\x8f", b"\x90", b"\x94", b"."];
                let op = ops[rng.below(ops.len())];
                b.splice(i..i, op.iter().copied());
            }
            _ => {
                let n = rng.below(16).min(b.len() - i);
                b.drain(i..i + n);
            }
        }
    }
    b
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut rng = Rng(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0x9E37_79B9_7F4A_7C15));
    let corpus = lightning_core_fuzz::seeds();
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let (mut runs, mut findings) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let pick = rng.below(corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        runs += 1;
        if std::panic::catch_unwind(|| lightning_core_fuzz::check(&input)).is_err() {
            findings += 1;
            let p = format!("finding-{findings}.ckpt");
            let _ = std::fs::write(&p, &input);
            eprintln!("finding: {p}");
        }
    }
    println!("{runs} inputs in {secs} s, {findings} findings");
    if findings > 0 {
        std::process::exit(1);
    }
}
