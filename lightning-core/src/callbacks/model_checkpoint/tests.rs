//! Unit tests of `ModelCheckpoint` against a fake trainer that writes small files.

use super::*;
use crate::callbacks::{Callback, RunInfo, TrainerHandle};
use crate::storage::local::{link_checkpoint, link_or_copy};
use std::collections::BTreeSet;
use std::time::SystemTime;

/// A trainer stand-in: epochs, steps, metrics and a clock set by the test; its handle
/// ([`FakeIo`]) writes `epoch=E step=S` to each checkpoint path (temp file + rename).
pub(crate) struct FakeTrainer {
    pub epoch: i64,
    pub step: i64,
    pub metrics: IndexMap<String, f64>,
    pub root: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub time: Duration,
    pub sanity: bool,
    pub last_batch: bool,
    pub num_val_batches: usize,
    pub within_epoch: bool,
    pub cve: Option<i64>,
    pub resumed: Option<PathBuf>,
    pub val_ran: bool,
    pub rank0: bool,
    pub io: FakeIo,
}

/// The fake trainer's handle: records saves and the actions handed over for after them.
#[derive(Default)]
pub(crate) struct FakeIo {
    pub epoch: i64,
    pub step: i64,
    pub saves: Vec<(PathBuf, bool)>,
    /// `best_model_path` in the state written into each file.
    pub saved_best: Vec<String>,
    pub stop_requested: bool,
    pub fail_next_save: bool,
    /// An async save is being written: actions wait in `queued` until it finishes.
    pub in_flight: bool,
    pub queued: Vec<AfterSave>,
    /// Every action handed over, in order.
    pub actions: Vec<AfterSave>,
}

impl TrainerHandle for FakeIo {
    fn save_checkpoint(
        &mut self,
        path: &Path,
        weights_only: bool,
        caller: &dyn Callback,
    ) -> crate::Result<()> {
        if std::mem::take(&mut self.fail_next_save) {
            return Err(crate::Error::Msg(format!(
                "{}: No space left on device",
                path.display()
            )));
        }
        let state = caller.state_dict();
        let best = state
            .get("best_model_path")
            .and_then(Value::as_str)
            .unwrap_or("?");
        self.saved_best.push(best.to_owned());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("epoch={} step={}", self.epoch, self.step)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        self.saves.push((path.to_owned(), weights_only));
        Ok(())
    }
    fn when_durable(&mut self, action: AfterSave) -> crate::Result<()> {
        self.actions.push(action.clone());
        if self.in_flight {
            self.queued.push(action);
            Ok(())
        } else {
            Ok(action.apply(&crate::storage::DefaultCheckpointIO)?)
        }
    }
    fn request_stop(&mut self) {
        self.stop_requested = true;
    }
}

impl FakeTrainer {
    pub fn new(root: &Path) -> FakeTrainer {
        FakeTrainer {
            epoch: 0,
            step: 0,
            metrics: IndexMap::new(),
            root: root.to_owned(),
            log_dir: None,
            time: Duration::ZERO,
            sanity: false,
            last_batch: false,
            num_val_batches: 0,
            within_epoch: false,
            cve: Some(1),
            resumed: None,
            val_ran: true,
            rank0: true,
            io: FakeIo::default(),
        }
    }

    /// The context a hook gets now.
    pub fn ctx(&mut self) -> TrainerContext<'_> {
        self.io.epoch = self.epoch;
        self.io.step = self.step;
        let run = RunInfo {
            current_epoch: self.epoch,
            global_step: self.step,
            log_dir: self.log_dir.as_deref(),
            is_global_zero: self.rank0,
            resumed_from: self.resumed.as_deref(),
            train_time: self.time,
            sanity_checking: self.sanity,
            is_last_batch: self.last_batch,
            num_val_batches: self.num_val_batches,
            check_val_every_n_epoch: self.cve,
            val_check_within_epoch: self.within_epoch,
            validation_ran: self.val_ran,
            ..RunInfo::new(&self.metrics, &self.root)
        };
        TrainerContext::new(run, &mut self.io)
    }

    /// The async save in flight finished writing: what waited for it runs now.
    pub fn finish_in_flight(&mut self) {
        self.io.in_flight = false;
        for a in std::mem::take(&mut self.io.queued) {
            a.apply(&crate::storage::DefaultCheckpointIO).unwrap();
        }
    }

    /// The async save in flight failed: what waited for it never runs.
    pub fn fail_in_flight(&mut self) {
        self.io.in_flight = false;
        self.io.queued.clear();
    }
}

