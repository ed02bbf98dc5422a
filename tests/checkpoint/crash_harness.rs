//! Kill -9 harness: a training run checkpointing every step (sync and async saves) is killed
//! with SIGKILL at seeded pseudo-random points, 16 times per mode, and resumed with
//! `--resume last` each time. After every kill, every `*.ckpt` in the checkpoint directory
//! must read back completely (`checkpoint::verify` and `checkpoint::load`), `last.ckpt` must
//! hold bitwise the same weights and optimizer state as the uninterrupted run's checkpoint of
//! the same step, and the finished run must end with bitwise the same state as a run never
//! killed. Children train with one intra-op thread: with more, libtorch's CPU kernels adapt
//! their threading to the machine's load and results differ in the last bits (~1e-6) between
//! two runs, killed or not.
//! A second test sends SIGTERM (preemption) instead: the process exits 0 after saving
//! `last.ckpt`, and resuming from it reaches the same final state.
//!
//! How the trainer process is run: `test-child crash-harness` (src/bin/test-child.rs; the
//! role, `lightning_testkit::roles::crash_harness`, is shared with this test) with `CRASH_HARNESS_ROOT` set trains with the
//! `Trainer` API (the same `ModelCheckpoint` setup as `examples/digits.rs`: top-k on a
//! metric, `save_last`, `every_n_train_steps`). The digits example binary itself is not used
//! because `cargo test --test checkpoint` (as CI and developers run it) does not build
//! examples, while it does build the package's binaries. Each child runs under a time limit.
//!
//! The kill points are seeded: `CRASH_HARNESS_SEED=<n>` replays a run (the seed is printed).
//! The model is wide (~130 k parameters, ~1.5 MB checkpoints with Adam state) so that a save
//! (write, fsync, rename, directory fsync) takes most of each step: kills land inside writes
//! (a temporary file is left behind), between the rename and the top-k bookkeeping, and in
//! the step itself. The harness prints how many kills interrupted a write.

use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_testkit::roles::crash_harness::{ASYNC, KEEP_ALL, RESUME, ROOT, STEPS};
use lightning_testkit::Supervised;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const KILLS_PER_MODE: usize = 16;
/// No training process may run longer (far more than the uninterrupted run needs): past it
/// the child is killed and the test fails instead of hanging.
const CHILD_LIMIT: Duration = Duration::from_secs(300);

fn spawn(root: &Path, asynchronous: bool, resume: bool) -> Supervised {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-child"));
    cmd.arg("crash-harness");
    if root.ends_with("reference") {
        cmd.env(KEEP_ALL, "1");
    }
    // One intra-op thread: bitwise reproducibility on CPU needs a fixed reduction order, and
    // BLAS/OpenMP otherwise adapt their thread use to the load (seen here as 1e-6 weight
    // differences when two harness tests ran at once).
    cmd.env("OMP_NUM_THREADS", "1").env("MKL_NUM_THREADS", "1");
    cmd.env(ROOT, root)
        .env(ASYNC, if asynchronous { "1" } else { "0" })
        .env(RESUME, if resume { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Supervised::spawn(&mut cmd, CHILD_LIMIT)
}

/// A small deterministic generator (splitmix64) for the kill points.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("CRASH_HARNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE)
}

/// Temporary files the atomic writer left (`.<name>.tmp-<pid>-<n>`): writes cut short.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    list(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        })
        .collect()
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under a final `.ckpt` name reads back completely; returns how many there are.
fn check_all_ckpts_load(dir: &Path, when: &str) -> usize {
    let mut n = 0;
    for p in list(dir) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            assert!(name.contains(".tmp-"), "{when}: unexpected file {name}");
            continue;
        }
        assert!(name.ends_with(".ckpt"), "{when}: unexpected file {name}");
        if let Err(e) = checkpoint::verify(&p) {
            panic!("{when}: {name} does not verify after the kill: {e}");
        }
        let v = checkpoint::load(&p).unwrap_or_else(|e| panic!("{when}: {name}: {e}"));
        assert!(
            v.get("state_dict").is_some() && v.get("global_step").is_some(),
            "{when}: {name} lacks state_dict/global_step"
        );
        n += 1;
    }
    n
}

/// name -> (kind, shape, bytes) of every tensor in the state dict and optimizer state.
type Tensors = Vec<(String, String, Vec<i64>, Vec<u8>)>;

