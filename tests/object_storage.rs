//! Checkpoints on object storage (issue 13): the in-process `memory://` store, and a real S3
//! API server on the loopback interface (`moto_server` from the venv, which
//! `scripts/setup.sh` installs; under `LIGHTNING_RS_REQUIRE_PYTHON` a missing one fails the
//! test, elsewhere it is skipped with the reason).
//!
//! - `fit` with `s3://` (and `memory://`) checkpoints: top-k deletes, `last`, `ckpt_path=last`
//!   resumes bit for bit like a local run, `load_from_checkpoint` and `lightning-ckpt`-style
//!   reads from the URL.
//! - kill -9 during an upload: no partial object; the older object under the same name
//!   stays whole.
//! - the server disappears mid-upload: training stops with an error naming the URL.
//! - wrong credentials: a clear error naming the URL.
//! - an `s3://` `default_root_dir`: logs (CSV, TensorBoard) uploaded under
//!   `lightning_logs/version_N` (numbered from the bucket), default checkpoints beside them.
//!
//! The scenarios that kill something run in a child process: this test binary itself, with
//! [`CHILD`] naming what to do (each child under a watchdog).

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{Mode, ModelCheckpoint, SaveLast};
use lightning_core::checkpoint::{self, schema::RESUME_KEY};
use lightning_core::loggers::{CsvLogger, TensorBoardLogger};
use lightning_core::prelude::*;
use lightning_core::storage::{CheckpointIO, DefaultCheckpointIO};
use lightning_core::trainer::{CkptPath, Trainer, TrainerBuilder};
use lightning_core::Key;
use lightning_testkit::moto::Moto;
use lightning_testkit::Supervised;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use trainer_util::{data, Tiny, TinyHp};

/// Environment variable naming the child scenario.
const CHILD: &str = "OBJECT_STORAGE_CHILD";
/// The URL a child writes to.
const CHILD_URL: &str = "OBJECT_STORAGE_URL";

/// The shared server for in-process tests; its environment is set once, before any store
/// is opened (object_store reads it when a bucket's store is built).
fn shared_moto() -> Option<&'static Moto> {
    static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
    MOTO.get_or_init(|| {
        let m = Moto::start_for_process(false)?;
        for (k, v) in m.env() {
            // SAFETY: once per process, inside the OnceLock every test of this binary goes
            // through before it makes a client that reads these variables.
            unsafe { std::env::set_var(k, v) };
        }
        Some(m)
    })
    .as_ref()
}

fn builder(root: &Path) -> TrainerBuilder {
    Trainer::builder()
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .seed(11)
        .default_root_dir(root)
        .logger(false)
}

fn topk_last(dir: &str, last: SaveLast) -> ModelCheckpoint {
    ModelCheckpoint::builder()
        .dirpath(dir)
        .filename("{epoch}-{val_loss:.4f}")
        .monitor("val_loss")
        .mode(Mode::Min)
        .save_top_k(2)
        .save_last(last)
        .build()
        .unwrap()
}

/// Weights, optimizer and scheduler state, and position of a finished run.
fn final_state(m: &Tiny, t: &mut Trainer, path: &Path) -> Value {
    t.save_checkpoint(m, path, false).unwrap();
    let mut v = checkpoint::load(path).unwrap();
    for k in ["loops", RESUME_KEY, "callbacks"] {
        v.as_dict_mut().unwrap().shift_remove(&Key::from(k));
    }
    v
}