/// File names (relative, `/`-joined) under `dir`, links included.
fn listing(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs one epoch of `steps_per_epoch` steps with `metric` logged, then the epoch-end hooks.
fn epoch(cb: &mut ModelCheckpoint, t: &mut FakeTrainer, steps: i64, metric: Option<(&str, f64)>) {
    for i in 0..steps {
        t.step += 1;
        t.last_batch = i + 1 == steps;
        cb.on_train_batch_end(&mut t.ctx()).unwrap();
    }
    if let Some((k, v)) = metric {
        t.metrics.insert(k.into(), v);
    }
    cb.on_validation_end(&mut t.ctx()).unwrap();
    cb.on_train_epoch_end(&mut t.ctx()).unwrap();
    t.epoch += 1;
}

fn start(cb: &mut ModelCheckpoint, t: &mut FakeTrainer) {
    cb.setup(&mut t.ctx()).unwrap();
    cb.on_fit_start(&mut t.ctx()).unwrap();
}

/// Builds the callback and runs `setup`/`on_fit_start` against a fresh fake trainer.
fn started(b: ModelCheckpointBuilder, root: &Path) -> (ModelCheckpoint, FakeTrainer) {
    let mut cb = b.build().unwrap();
    let mut t = FakeTrainer::new(root);
    start(&mut cb, &mut t);
    (cb, t)
}

#[test]
fn top_k_keeps_the_best_and_deletes_worse_after_saving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("ck");
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(&d)
            .monitor("val_loss")
            .filename("{epoch:02d}-{val_loss:.2f}")
            .save_top_k(2),
        dir.path(),
    );
    let d = cb.dirpath().unwrap().to_owned();
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.5)));
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.4)));
    assert_eq!(
        listing(&d),
        set(&["epoch=00-val_loss=0.50.ckpt", "epoch=01-val_loss=0.40.ckpt"])
    );
    assert_eq!(
        cb.kth_best_model_path(),
        Some(d.join("epoch=00-val_loss=0.50.ckpt").as_path())
    );
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.6))); // worse than both: not saved
    assert_eq!(t.io.saves.len(), 2);
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.3))); // evicts 0.50
    assert_eq!(
        listing(&d),
        set(&["epoch=01-val_loss=0.40.ckpt", "epoch=03-val_loss=0.30.ckpt"])
    );
    assert_eq!(
        cb.best_model_path(),
        Some(d.join("epoch=03-val_loss=0.30.ckpt").as_path())
    );
    assert_eq!(cb.best_model_score(), Some(0.3));
    assert_eq!(cb.kth_value(), 0.4);
    assert_eq!(cb.current_score(), Some(0.3));
    // each file holds the state updated for it; the evicted file went once its replacement
    // was durable
    let best = |n: &str| d.join(n).to_string_lossy().into_owned();
    assert_eq!(
        t.io.saved_best,
        [
            best("epoch=00-val_loss=0.50.ckpt"),
            best("epoch=01-val_loss=0.40.ckpt"),
            best("epoch=03-val_loss=0.30.ckpt")
        ]
    );
    assert_eq!(
        t.io.actions,
        [AfterSave::Remove(d.join("epoch=00-val_loss=0.50.ckpt"))]
    );
    assert!(Callback::is_checkpoint_callback(&cb));
    assert_eq!(Callback::checkpoint_dirpath(&cb), Some(d.clone()));
    assert_eq!(
        Callback::best_model_path(&cb),
        Some(d.join("epoch=03-val_loss=0.30.ckpt"))
    );
    let kept: Vec<_> = cb.best_k_models().keys().cloned().collect();
    assert_eq!(
        kept,
        vec![
            d.join("epoch=01-val_loss=0.40.ckpt"),
            d.join("epoch=03-val_loss=0.30.ckpt")
        ]
    );
}

#[test]
fn deletions_wait_for_an_in_flight_async_save_without_blocking_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .filename("{epoch:02d}-{val_loss:.2f}")
            .save_top_k(1),
        dir.path(),
    );
    let d = cb.dirpath().unwrap().to_owned();
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.5)));
    // The better file's write is still in flight: the worse one stays, nothing blocks.
    t.io.in_flight = true;
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.4)));
    assert_eq!(
        listing(&d),
        set(&["epoch=00-val_loss=0.50.ckpt", "epoch=01-val_loss=0.40.ckpt"])
    );
    // Once it is durable (the trainer polls every step), the replaced file goes.
    t.finish_in_flight();
    assert_eq!(listing(&d), set(&["epoch=01-val_loss=0.40.ckpt"]));
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.9)));
    assert_eq!(listing(&d), set(&["epoch=01-val_loss=0.40.ckpt"]));
    // At the end of fit the trainer waits for the last write, then deletes.
    t.io.in_flight = true;
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.1)));
    cb.on_fit_end(&mut t.ctx()).unwrap();
    assert_eq!(listing(&d).len(), 2);
    t.finish_in_flight();
    assert_eq!(listing(&d), set(&["epoch=03-val_loss=0.10.ckpt"]));
}