fn final_state(path: &Path) -> (i64, Tensors) {
    let v = checkpoint::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let step = v.get("global_step").and_then(Value::as_i64).unwrap();
    let mut out = Tensors::new();
    for key in ["state_dict", "optimizer_states"] {
        let sub = v.get(key).unwrap_or_else(|| panic!("no {key}"));
        sub.visit_tensors(key, &mut |name, t| {
            let t = t.contiguous();
            let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut bytes, t.numel());
            out.push((name.to_owned(), format!("{:?}", t.kind()), t.size(), bytes));
        });
    }
    assert!(out.len() > 4, "too few tensors in {}", path.display());
    (step, out)
}

/// The uninterrupted run: its final state, and its directory with a checkpoint of every step.
fn reference() -> &'static ((i64, Tensors), PathBuf) {
    static REF: OnceLock<((i64, Tensors), PathBuf)> = OnceLock::new();
    REF.get_or_init(|| {
        // Under cargo's per-target temp dir (not /tmp): the ~180 MB are replaced each run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash_harness/reference");
        let _ = std::fs::remove_dir_all(&dir);
        let out = spawn(&dir, false, false).wait_with_output();
        assert!(
            out.status.success(),
            "reference run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = final_state(&dir.join("final.ckpt"));
        assert_eq!(r.0, STEPS);
        (r, dir.join("ck"))
    })
}

/// The uninterrupted run's checkpoint of global step `step`.
fn reference_at(step: i64) -> PathBuf {
    let pat = format!("-step={step}-");
    list(&reference().1)
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&pat))
        .unwrap_or_else(|| panic!("the reference run has no checkpoint of step {step}"))
}

fn assert_same_state(a: &(i64, Tensors), b: &(i64, Tensors), what: &str) {
    assert_eq!(a.0, b.0, "{what}: global_step differs");
    assert_eq!(a.1.len(), b.1.len(), "{what}: tensor count differs");
    for (x, y) in a.1.iter().zip(&b.1) {
        assert_eq!(
            (&x.0, &x.1, &x.2),
            (&y.0, &y.1, &y.2),
            "{what}: tensor layout"
        );
        if x.3 != y.3 {
            panic!(
                "{what}: {} differs bitwise (max |diff| {:e})",
                x.0,
                max_abs_diff(&x.3, &y.3, &x.1)
            );
        }
    }
}

/// The largest elementwise difference of two f32 buffers (NaN for other kinds).
fn max_abs_diff(a: &[u8], b: &[u8], kind: &str) -> f64 {
    if kind != "Float" {
        return f64::NAN;
    }
    let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .map(|(x, y)| (f(x) - f(y)).abs())
        .fold(0.0, f64::max)
}

/// What a run of the child ended with.
enum Outcome {
    Killed,
    Finished,
}

/// Runs one child; after `steps_before` step lines and a random delay within a step's
/// duration, sends `signal` (none: let it finish).
fn run_once(
    root: &Path,
    asynchronous: bool,
    resume: bool,
    kill: Option<(libc::c_int, u64, &mut Rng)>,
) -> (Outcome, std::process::ExitStatus, Vec<String>, String) {
    let mut child = spawn(root, asynchronous, resume);
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let mut outcome = Outcome::Finished;
    if let Some((sig, steps_before, rng)) = kill {
        let start = Instant::now();
        let mut times = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let is_step = line.starts_with("step ");
            seen.push(line);
            if is_step {
                times.push(Instant::now());
                if times.len() as u64 > steps_before {
                    // A random point within one step (+ save) period, measured in this run.
                    let period = times[times.len() - 1].duration_since(times[times.len() - 2]);
                    let micros = period.as_micros().max(1) as u64;
                    std::thread::sleep(Duration::from_micros(rng.below(micros)));
                    assert!(child.signal(sig), "the child exited before the signal");
                    outcome = Outcome::Killed;
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "child made no progress"
            );
        }
    }
    seen.extend(lines.map_while(Result::ok));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let status = child.wait();
    (outcome, status, seen, err)
}