fn names(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = DefaultCheckpointIO
        .list(Path::new(dir))
        .unwrap()
        .into_iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Four epochs straight vs two + `ckpt_path=last` from `dir` (a URL): the same final state
/// as a local run; top-k keeps two files plus `last`; the files load from the URL.
fn fit_and_resume_on(dir: &str, last: SaveLast) {
    let _serial = trainer_util::serial(); // libtorch's RNG is process-global
    let local = tempfile::tempdir().unwrap();
    let straight = {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(local.path())
            .max_epochs(4)
            .enable_checkpointing(false)
            .build()
            .unwrap();
        t.fit(&mut m, &data(80, 8, true), None).unwrap();
        final_state(&m, &mut t, &local.path().join("straight.ckpt"))
    };
    for epochs in [2, 4] {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(local.path())
            .max_epochs(epochs)
            .callback(topk_last(dir, last))
            .build()
            .unwrap();
        let resume = (epochs == 4).then_some(CkptPath::Last);
        t.fit(&mut m, &data(80, 8, true), resume).unwrap();
        if epochs == 4 {
            assert_eq!(
                t.resumed_from().map(Path::to_path_buf),
                Some(PathBuf::from(format!("{dir}/last.ckpt"))),
                "resumed from the URL's last.ckpt"
            );
            let resumed = final_state(&m, &mut t, &local.path().join("resumed.ckpt"));
            assert_eq!(resumed, straight, "2 + resume on {dir} != 4 straight");
        }
    }
    let files = names(dir);
    assert_eq!(files.len(), 3, "top-2 and last: {files:?}");
    assert!(files.contains(&"last.ckpt".to_string()), "{files:?}");
    // nothing but whole checkpoints: no temporary objects
    for f in &files {
        let url = PathBuf::from(format!("{dir}/{f}"));
        checkpoint::verify(&url).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    // last.ckpt is the newest epoch's file; load_from_checkpoint reads it from the URL
    let last = checkpoint::load(Path::new(&format!("{dir}/last.ckpt"))).unwrap();
    assert_eq!(last.get("epoch").and_then(Value::as_i64), Some(3));
    let m = Tiny::load_from_checkpoint(format!("{dir}/last.ckpt")).unwrap();
    assert_eq!(m.hparams().hidden, TinyHp::default().hidden);
    // an hparams file on the store replaces the saved hyperparameters, as a local one does
    let yaml = local.path().join("hp.yaml");
    std::fs::write(&yaml, "hidden: 8\nlr: 0.25\n").unwrap();
    let url = PathBuf::from(format!("{dir}/hp.yaml"));
    lightning_core::storage::copy(&yaml, &url).unwrap();
    let m = Tiny::loader(format!("{dir}/last.ckpt"))
        .hparams_file(&url)
        .load()
        .unwrap();
    assert_eq!(m.hparams().lr, 0.25);
    DefaultCheckpointIO.remove_checkpoint(&url).unwrap();
}

#[test]
fn memory_store_fit_keeps_top_k_and_last_and_resumes_exactly() {
    fit_and_resume_on(
        &format!("memory://ckpts-{}/run", std::process::id()),
        SaveLast::True,
    );
}

#[test]
fn s3_fit_keeps_top_k_and_last_and_resumes_exactly() {
    let Some(moto) = shared_moto() else { return };
    moto.create_bucket("fit");
    // `last` as a link: a server-side copy on object storage
    fit_and_resume_on("s3://fit/run/a", SaveLast::Link);
    // the bucket holds nothing else: no temp objects, no stray multipart uploads
    assert_eq!(moto.uploads_in_progress("fit"), 0);
}

#[test]
fn s3_missing_bucket_and_missing_object_are_clear_errors() {
    let Some(moto) = shared_moto() else { return };
    let mut v = Value::dict();
    v.insert("epoch", 1i64);
    let e = checkpoint::save(Path::new("s3://no-such-bucket/x.ckpt"), &v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3://no-such-bucket/x.ckpt"), "{e}");
    assert!(e.contains("NoSuchBucket") || e.contains("404"), "{e}");
    moto.create_bucket("errs");
    let e = checkpoint::load(Path::new("s3://errs/absent.ckpt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("s3://errs/absent.ckpt") && e.contains("no such object"),
        "{e}"
    );
}

/// Runs this test binary as a child with `scenario` and `env`, stdout piped.
fn spawn_child(scenario: &str, url: &str, env: &[(&str, String)]) -> Supervised {
    spawn_child_without(scenario, url, env, &[])
}

/// [`spawn_child`], with the variables `remove` taken out of the inherited environment.
fn spawn_child_without(
    scenario: &str,
    url: &str,
    env: &[(&str, String)],
    remove: &[&str],
) -> Supervised {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    for k in remove {
        cmd.env_remove(k);
    }
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .env(CHILD_URL, url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Supervised::spawn(&mut cmd, Duration::from_secs(120))
}

/// A checkpoint dict with one `n`-float tensor filled with `fill`.
fn blob(n: i64, fill: f64) -> Value {
    let mut v = Value::dict();
    v.insert("fill", fill);
    v.insert("w", Tensor::full([n], fill, (Kind::Float, Device::Cpu)));
    v
}

/// The child side of the kill tests (does nothing in a normal test run).
#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD) else {
        return;
    };
    let url = PathBuf::from(std::env::var(CHILD_URL).unwrap());
    let out = match scenario.as_str() {
        // A small file, then a large one (many parts) to the same name.
        "overwrite" => (|| {
            checkpoint::save(&url, &blob(1000, 1.0))?;
            println!("first saved");
            checkpoint::save(&url, &blob(96 << 20, 2.0))?;
            println!("second saved");
            Ok::<(), checkpoint::CheckpointError>(())
        })()
        .map_err(|e| e.to_string()),
        // Training with a 100 MB checkpoint every epoch to `url`.
        "fit" => (|| {
            let hp = TinyHp {
                hidden: 1 << 20,
                ..TinyHp::default()
            };
            let (mut m, _vs) = Tiny::new(hp, 3);
            let dir = tempfile::tempdir().unwrap();
            let mc = ModelCheckpoint::builder()
                .dirpath(&url)
                .filename("{epoch}")
                .save_top_k(-1)
                .build()?;
            let mut t = builder(dir.path()).max_epochs(100).callback(mc).build()?;
            t.fit(&mut m, &data(16, 8, false), None)
        })()
        .map_err(|e| e.to_string()),
        "small" => checkpoint::save(&url, &blob(10, 1.0)).map_err(|e| e.to_string()),
        other => Err(format!("unknown scenario {other}")),
    };
    match out {
        Ok(()) => println!("child done"),
        Err(e) => {
            println!("child error: {e}");
            std::io::stdout().flush().unwrap();
            std::process::exit(3);
        }
    }
}

/// Reads the child's stdout lines until one satisfies `until` (or the child ends).
fn read_until(lines: &mut impl Iterator<Item = String>, until: &str) -> Vec<String> {
    let mut seen = vec![];
    for l in lines.by_ref() {
        let done = l.contains(until);
        seen.push(l);
        if done {
            break;
        }
    }
    seen
}

fn wait_for_upload(moto: &Moto, bucket: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.uploads_in_progress(bucket) == 0 {
        assert!(Instant::now() < deadline, "no upload started: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_during_an_upload_leaves_no_partial_object_and_keeps_the_old_one() {
    // A server of its own: the child gets its environment, nothing global changes here.
    let Some(moto) = Moto::start(false) else {
        return;
    };
    moto.create_bucket("kill");
    let url = "s3://kill/run/last.ckpt";
    let mut child = spawn_child("overwrite", url, &moto.env());
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let seen = read_until(&mut lines, "first saved");
    assert!(seen.iter().any(|l| l.ends_with("first saved")), "{seen:?}");
    wait_for_upload(&moto, "kill", "the 384 MB save");
    assert!(child.signal(libc::SIGKILL), "the child was still uploading");
    child.wait();
    let listing = moto.http("GET", "/kill?list-type=2&prefix=run/");
    assert_eq!(
        listing.matches("<Key>").count(),
        1,
        "only the first object is visible: {listing}"
    );
    let head = moto.http("HEAD", "/kill/run/last.ckpt");
    let len: u64 = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Content-Length: ")
                .or(l.strip_prefix("content-length: "))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{head}"));
    assert!(
        len < 1 << 20,
        "the old small file is still there ({len} bytes)"
    );
    assert_eq!(
        moto.uploads_in_progress("kill"),
        1,
        "the killed upload is an invisible, incomplete multipart upload"
    );
}

#[test]
fn a_server_gone_mid_upload_stops_training_with_an_error_naming_the_url() {
    let Some(mut moto) = Moto::start(false) else {
        return;
    };
    moto.create_bucket("gone");
    let url = "s3://gone/ck";
    let mut child = spawn_child("fit", url, &moto.env());
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        BufReader::new(stdout).read_to_string(&mut s).unwrap();
        s
    });
    // one checkpoint lands, then the server dies during the next upload
    let deadline = Instant::now() + Duration::from_secs(60);
    while !moto.http("GET", "/gone?list-type=2").contains("<Key>") {
        assert!(Instant::now() < deadline, "no checkpoint landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_upload(&moto, "gone", "the second epoch's save");
    moto.kill();
    let status = child.wait();
    let out = reader.join().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "training stopped with an error: {out}"
    );
    let err = out
        .lines()
        .find_map(|l| l.split_once("child error:").map(|(_, e)| e))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(err.contains("s3://gone/ck/epoch="), "names the URL: {err}");
    assert!(err.contains(".ckpt"), "{err}");
}

#[test]
fn wrong_credentials_are_a_clear_error_naming_the_url() {
    let Some(moto) = Moto::start(true) else {
        return;
    };
    let url = "s3://creds/x.ckpt";
    let child = spawn_child("small", url, &moto.env());
    let out = child.wait_with_output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&format!("{url}: uploading")),
        "names the URL: {text}"
    );
    assert!(
        text.contains("InvalidAccessKeyId") || text.contains("403"),
        "says the key is refused: {text}"
    );
}

#[test]
fn an_aws_profile_supplies_keys_region_and_endpoint() {
    // Only the shared AWS files say where the server is and which keys to use (as boto, so
    // s3fs, reads them): no AWS_ENDPOINT, no keys, no region in the child's environment.
    let Some(moto) = shared_moto() else { return };
    moto.create_bucket("profile");
    let dir = tempfile::tempdir().unwrap();
    let (credentials, config) = (dir.path().join("credentials"), dir.path().join("config"));
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = WRONG\n\n[lab]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[profile lab]\nregion = us-east-1\nendpoint_url = {}\n",
            moto.endpoint()
        ),
    )
    .unwrap();
    let aws = [
        "AWS_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
    ];
    let files = |profile: &str| {
        vec![
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                credentials.display().to_string(),
            ),
            ("AWS_CONFIG_FILE", config.display().to_string()),
            ("AWS_PROFILE", profile.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            (lightning_core::storage::RETRIES_ENV, "0".to_string()),
        ]
    };
    let url = "s3://profile/x.ckpt";
    let out = spawn_child_without("small", url, &files("lab"), &aws).wait_with_output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let listing = moto.http("GET", "/profile");
    assert!(listing.contains("<Key>x.ckpt</Key>"), "{listing}");
    // A profile neither file has is an error that names it.
    let out = spawn_child_without("small", url, &files("nope"), &aws).wait_with_output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("AWS_PROFILE=\"nope\""), "{text}");
}