#[test]
fn a_failed_replacement_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .filename("{epoch:02d}-{val_loss:.2f}")
            .save_top_k(1),
        dir.path(),
    );
    let d = cb.dirpath().unwrap().to_owned();
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.5)));
    t.io.in_flight = true;
    epoch(&mut cb, &mut t, 2, Some(("val_loss", 0.4)));
    // The background write of the better file failed (the trainer reports its error).
    std::fs::remove_file(d.join("epoch=01-val_loss=0.40.ckpt")).unwrap();
    t.fail_in_flight();
    cb.on_fit_end(&mut t.ctx()).unwrap();
    assert_eq!(listing(&d), set(&["epoch=00-val_loss=0.50.ckpt"]));
}

#[test]
fn nan_never_becomes_best_and_mode_max() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("acc")
            .mode(Mode::Max)
            .save_top_k(2),
        dir.path(),
    );
    epoch(&mut cb, &mut t, 1, Some(("acc", f64::NAN)));
    assert_eq!(cb.current_score(), Some(f64::NEG_INFINITY));
    epoch(&mut cb, &mut t, 1, Some(("acc", 0.2)));
    assert_eq!(cb.best_model_score(), Some(0.2));
    assert!(cb
        .best_model_path()
        .unwrap()
        .ends_with("epoch=1-step=2.ckpt"));
    epoch(&mut cb, &mut t, 1, Some(("acc", 0.9)));
    // the NaN file is the worst and was evicted; higher is better
    assert_eq!(
        listing(cb.dirpath().unwrap()),
        set(&["epoch=1-step=2.ckpt", "epoch=2-step=3.ckpt"])
    );
    assert_eq!(cb.best_model_score(), Some(0.9));
    epoch(&mut cb, &mut t, 1, Some(("acc", f64::NAN))); // NaN never enters a full top-k
    assert_eq!(t.io.saves.len(), 3);
}

/// Runs one-step epochs logging `metric` with each of `values` (nothing when `metric` is
/// empty) with the callback writing into a fresh directory; returns the files left there.
fn files_after(b: ModelCheckpointBuilder, metric: &str, values: &[f64]) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(b.dirpath(dir.path()), dir.path());
    for v in values {
        epoch(
            &mut cb,
            &mut t,
            1,
            (!metric.is_empty()).then_some((metric, *v)),
        );
    }
    listing(dir.path())
}

#[test]
fn no_monitor_top_1_reuses_one_name_and_version_counter() {
    let b = || ModelCheckpoint::builder().filename("model");
    // Lightning's test_none_monitor_not_alternating: always model.ckpt
    assert_eq!(files_after(b(), "", &[0.0; 3]), set(&["model.ckpt"]));
    // without a monitor, Lightning versions past existing files except the previous best
    // (so save_top_k=-1 with a fixed name overwrites too)
    assert_eq!(
        files_after(b().save_top_k(-1), "", &[0.0; 2]),
        set(&["model.ckpt"])
    );
    // save all monitored with a fixed name: -v1, -v2
    assert_eq!(
        files_after(b().monitor("loss").save_top_k(-1), "loss", &[1.0; 3]),
        set(&["model.ckpt", "model-v1.ckpt", "model-v2.ckpt"])
    );
    // without the counter the file is overwritten
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        b().dirpath(dir.path())
            .monitor("loss")
            .save_top_k(-1)
            .enable_version_counter(false),
        dir.path(),
    );
    for _ in 0..3 {
        epoch(&mut cb, &mut t, 1, Some(("loss", 1.0)));
    }
    assert_eq!(listing(dir.path()), set(&["model.ckpt"]));
    assert_eq!(cb.best_k_models().len(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("model.ckpt")).unwrap(),
        "epoch=2 step=3"
    );
}