fn kill_and_resume(asynchronous: bool) {
    let mode = if asynchronous { "async" } else { "sync" };
    let seed = seed() ^ asynchronous as u64;
    println!("{mode}: kill points from seed {seed} (CRASH_HARNESS_SEED replays)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let started = Instant::now();
    let (mut kills, mut mid_write, mut runs) = (0, 0, 0);
    let mut resume = false;
    // Per run: the steps it printed and the step `last.ckpt` held after it (for failures).
    let mut history = Vec::new();
    loop {
        runs += 1;
        assert!(runs < 3 * KILLS_PER_MODE, "{mode}: the run never finished");
        let temps_before = temp_files(&ck).len();
        if kills < KILLS_PER_MODE {
            // Kill 1..=2 steps after this process starts stepping.
            let steps_before = 1 + rng.below(2);
            let (outcome, status, lines, err) = run_once(
                dir.path(),
                asynchronous,
                resume,
                Some((libc::SIGKILL, steps_before, &mut rng)),
            );
            resume = true;
            if let Outcome::Finished = outcome {
                // It ended before the kill point: it must have finished cleanly.
                assert!(status.success(), "{mode}: {status}: {lines:?} {err}");
                break;
            }
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{mode}: {err}");
            kills += 1;
            if temp_files(&ck).len() > temps_before {
                mid_write += 1;
            }
            let when = format!("{mode} kill {kills} (after {lines:?})");
            check_all_ckpts_load(&ck, &when);
            history.push(format!(
                "run {runs}: {:?}..{:?}, last.ckpt then at step {:?}, files {:?}",
                lines.iter().find(|l| l.starts_with("step ")),
                lines.iter().rev().find(|l| l.starts_with("step ")),
                checkpoint::load(&ck.join("last.ckpt"))
                    .ok()
                    .and_then(|v| v.get("global_step").and_then(Value::as_i64)),
                list(&ck)
                    .iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            ));
            if ck.join("last.ckpt").is_file() {
                let now = final_state(&ck.join("last.ckpt"));
                let want = final_state(&reference_at(now.0));
                assert_same_state(
                    &want,
                    &now,
                    &format!("{mode}: last.ckpt after kill {kills}; runs: {history:#?}"),
                );
            }
        } else {
            let (_, status, lines, err) = run_once(dir.path(), asynchronous, resume, None);
            assert!(
                status.success(),
                "{mode}: final run {status}: {lines:?} {err}"
            );
            assert!(
                lines.iter().any(|l| l == &format!("done step={STEPS}")),
                "{mode}: {lines:?}"
            );
            break;
        }
    }
    let n = check_all_ckpts_load(&ck, &format!("{mode} end"));
    assert!(ck.join("last.ckpt").is_file(), "{mode}: no last.ckpt");
    println!(
        "{mode}: {kills} SIGKILLs in {runs} runs ({mid_write} cut a write short, leaving a temp \
         file), {n} checkpoints all load, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= KILLS_PER_MODE, "{mode}: only {kills} kills");
    let got = final_state(&dir.path().join("final.ckpt"));
    assert_same_state(
        &reference().0,
        &got,
        &format!("{mode}: killed {kills}x and resumed vs uninterrupted; runs: {history:#?}"),
    );
}

#[test]
fn sigkill_during_sync_saves_loses_nothing_and_resume_is_exact() {
    kill_and_resume(false);
}

#[test]
fn sigkill_during_async_saves_loses_nothing_and_resume_is_exact() {
    kill_and_resume(true);
}

/// SIGTERM (preemption) at seeded points, async saves: exit 0, `last.ckpt` holds the step it
/// stopped at, and resuming (three preemptions in a row) reaches the uninterrupted state.
#[test]
fn sigterm_preemption_saves_and_resume_is_exact() {
    let mut rng = Rng(seed() ^ 0xFEED);
    let dir = tempfile::tempdir().unwrap();
    let mut resume = false;
    for i in 0..3 {
        let steps_before = 2 + rng.below(8);
        let (outcome, status, lines, err) = run_once(
            dir.path(),
            true,
            resume,
            Some((libc::SIGTERM, steps_before, &mut rng)),
        );
        resume = true;
        assert!(matches!(outcome, Outcome::Killed), "preemption {i}");
        assert!(status.success(), "preemption {i}: {status}: {err}");
        let summary = lines
            .iter()
            .find(|l| l.starts_with("preempted step="))
            .unwrap_or_else(|| panic!("preemption {i}: no summary in {lines:?} {err}"));
        let step: i64 = summary.rsplit('=').next().unwrap().parse().unwrap();
        let last = checkpoint::load(&dir.path().join("ck/last.ckpt")).unwrap();
        assert_eq!(
            last.get("global_step").and_then(Value::as_i64),
            Some(step),
            "preemption {i}: last.ckpt is not the step the run stopped at"
        );
        assert!(
            temp_files(&dir.path().join("ck")).is_empty(),
            "a clean stop leaves no temp file"
        );
        check_all_ckpts_load(&dir.path().join("ck"), &format!("preemption {i}"));
    }
    let (_, status, lines, err) = run_once(dir.path(), true, true, None);
    assert!(status.success(), "{lines:?} {err}");
    let got = final_state(&dir.path().join("final.ckpt"));
    assert_same_state(
        &reference().0,
        &got,
        "preempted 3x and resumed vs uninterrupted",
    );
}