#[test]
fn an_object_storage_root_holds_the_logs_and_the_default_checkpoints() {
    let Some(moto) = shared_moto() else { return };
    moto.create_bucket("root");
    let root = "s3://root/exp";
    let _serial = trainer_util::serial();
    for run in 0..2 {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = Trainer::builder()
            .enable_progress_bar(false)
            .enable_model_summary(false)
            .seed(11)
            .default_root_dir(root)
            .logger((TensorBoardLogger::default(), CsvLogger::default()))
            .max_epochs(2)
            .build()
            .unwrap();
        t.fit(&mut m, &data(40, 8, true), None).unwrap();
        // versions are numbered from what the bucket holds
        let log_dir = format!("{root}/lightning_logs/version_{run}");
        assert_eq!(t.log_dir(), Some(PathBuf::from(&log_dir)));
        let mut files = names(&log_dir);
        files.retain(|f| !f.starts_with("events.out.tfevents."));
        assert_eq!(files, ["hparams.yaml", "metrics.csv"], "{log_dir}");
        assert_eq!(
            DefaultCheckpointIO
                .list(Path::new(&log_dir))
                .unwrap()
                .iter()
                .filter(|f| f.path.to_string_lossy().contains("events.out.tfevents."))
                .count(),
            1,
            "one TensorBoard event file"
        );
        let csv =
            lightning_core::storage::read(Path::new(&format!("{log_dir}/metrics.csv"))).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(csv.starts_with("epoch,"), "{csv}");
        assert!(
            csv.lines().count() >= 3,
            "a header and a row per epoch: {csv}"
        );
        // the default ModelCheckpoint writes to <log_dir>/checkpoints (Lightning's rule)
        assert_eq!(
            names(&format!("{log_dir}/checkpoints")),
            ["epoch=1-step=8.ckpt"]
        );
    }
}