#[test]
fn save_last_true_only_follows_top_k_saves() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .save_last(true),
        dir.path(),
    );
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 1.0)));
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 2.0))); // not better: no top-k, no last (2.6)
    let last = dir.path().join("last.ckpt");
    assert_eq!(std::fs::read_to_string(&last).unwrap(), "epoch=0 step=1");
    assert_eq!(cb.last_model_path(), Some(last.as_path()));
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 0.5)));
    assert_eq!(std::fs::read_to_string(&last).unwrap(), "epoch=2 step=3");
    assert_eq!(
        listing(dir.path()),
        set(&["epoch=2-step=3.ckpt", "last.ckpt"])
    );
}

#[test]
fn save_last_link_is_a_relative_symlink_to_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .save_top_k(1)
            .save_last(SaveLast::Link),
        dir.path(),
    );
    let d = cb.dirpath().unwrap().to_owned();
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 1.0)));
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 0.5)));
    let last = d.join("last.ckpt");
    let target = std::fs::read_link(&last).unwrap();
    assert!(target.is_relative());
    assert_eq!(target, PathBuf::from("epoch=1-step=2.ckpt"));
    assert_eq!(std::fs::read_to_string(&last).unwrap(), "epoch=1 step=2");
    // the old best is gone, the link never dangles, only real saves were written
    assert_eq!(listing(&d), set(&["epoch=1-step=2.ckpt", "last.ckpt"]));
    assert_eq!(t.io.saves.len(), 2);
}

#[test]
fn link_replaces_files_links_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a"), "a").unwrap();
    std::fs::write(d.join("b"), "b").unwrap();
    std::fs::write(d.join("link"), "old").unwrap();
    link_checkpoint(&d.join("a"), &d.join("link")).unwrap();
    assert_eq!(std::fs::read_to_string(d.join("link")).unwrap(), "a");
    link_checkpoint(&d.join("b"), &d.join("link")).unwrap();
    assert_eq!(
        std::fs::read_link(d.join("link")).unwrap(),
        PathBuf::from("b")
    );
    std::fs::create_dir_all(d.join("folder_link/x")).unwrap();
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/c"), "c").unwrap();
    link_checkpoint(&d.join("sub/c"), &d.join("folder_link")).unwrap();
    assert_eq!(
        std::fs::read_link(d.join("folder_link")).unwrap(),
        PathBuf::from("sub/c")
    );
    assert!(!listing(d).iter().any(|n| n.contains("tmp-link")));
    // where links cannot be made, a copy takes the link's place
    link_or_copy(&d.join("a"), &d.join("copied"), |_, _| {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    })
    .unwrap();
    assert!(!std::fs::symlink_metadata(d.join("copied"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(d.join("copied")).unwrap(), "a");
    // a temp link left by a killed run is cleaned up at setup
    #[cfg(unix)]
    std::os::unix::fs::symlink("a", d.join(".last.ckpt.tmp-link-999999")).unwrap();
    let _ = started(ModelCheckpoint::builder().dirpath(d), d);
    assert!(!listing(d).iter().any(|n| n.contains("tmp-link")));
    assert!(d.join("a").exists());
}

#[test]
fn last_name_template_and_version_counter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("last.ckpt"), "from another run").unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .save_top_k(0)
            .save_last(true),
        dir.path(),
    );
    epoch(&mut cb, &mut t, 1, None);
    // save_top_k=0: nothing at epoch end, last at the end of fit, versioned past the old file
    assert_eq!(t.io.saves.len(), 0);
    cb.on_fit_end(&mut t.ctx()).unwrap();
    assert_eq!(listing(dir.path()), set(&["last.ckpt", "last-v1.ckpt"]));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("last.ckpt")).unwrap(),
        "from another run"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .save_top_k(-1)
            .save_last(true)
            .last_name("last-{epoch}"),
        dir.path(),
    );
    for _ in 0..3 {
        epoch(&mut cb, &mut t, 10, None);
    }
    // Lightning's test_model_checkpoint_save_last: one last file, for the last epoch
    assert_eq!(
        listing(dir.path()),
        set(&[
            "epoch=0-step=10.ckpt",
            "epoch=1-step=20.ckpt",
            "epoch=2-step=30.ckpt",
            "last-epoch=2.ckpt"
        ])
    );
}

#[test]
fn every_n_train_steps_trigger() {
    // Lightning's test_ckpt_every_n_train_steps: 2 epochs of 64 steps, every 16
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .filename("{step}")
            .every_n_epochs(0)
            .every_n_train_steps(16)
            .save_top_k(-1),
        dir.path(),
    );
    epoch(&mut cb, &mut t, 64, None);
    epoch(&mut cb, &mut t, 64, None);
    let want: BTreeSet<String> = (16..=128)
        .step_by(16)
        .map(|s| format!("step={s}.ckpt"))
        .collect();
    assert_eq!(listing(dir.path()), want);
}

#[test]
fn every_n_epochs_trigger() {
    // Lightning's test_model_checkpoint_every_n_epochs
    for n in 0..4i64 {
        let b = ModelCheckpoint::builder()
            .filename("{epoch}")
            .save_top_k(-1)
            .every_n_epochs(n);
        let want: BTreeSet<String> = (0..5i64)
            .filter(|e| n > 0 && (e + 1) % n == 0)
            .map(|e| format!("epoch={e}.ckpt"))
            .collect();
        assert_eq!(files_after(b, "", &[0.0; 5]), want, "every_n_epochs={n}");
    }
}

#[test]
fn train_time_interval_trigger() {
    // Lightning's test_model_checkpoint_train_time_interval: 7 s per batch, every minute,
    // 2 epochs of 64 batches -> 14 checkpoints
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .filename("{epoch}-{step}")
            .train_time_interval(Duration::from_secs(60))
            .save_top_k(-1),
        dir.path(),
    );
    for _ in 0..2 {
        for i in 0..64 {
            t.step += 1;
            t.time += Duration::from_secs(7);
            t.last_batch = i == 63;
            cb.on_train_batch_end(&mut t.ctx()).unwrap();
        }
        cb.on_train_epoch_end(&mut t.ctx()).unwrap();
        t.epoch += 1;
    }
    assert_eq!(listing(dir.path()).len(), 14);
}

#[test]
fn never_deletes_the_resumed_from_file_or_files_outside_dirpath() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let (mut cb, mut t) = started(ModelCheckpoint::builder().dirpath(&ck), dir.path());
    let ck = cb.dirpath().unwrap().to_owned();
    epoch(&mut cb, &mut t, 1, None);
    let first = ck.join("epoch=0-step=1.ckpt");
    t.resumed = Some(first.clone());
    epoch(&mut cb, &mut t, 1, None);
    epoch(&mut cb, &mut t, 1, None);
    assert_eq!(
        listing(&ck),
        set(&["epoch=0-step=1.ckpt", "epoch=2-step=3.ckpt"])
    );

    // a restored best_model_path outside dirpath (and one reached through "..") is kept
    let outside = dir.path().join("precious.ckpt");
    std::fs::write(&outside, "x").unwrap();
    for prev in [outside.clone(), ck.join("..").join("precious.ckpt")] {
        let mut state = cb.state_dict();
        state.insert("best_model_path", prev.to_string_lossy().into_owned());
        let mut cb2 = ModelCheckpoint::builder().dirpath(&ck).build().unwrap();
        cb2.load_state_dict(&state).unwrap();
        assert_eq!(cb2.best_model_path(), Some(prev.as_path()));
        let mut t2 = FakeTrainer::new(dir.path());
        t2.epoch = 5;
        t2.step = 50;
        start(&mut cb2, &mut t2);
        epoch(&mut cb2, &mut t2, 1, None);
        assert!(outside.exists());
    }
}

#[test]
fn failed_save_keeps_bookkeeping_and_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .save_last(true),
        dir.path(),
    );
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 1.0)));
    let before = (
        cb.best_model_path().map(Path::to_owned),
        cb.best_k_models().clone(),
    );
    t.io.fail_next_save = true;
    t.step += 1;
    t.metrics.insert("val_loss".into(), 0.5);
    let err = cb.on_train_epoch_end(&mut t.ctx()).unwrap_err().to_string();
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(
        (
            cb.best_model_path().map(Path::to_owned),
            cb.best_k_models().clone()
        ),
        before
    );
    assert_eq!(
        listing(dir.path()),
        set(&["epoch=0-step=1.ckpt", "last.ckpt"])
    );
}

#[test]
fn missing_monitor_is_lightnings_error_after_validation_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss"),
        dir.path(),
    );
    t.step = 3;
    t.metrics.insert("train_loss".into(), 0.1);
    let e = cb.on_train_epoch_end(&mut t.ctx()).unwrap_err().to_string();
    assert_eq!(
        e,
        "`ModelCheckpoint(monitor='val_loss')` could not find the monitored key in the returned \
         metrics: ['train_loss', 'epoch', 'step']. HINT: Did you call `log('val_loss', value)` in \
         the `LightningModule`?"
    );
    t.val_ran = false; // before any validation: only a warning, nothing saved
    cb.on_train_epoch_end(&mut t.ctx()).unwrap();
    assert!(t.io.saves.is_empty());
}