#[test]
fn later_fits_of_one_trainer_keep_logging_to_the_object_storage_root() {
    let root = format!("memory://refit-{}/exp", std::process::id());
    let _serial = trainer_util::serial();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    // given loggers keep their version across fits; the default CSV logger starts a new one
    for (loggers, dirs) in [
        (true, ["version_0", "version_0"]),
        (false, ["version_1", "version_2"]),
    ] {
        let b = builder(Path::new(&root)).max_epochs(1);
        let mut t = match loggers {
            true => b.logger((TensorBoardLogger::default(), CsvLogger::default())),
            false => b.logger(true),
        }
        .build()
        .unwrap();
        for (fit, dir) in dirs.iter().enumerate() {
            t.fit(&mut m, &data(40, 8, true), None).unwrap();
            let log_dir = format!("{root}/lightning_logs/{dir}");
            assert_eq!(t.log_dir(), Some(PathBuf::from(&log_dir)), "fit {fit}");
            let csv = lightning_core::storage::read(Path::new(&format!("{log_dir}/metrics.csv")))
                .unwrap_or_else(|e| panic!("fit {fit}: {e}"));
            assert!(String::from_utf8(csv).unwrap().starts_with("epoch,"));
        }
    }
}

#[test]
fn loggers_with_their_own_object_storage_save_dir_upload_there() {
    // A local root; the loggers' own save_dir is a bucket (Lightning's
    // `CSVLogger("s3://...")`). Before, this wrote a local folder named `memory:`.
    let remote = format!("memory://own-logs-{}/exp", std::process::id());
    let local = tempfile::tempdir().unwrap();
    let _serial = trainer_util::serial();
    for run in 0..2 {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(local.path())
            .max_epochs(2)
            .logger((
                CsvLogger::new(&remote),
                TensorBoardLogger::new(&remote).with_name("tb"),
            ))
            .build()
            .unwrap();
        t.fit(&mut m, &data(40, 8, true), None).unwrap();
        // versions come from the bucket; the first logger's dir is the trainer's log_dir
        let csv_dir = format!("{remote}/lightning_logs/version_{run}");
        assert_eq!(t.log_dir(), Some(PathBuf::from(&csv_dir)));
        let csv = lightning_core::storage::read(Path::new(&format!("{csv_dir}/metrics.csv")))
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.starts_with("epoch,") && csv.lines().count() >= 3,
            "{csv}"
        );
        let tb = names(&format!("{remote}/tb/version_{run}"));
        assert!(
            tb.iter().any(|f| f.starts_with("events.out.tfevents."))
                && tb.contains(&"hparams.yaml".to_string()),
            "{tb:?}"
        );
        // the default checkpoints follow the first logger's directory
        assert_eq!(
            names(&format!("{csv_dir}/checkpoints")),
            ["epoch=1-step=8.ckpt"]
        );
    }
    // nothing landed locally, neither under the root nor as a folder named after the scheme
    assert!(!Path::new("memory:").exists());
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 0);
}