#[test]
fn default_dirpath_and_subfolders_from_slashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cb = ModelCheckpoint::builder()
        .filename("{epoch}_{val/loss:.3f}")
        .build()
        .unwrap();
    let mut t = FakeTrainer::new(dir.path());
    t.log_dir = Some(dir.path().join("lightning_logs/version_0"));
    start(&mut cb, &mut t);
    assert_eq!(
        cb.dirpath(),
        Some(
            dir.path()
                .join("lightning_logs/version_0/checkpoints")
                .as_path()
        )
    );
    epoch(&mut cb, &mut t, 1, Some(("val/loss", 0.25)));
    assert_eq!(
        listing(cb.dirpath().unwrap()),
        set(&["epoch=0_val/loss=0.250.ckpt"])
    );

    let (cb, _) = started(ModelCheckpoint::builder(), dir.path());
    assert_eq!(cb.dirpath(), Some(dir.path().join("checkpoints").as_path()));
}

#[test]
fn saves_at_validation_end_when_validation_runs_within_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut cb = ModelCheckpoint::builder()
        .dirpath(dir.path())
        .monitor("val_loss")
        .build()
        .unwrap();
    let mut t = FakeTrainer::new(dir.path());
    t.num_val_batches = 4;
    t.within_epoch = true;
    start(&mut cb, &mut t);
    t.step = 5;
    t.metrics.insert("val_loss".into(), 0.9);
    cb.on_train_epoch_end(&mut t.ctx()).unwrap();
    assert!(t.io.saves.is_empty());
    cb.on_validation_end(&mut t.ctx()).unwrap();
    assert_eq!(t.io.saves.len(), 1);
    // sanity checking and non-fit runs never save
    t.step = 6;
    t.sanity = true;
    cb.on_validation_end(&mut t.ctx()).unwrap();
    assert_eq!(t.io.saves.len(), 1);
}

#[test]
fn step_trigger_defers_until_the_metric_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut cb = ModelCheckpoint::builder()
        .dirpath(dir.path())
        .monitor("val_loss")
        .every_n_train_steps(2)
        .build()
        .unwrap();
    let mut t = FakeTrainer::new(dir.path());
    t.num_val_batches = 1;
    t.within_epoch = true;
    start(&mut cb, &mut t);
    t.step = 2;
    cb.on_train_batch_end(&mut t.ctx()).unwrap();
    assert!(t.io.saves.is_empty());
    t.metrics.insert("val_loss".into(), 0.3);
    cb.on_validation_end(&mut t.ctx()).unwrap();
    assert_eq!(t.io.saves.len(), 1);
    assert!(t.io.saves[0].0.ends_with("epoch=0-step=2.ckpt"));
}

#[test]
fn save_on_exception_and_weights_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .save_on_exception(true)
            .save_weights_only(true),
        dir.path(),
    );
    t.step = 7;
    cb.on_exception(&mut t.ctx()).unwrap();
    assert_eq!(
        t.io.saves,
        vec![(cb.dirpath().unwrap().join("epoch=0-step=7.ckpt"), true)]
    );
    cb.on_exception(&mut t.ctx()).unwrap(); // already saved at this step
    assert_eq!(t.io.saves.len(), 1);
}

#[test]
fn state_dict_round_trip_and_dirpath_change() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cb, mut t) = started(
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .monitor("val_loss")
            .save_top_k(2)
            .save_last(true),
        dir.path(),
    );
    for v in [0.5, 0.25, 0.75] {
        epoch(&mut cb, &mut t, 1, Some(("val_loss", v)));
    }
    let state = cb.state_dict();
    let keys: Vec<String> = state
        .as_dict()
        .unwrap()
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "monitor",
            "best_model_score",
            "best_model_path",
            "current_score",
            "dirpath",
            "best_k_models",
            "kth_best_model_path",
            "kth_value",
            "last_model_path"
        ]
    );
    assert!(matches!(state.get("best_model_score"), Some(Value::Tensor(t)) if t.dim() == 0));
    // a callback created without dirpath applies the state once setup resolves it
    let mut cb2 = ModelCheckpoint::builder()
        .monitor("val_loss")
        .save_top_k(2)
        .build()
        .unwrap();
    cb2.load_state_dict(&state).unwrap();
    assert_eq!(cb2.best_model_path(), None);
    let mut t2 = FakeTrainer::new(dir.path());
    t2.log_dir = Some(cb.dirpath().unwrap().parent().unwrap().to_owned());
    let mut cb3 = ModelCheckpoint::builder()
        .dirpath(dir.path())
        .monitor("val_loss")
        .save_top_k(2)
        .build()
        .unwrap();
    cb3.load_state_dict(&state).unwrap();
    assert_eq!(cb3.best_model_path(), cb.best_model_path());
    assert_eq!(cb3.best_model_score(), Some(0.25));
    assert_eq!(cb3.best_k_models(), cb.best_k_models());
    assert_eq!(cb3.kth_best_model_path(), cb.kth_best_model_path());
    assert_eq!(cb3.kth_value(), 0.5);
    assert_eq!(cb3.last_model_path(), cb.last_model_path());
    assert_eq!(cb3.state_dict(), state_without_current(&state));
    // a different dirpath: only best_model_path comes back
    start(&mut cb2, &mut t2);
    assert_eq!(cb2.best_model_path(), cb.best_model_path());
    assert_eq!(cb2.best_model_score(), None);
    assert!(cb2.best_k_models().is_empty());
    // malformed state: a clear error naming the key
    let mut bad = state.clone();
    bad.insert("best_model_path", 3i64);
    let e = cb3.load_state_dict(&bad).unwrap_err().to_string();
    assert!(
        e.contains("best_model_path") && e.contains("expected str"),
        "{e}"
    );
}

/// Lightning does not restore `current_score`.
fn state_without_current(s: &Value) -> Value {
    let mut s = s.clone();
    s.insert("current_score", Value::None);
    s
}

#[test]
fn builder_validation_errors_match_lightning() {
    let err = |b: ModelCheckpointBuilder| b.build().unwrap_err().to_string();
    let b = ModelCheckpoint::builder;
    assert_eq!(
        err(b().mode_str("avg")),
        "`mode` can be min, max but got avg"
    );
    assert_eq!(
        err(b().save_top_k(-3)),
        "Invalid value for save_top_k=-3. Must be >= -1"
    );
    assert_eq!(
        err(b().every_n_train_steps(-1)),
        "Invalid value for every_n_train_steps=-1. Must be >= 0"
    );
    assert_eq!(
        err(b().every_n_epochs(-3)),
        "Invalid value for every_n_epochs=-3. Must be >= 0"
    );
    assert_eq!(
        err(b().every_n_train_steps(1).every_n_epochs(2)),
        "Combination of parameters every_n_train_steps=1, every_n_epochs=2 and \
         train_time_interval=None should be mutually exclusive."
    );
    assert_eq!(
        err(b()
            .train_time_interval(Duration::from_secs(60))
            .every_n_epochs(2)),
        "Combination of parameters every_n_train_steps=0, every_n_epochs=2 and \
         train_time_interval=0:01:00 should be mutually exclusive."
    );
    assert!(err(b()
        .train_time_interval(Duration::from_secs(60))
        .every_n_train_steps(2))
    .starts_with("Combination of parameters every_n_train_steps=2"));
    assert_eq!(
        err(b().save_top_k(3)),
        "ModelCheckpoint(save_top_k=3, monitor=None) is not a valid configuration. No quantity \
         for top_k to track."
    );
    for k in [-1, 0, 1] {
        assert!(b().save_top_k(k).build().is_ok());
    }
    assert!(b().every_n_train_steps(0).every_n_epochs(3).build().is_ok());
    assert!(b()
        .every_n_train_steps(0)
        .every_n_epochs(0)
        .train_time_interval(Duration::from_secs(60))
        .build()
        .is_ok());
    let cb = b().build().unwrap();
    assert_eq!((cb.every_n_epochs(), cb.every_n_train_steps()), (1, 0));
    let cb = b().every_n_train_steps(5).build().unwrap();
    assert_eq!((cb.every_n_epochs(), cb.every_n_train_steps()), (0, 5));
}

#[test]
fn state_key_formats_like_python_repr() {
    let cb = ModelCheckpoint::builder().build().unwrap();
    assert_eq!(
        cb.state_key(),
        "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, \
         'every_n_epochs': 1, 'train_time_interval': None}"
    );
    let cb = ModelCheckpoint::builder()
        .monitor("val_acc")
        .mode(Mode::Max)
        .train_time_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(
        cb.state_key(),
        "ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max', 'every_n_train_steps': 0, \
         'every_n_epochs': 0, 'train_time_interval': datetime.timedelta(seconds=3600)}"
    );
}