/// A `CheckpointIO` that records every call, then does what the default does.
#[derive(Debug, Default)]
struct Recording {
    calls: std::sync::Mutex<Vec<String>>,
}

impl Recording {
    fn note(&self, what: &str, path: &Path) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        self.calls.lock().unwrap().push(format!("{what} {name}"));
    }
    fn saw(&self, what: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.starts_with(what)).count()
    }
}

impl CheckpointIO for &'static Recording {
    fn save_checkpoint(&self, c: &Value, p: &Path) -> Result<(), checkpoint::CheckpointError> {
        self.note("save", p);
        DefaultCheckpointIO.save_checkpoint(c, p)
    }
    fn load_checkpoint(&self, p: &Path) -> Result<Value, checkpoint::CheckpointError> {
        self.note("load", p);
        DefaultCheckpointIO.load_checkpoint(p)
    }
    fn remove_checkpoint(&self, p: &Path) -> Result<(), checkpoint::CheckpointError> {
        self.note("remove", p);
        DefaultCheckpointIO.remove_checkpoint(p)
    }
    fn exists(&self, p: &Path) -> Result<bool, checkpoint::CheckpointError> {
        self.note("exists", p);
        DefaultCheckpointIO.exists(p)
    }
    fn list(
        &self,
        d: &Path,
    ) -> Result<Vec<lightning_core::storage::StoredFile>, checkpoint::CheckpointError> {
        self.note("list", d);
        DefaultCheckpointIO.list(d)
    }
    fn link(&self, t: &Path, l: &Path) -> Result<(), checkpoint::CheckpointError> {
        self.note("link", l);
        DefaultCheckpointIO.link(t, l)
    }
}