#[test]
fn find_last_picks_the_newest_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = SystemTime::now() - Duration::from_secs(1000);
    for (name, age) in [
        ("last.ckpt", 30),
        ("last-v1.ckpt", 20),
        ("last-v2.ckpt", 10),
        ("epoch=9.ckpt", 0),
    ] {
        let p = d.join(name);
        std::fs::write(
            &p,
            if name == "last-v2.ckpt" {
                "bad"
            } else {
                "good"
            },
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(base + Duration::from_secs(100 - age))
            .unwrap();
    }
    let ok = |p: &Path| std::fs::read_to_string(p).is_ok_and(|s| s == "good");
    assert_eq!(
        find_last_checkpoint(&[d.to_owned()], ok),
        Some(d.join("last-v1.ckpt"))
    );
    assert_eq!(
        find_last_checkpoint(&[d.to_owned()], |_| true),
        Some(d.join("last-v2.ckpt"))
    );
    assert_eq!(find_last_checkpoint(&[d.join("missing")], |_| true), None);
    assert_eq!(find_last_checkpoint(&[d.to_owned()], |_| false), None);
}

#[test]
fn format_checkpoint_name_joins_dirpath_version_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let cb = ModelCheckpoint::builder()
        .dirpath(dir.path())
        .filename("name")
        .build()
        .unwrap();
    let d = cb.dirpath().unwrap().to_owned();
    let m = Metrics::new();
    assert_eq!(
        cb.format_checkpoint_name(&m, None, Some(3), None).unwrap(),
        d.join("name-v3.ckpt")
    );
    assert_eq!(
        cb.format_checkpoint_name(&m, None, None, Some("test"))
            .unwrap(),
        d.join("test-name.ckpt")
    );
    let cb = ModelCheckpoint::builder()
        .filename("{epoch:d}")
        .build()
        .unwrap();
    let m: Metrics = [("epoch".to_owned(), MetricValue::Float(2.5))]
        .into_iter()
        .collect();
    let e = cb
        .format_checkpoint_name(&m, None, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Unknown format code 'd' for object of type 'float'"),
        "{e}"
    );
}

#[test]
fn resuming_from_our_own_file_does_not_save_that_step_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = || {
        ModelCheckpoint::builder()
            .dirpath(dir.path())
            .save_top_k(-1)
            .save_last(true)
    };
    let (mut cb, mut t) = started(b(), dir.path());
    epoch(&mut cb, &mut t, 4, None);
    let uninterrupted = listing(dir.path());
    // resume from last.ckpt (saved at step 4 with epoch=0-step=4): step 4 is not saved again
    let state = cb.state_dict();
    let mut cb2 = b().build().unwrap();
    cb2.load_state_dict(&state).unwrap();
    let mut t2 = FakeTrainer::new(dir.path());
    t2.step = 4;
    t2.resumed = cb.last_model_path().map(Path::to_owned);
    start(&mut cb2, &mut t2);
    cb2.on_train_epoch_end(&mut t2.ctx()).unwrap();
    assert!(t2.io.saves.is_empty());
    assert_eq!(listing(dir.path()), uninterrupted);
    // a file we did not write (a preemption checkpoint) does not count as our save
    let mut cb3 = b().build().unwrap();
    cb3.load_state_dict(&state).unwrap();
    let mut t3 = FakeTrainer::new(dir.path());
    t3.step = 4;
    t3.resumed = Some(dir.path().join("preempted.ckpt"));
    start(&mut cb3, &mut t3);
    cb3.on_train_epoch_end(&mut t3.ctx()).unwrap();
    assert_eq!(t3.io.saves.len(), 2, "{:?}", t3.io.saves);
}

#[test]
fn other_ranks_save_through_the_trainer_but_never_delete_or_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut cb = ModelCheckpoint::builder()
        .dirpath(dir.path())
        .monitor("val_loss")
        .save_last(SaveLast::Link)
        .build()
        .unwrap();
    let mut t = FakeTrainer::new(dir.path());
    t.rank0 = false;
    start(&mut cb, &mut t);
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 1.0)));
    epoch(&mut cb, &mut t, 1, Some(("val_loss", 0.5)));
    // the trainer was asked to save (it writes on rank 0 only); nothing was deleted or linked
    assert_eq!(t.io.saves.len(), 2);
    assert_eq!(
        listing(dir.path()),
        set(&["epoch=0-step=1.ckpt", "epoch=1-step=2.ckpt"])
    );
    assert_eq!(
        cb.best_model_path(),
        Some(dir.path().join("epoch=1-step=2.ckpt").as_path())
    );
}