#[test]
fn a_custom_checkpoint_io_handles_every_file_the_trainer_touches() {
    let _serial = trainer_util::serial();
    let io: &'static Recording = Box::leak(Box::default());
    let dir = format!("memory://custom-io-{}/run", std::process::id());
    let local = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    for (epochs, resume) in [(2, None), (3, Some(CkptPath::Last))] {
        let mut t = builder(local.path())
            .max_epochs(epochs)
            .checkpoint_io(io)
            .callback(topk_last(&dir, SaveLast::Link))
            .build()
            .unwrap();
        if resume.is_none() {
            // a manual save before any fit goes through it too
            t.save_checkpoint(&m, format!("{dir}/manual.ckpt"), true)
                .unwrap();
            assert_eq!(io.saw("save manual.ckpt"), 1);
        }
        t.fit(&mut m, &data(80, 8, true), resume).unwrap();
    }
    for what in ["save", "remove", "exists", "list", "link", "load"] {
        assert!(
            io.saw(what) > 0,
            "no {what} call: {:?}",
            io.calls.lock().unwrap()
        );
    }
    // the resume read the `last` file through it (verify's default loads it, then the load)
    assert!(
        io.saw("load last.ckpt") >= 2,
        "{:?}",
        io.calls.lock().unwrap()
    );
}

/// Lightning's sharded FSDP layout on `s3://` (the moto server), written by 2 ranks (the
/// `fsdp` role of the test-child binary): every rank uploads its shard file, rank 0 `meta.pt`
/// then `.metadata`; top-k replaces prefixes, `last.ckpt` is rewritten in place without
/// leaving the older save's shards behind, and 1 epoch + `ckpt_path=last` from the bucket
/// ends bit for bit where 2 straight epochs end.
#[test]
fn s3_fsdp_sharded_checkpoints_are_written_by_every_rank_and_resume_exactly() {
    let Some(moto) = shared_moto() else { return };
    moto.create_bucket("fsdp");
    let run = |root: &str, epochs: &str, resume: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_test-child"));
        cmd.args(["fsdp", root, "2", epochs, resume, "sharded"])
            .envs(moto.env());
        lightning_testkit::fresh_job(&mut cmd);
        let out = Supervised::spawn(&mut cmd, Duration::from_secs(120)).wait_with_output();
        assert!(
            out.status.success(),
            "fsdp on {root} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let weights = |url: &str| {
        let v = DefaultCheckpointIO.load_checkpoint(Path::new(url)).unwrap();
        v.get("state_dict").cloned().unwrap()
    };
    run("s3://fsdp/straight", "2", "-");
    let ck = "s3://fsdp/straight/ck";
    let files = names(ck);
    assert_eq!(
        files.len(),
        3,
        "top-2 and last, each a sharded prefix: {files:?}"
    );
    for f in &files {
        let url = PathBuf::from(format!("{ck}/{f}"));
        assert!(
            lightning_core::checkpoint::dcp::lightning::is_sharded_checkpoint(&url),
            "{f}"
        );
        DefaultCheckpointIO.verify(&url).unwrap();
    }
    // last.ckpt was written twice: only the second save's two shard files remain
    let mut objects = names(&format!("{ck}/last.ckpt"));
    objects.retain(|n| n.ends_with(".distcp"));
    assert_eq!(objects.len(), 2, "{objects:?}");
    let straight = weights("s3://fsdp/straight/final.ckpt");
    assert_eq!(straight, weights(&format!("{ck}/last.ckpt")));

    run("s3://fsdp/resumed", "1", "-");
    run("s3://fsdp/resumed", "2", "last");
    assert_eq!(
        weights("s3://fsdp/resumed/final.ckpt"),
        straight,
        "1 epoch + resume from the bucket's last.ckpt == 2 straight"
    );
    assert_eq!(moto.uploads_in_progress("fsdp"), 0);
}
