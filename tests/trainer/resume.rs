//! Resume: exact (bitwise) continuation from epoch-boundary and mid-epoch checkpoints,
//! `last`/`best` selection, weights-only errors, async saves, save_on_exception hooks.

use lightning_testkit::trainer_util;

use lightning_core::checkpoint;
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer, RESUME_KEY};
use lightning_core::Key;
use std::path::Path;
use trainer_util::{data, SaveAt, Tiny, TinyHp};

const EPOCHS: i64 = 4;

use trainer_util::{final_state, quiet_builder as builder};

fn straight(dir: &Path) -> Value {
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir)
        .max_epochs(EPOCHS)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap(); // 60 train rows: 8 batches/epoch
    final_state(&m, &mut t, dir)
}

fn assert_same(a: &Value, b: &Value) {
    let sd = |v: &Value| v.get("state_dict").cloned().unwrap();
    assert_eq!(sd(a), sd(b), "weights differ");
    assert_eq!(
        a.get("optimizer_states"),
        b.get("optimizer_states"),
        "optimizer state differs"
    );
    assert_eq!(
        a.get("lr_schedulers"),
        b.get("lr_schedulers"),
        "scheduler state differs"
    );
    assert_eq!(a.get("global_step"), b.get("global_step"));
    assert_eq!(a, b);
}

#[test]
fn resume_at_epoch_boundary_is_bitwise_exact() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let want = straight(dir.path());
    // Two epochs, stop, save; a new process-like setup resumes to EPOCHS.
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir.path())
        .max_epochs(2)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    let mid = dir.path().join("epoch2.ckpt");
    t.save_checkpoint(&m, &mid, false).unwrap();
    let (mut m2, _vs2) = Tiny::new(TinyHp::default(), 99); // different init: all from the file
    let mut t2 = builder(dir.path())
        .max_epochs(EPOCHS)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t2.fit(&mut m2, &data(80, 8, true), Some(CkptPath::from(&mid)))
        .unwrap();
    assert_eq!(t2.global_step(), 32);
    assert_same(&final_state(&m2, &mut t2, dir.path()), &want);
}

#[test]
fn resume_mid_epoch_from_last_is_bitwise_exact() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let want = straight(dir.path());
    let ck = dir.path().join("ck");
    // A run that saves at step 13 (mid epoch 1) and "crashes" (max_steps) later.
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir.path())
        .max_steps(15)
        .callback(SaveAt::new(&ck, &[13], "last.ckpt"))
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    let saved = checkpoint::load(&ck.join("last.ckpt")).unwrap();
    assert_eq!(
        saved
            .get_path(&format!("{RESUME_KEY}.batches_consumed"))
            .and_then(Value::as_i64),
        Some(5)
    );
    assert_eq!(saved.get("epoch").and_then(Value::as_i64), Some(1));
    let (mut m2, _vs2) = Tiny::new(TinyHp::default(), 99);
    let mut t2 = builder(dir.path())
        .max_epochs(EPOCHS)
        .callback(SaveAt::new(&ck, &[], "unused.ckpt"))
        .build()
        .unwrap();
    t2.fit(&mut m2, &data(80, 8, true), Some(CkptPath::Last))
        .unwrap();
    assert_eq!(t2.global_step(), 32);
    let mut got = final_state(&m2, &mut t2, dir.path());
    got.as_dict_mut()
        .unwrap()
        .shift_remove(&Key::from("callbacks"));
    assert_same(&got, &want);
}

#[test]
fn async_checkpoints_resume_the_same_as_sync_ones() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let run = |asynchronous: bool, sub: &str| {
        let ck = dir.path().join(sub);
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(dir.path())
            .max_epochs(2)
            .async_checkpointing(asynchronous)
            .callback(SaveAt::new(&ck, &[3, 4, 9, 16], "s{step}.ckpt"))
            .build()
            .unwrap();
        t.fit(&mut m, &data(80, 8, true), None).unwrap();
        // fit returned: every file is complete.
        [3, 4, 9, 16].map(|s| checkpoint::load(&ck.join(format!("s{s}.ckpt"))).unwrap())
    };
    let a = run(true, "async");
    let s = run(false, "sync");
    for (x, y) in a.iter().zip(&s) {
        let mut x = x.clone();
        let mut y = y.clone();
        for v in [&mut x, &mut y] {
            v.get_mut(RESUME_KEY)
                .unwrap()
                .as_dict_mut()
                .unwrap()
                .shift_remove(&Key::from("train_time_s"));
        }
        assert_eq!(x, y);
    }
    // Each file holds the weights of its own step, not later ones.
    assert_ne!(a[0].get("state_dict"), a[1].get("state_dict"));
}

#[test]
fn best_resumes_the_callbacks_best_and_weights_only_is_refused() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut cb = SaveAt::new(&ck, &[4], "w.ckpt");
    cb.weights_only = true;
    let mut t = builder(dir.path())
        .max_epochs(1)
        .callback(cb)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    assert_eq!(
        t.callbacks()[0].best_model_path().unwrap(),
        ck.join("w.ckpt")
    );
    let e = t
        .fit(&mut m, &data(80, 8, true), Some(CkptPath::Best))
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds only the model"), "{e}");
    // A full checkpoint resumes through Best.
    t.save_checkpoint(&m, ck.join("full.ckpt"), false).unwrap();
    let mut cb = SaveAt::new(&ck, &[], "unused.ckpt");
    cb.saved.push(ck.join("full.ckpt"));
    let mut t2 = builder(dir.path())
        .max_epochs(2)
        .callback(cb)
        .build()
        .unwrap();
    t2.fit(&mut m, &data(80, 8, true), Some(CkptPath::Best))
        .unwrap();
    assert_eq!(t2.global_step(), 16);
}

#[test]
fn checkpoint_has_lightning_layout() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir.path())
        .max_epochs(1)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    let p = dir.path().join("a.ckpt");
    t.save_checkpoint(&m, &p, false).unwrap();
    let c = checkpoint::load(&p).unwrap();
    let keys: Vec<String> = c.as_dict().unwrap().keys().map(|k| k.to_string()).collect();
    for k in [
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "loops",
        "callbacks",
        "optimizer_states",
        "lr_schedulers",
        "hparams_name",
        "hyper_parameters",
    ] {
        assert!(keys.contains(&k.to_string()), "missing {k} in {keys:?}");
    }
    assert_eq!(
        c.get("pytorch-lightning_version").and_then(Value::as_str),
        Some("2.6.6")
    );
    let fit = c.get_path("loops.fit_loop").unwrap();
    let stepped = fit
        .get("epoch_loop.state_dict")
        .and_then(|d| d.get("_batches_that_stepped"));
    assert_eq!(stepped.and_then(Value::as_i64), Some(8));
    assert_eq!(
        fit.get_path("epoch_progress.current.completed")
            .and_then(Value::as_i64),
        Some(1)
    );
    assert_eq!(
        c.get_path("hyper_parameters.hidden")
            .and_then(Value::as_i64),
        Some(8)
    );
    assert!(
        c.get_path("state_dict.fc1.weight").is_none(),
        "dotted keys are flat"
    );
    assert!(c
        .get("state_dict")
        .unwrap()
        .as_dict()
        .unwrap()
        .contains_key(&Key::from("fc1.weight")));
    let w = dir.path().join("w.ckpt");
    t.save_checkpoint(&m, &w, true).unwrap();
    let c = checkpoint::load(&w).unwrap();
    assert!(c.get("optimizer_states").is_none() && c.get("callbacks").is_none());
}

#[test]
fn a_failing_step_runs_on_exception_and_keeps_earlier_checkpoints() {
    let _serial = trainer_util::serial();
    struct OnExc(std::path::PathBuf);
    impl lightning_core::callbacks::Callback for OnExc {
        fn state_key(&self) -> String {
            "OnExc".into()
        }
        fn on_exception(
            &mut self,
            t: &mut lightning_core::callbacks::TrainerContext<'_>,
        ) -> lightning_core::Result<()> {
            t.save_checkpoint(&self.0, false, self)
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("exception.ckpt");
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    m.fail_at = Some(5);
    let mut t = builder(dir.path())
        .max_epochs(3)
        .async_checkpointing(true)
        .callback(OnExc(p.clone()))
        .build()
        .unwrap();
    let e = t
        .fit(&mut m, &data(80, 8, true), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("planned failure"), "{e}");
    let c = checkpoint::load(&p).unwrap();
    assert_eq!(c.get("global_step").and_then(Value::as_i64), Some(5));
}

#[test]
fn model_checkpoint_every_n_steps_then_last_and_best_resume_exactly() {
    use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let want = straight(dir.path());
    let ck = dir.path().join("mc");
    let mc = || {
        ModelCheckpoint::builder()
            .dirpath(&ck)
            .every_n_train_steps(5)
            .save_last(SaveLast::True)
            .save_top_k(-1)
            .build()
            .unwrap()
    };
    // Saves at steps 5 and 10 (10 is mid epoch 1), stops at 13.
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir.path())
        .max_steps(13)
        .callback(mc())
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    assert!(ck.join("epoch=1-step=10.ckpt").is_file() && ck.join("last.ckpt").is_file());
    let last = checkpoint::load(&ck.join("last.ckpt")).unwrap();
    assert_eq!(last.get("global_step").and_then(Value::as_i64), Some(10));
    let (mut m2, _vs2) = Tiny::new(TinyHp::default(), 99);
    let mut t2 = builder(dir.path())
        .max_epochs(EPOCHS)
        .callback(mc())
        .build()
        .unwrap();
    t2.fit(&mut m2, &data(80, 8, true), Some(CkptPath::Last))
        .unwrap();
    assert_same(&final_state(&m2, &mut t2, dir.path()), &want);
    // The ModelCheckpoint state came back: `best` (no monitor: the newest) resumes too.
    let best = t2
        .callback::<ModelCheckpoint>()
        .unwrap()
        .best_model_path()
        .unwrap()
        .to_owned();
    assert!(best.ends_with("epoch=3-step=30.ckpt"), "{best:?}");
    let (mut m3, _vs3) = Tiny::new(TinyHp::default(), 98);
    let mut t3 = builder(dir.path())
        .max_epochs(EPOCHS)
        .callback(mc())
        .build()
        .unwrap();
    t3.fit(&mut m3, &data(80, 8, true), Some(CkptPath::from(&best)))
        .unwrap();
    assert_same(&final_state(&m3, &mut t3, dir.path()), &want);
}

/// A run of `epochs` at `precision` (gradient clipping on), optionally resumed from `resume`.
fn precision_run(dir: &Path, precision: &str, epochs: i64, resume: Option<&Path>) -> Value {
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir)
        .max_epochs(epochs)
        .precision(precision)
        .gradient_clip_val(0.5)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), resume.map(CkptPath::from))
        .unwrap();
    final_state(&m, &mut t, dir)
}

/// 3 epochs straight equal 1 epoch, a checkpoint, and a resume to 3, bit for bit.
fn resumes_exactly_at(dir: &Path, precision: &str) -> Value {
    let want = precision_run(dir, precision, 3, None);
    let mid = dir.join("mid.ckpt");
    std::fs::rename(dir.join("final.ckpt"), &mid).unwrap();
    precision_run(dir, precision, 1, None);
    std::fs::rename(dir.join("final.ckpt"), &mid).unwrap();
    let got = precision_run(dir, precision, 3, Some(&mid));
    assert_same(&got, &want);
    want
}

#[test]
fn mixed_precision_scaler_state_is_saved_and_resumed_exactly() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    // On the CPU too, "16-mixed" autocasts to f16 and scales the loss.
    let want = resumes_exactly_at(dir.path(), "16-mixed");
    let scaler = want
        .get("MixedPrecision")
        .expect("scaler state under Lightning's key");
    // f16 gradients overflow at the initial scale 65536 here (f32 ones never do): the scaler
    // backed off, so the step really ran in f16 and skipped the overflowing steps.
    let scale = scaler.get("scale").and_then(Value::as_f64).unwrap();
    assert!(
        scale < 65536.0 && scale.log2().fract() == 0.0,
        "scale {scale}"
    );
    let tracker = scaler
        .get("_growth_tracker")
        .and_then(Value::as_i64)
        .unwrap();
    assert!((0..2000).contains(&tracker), "growth tracker {tracker}");
    assert!(Trainer::builder().precision("8-bit").build().is_err());
}

/// "bf16-mixed" on the CPU autocasts (it used to train in f32 without saying so): its weights
/// differ from a "32-true" run's and from a "16-mixed" run's, and it resumes exactly.
#[test]
fn bf16_mixed_autocasts_on_the_cpu_and_resumes_exactly() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let bf16 = resumes_exactly_at(dir.path(), "bf16-mixed");
    assert!(bf16.get("MixedPrecision").is_none(), "bf16 has no scaler");
    let sd = |v: &Value| v.get("state_dict").cloned().unwrap();
    let f32_run = precision_run(dir.path(), "32-true", 3, None);
    assert_ne!(sd(&bf16), sd(&f32_run), "bf16-mixed trained in f32");
    let f16_run = precision_run(dir.path(), "16-mixed", 3, None);
    assert_ne!(sd(&bf16), sd(&f16_run), "bf16-mixed trained in f16");
    assert_ne!(sd(&f16_run), sd(&f32_run), "16-mixed trained in f32");
}

#[test]
fn model_checkpoint_save_on_exception_keeps_the_state_before_the_failing_step() {
    use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let mc = ModelCheckpoint::builder()
        .dirpath(&ck)
        .save_on_exception(true)
        .save_last(SaveLast::True)
        .build()
        .unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    m.fail_at = Some(11);
    let mut t = builder(dir.path())
        .max_epochs(3)
        .callback(mc)
        .build()
        .unwrap();
    assert!(t.fit(&mut m, &data(80, 8, true), None).is_err());
    let last = checkpoint::load(&ck.join("last.ckpt")).unwrap();
    assert_eq!(last.get("global_step").and_then(Value::as_i64), Some(11));
    // It resumes: the failing step runs again (now succeeding) and training finishes.
    let (mut m2, _vs2) = Tiny::new(TinyHp::default(), 5);
    let mc = ModelCheckpoint::builder()
        .dirpath(&ck)
        .save_last(SaveLast::True)
        .build()
        .unwrap();
    let mut t2 = builder(dir.path())
        .max_epochs(3)
        .callback(mc)
        .build()
        .unwrap();
    t2.fit(&mut m2, &data(80, 8, true), Some(CkptPath::Last))
        .unwrap();
    assert_eq!(t2.global_step(), 24);
}

#[test]
fn a_failed_save_stops_by_default_or_warns_and_continues() {
    use lightning_core::trainer::SaveErrorPolicy;
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    // A directory that cannot exist: its parent is a regular file.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = blocker.join("ck");
    for asynchronous in [false, true] {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(dir.path())
            .max_epochs(2)
            .async_checkpointing(asynchronous)
            .callback(SaveAt::new(&bad, &[3], "s.ckpt"))
            .build()
            .unwrap();
        let e = t
            .fit(&mut m, &data(80, 8, true), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.ckpt"), "async={asynchronous}: {e}");
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(dir.path())
            .max_epochs(2)
            .async_checkpointing(asynchronous)
            .on_save_error(SaveErrorPolicy::WarnAndContinue)
            .callback(SaveAt::new(&bad, &[3], "s.ckpt"))
            .build()
            .unwrap();
        t.fit(&mut m, &data(80, 8, true), None).unwrap();
        assert_eq!(t.global_step(), 16, "async={asynchronous}");
    }
}

/// `ckpt_path="hpc"`: the highest `hpc_ckpt_<N>.ckpt` in `default_root_dir`, Lightning's error
/// when there is none.
#[test]
fn hpc_resumes_the_highest_hpc_checkpoint() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir.path())
        .max_epochs(1)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    let e = t
        .fit(&mut m, &data(80, 8, true), Some(CkptPath::parse("hpc")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no HPC checkpoint was found"), "{e}");
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    t.save_checkpoint(&m, dir.path().join("hpc_ckpt_2.ckpt"), false)
        .unwrap();
    let mut t1 = builder(dir.path())
        .max_epochs(3)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t1.fit(
        &mut m,
        &data(80, 8, true),
        Some(CkptPath::Path(dir.path().join("hpc_ckpt_2.ckpt"))),
    )
    .unwrap();
    t1.save_checkpoint(&m, dir.path().join("hpc_ckpt_10.ckpt"), false)
        .unwrap();
    let mut t2 = builder(dir.path())
        .max_epochs(2)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t2.fit(&mut m, &data(80, 8, true), Some(CkptPath::Hpc))
        .unwrap();
    // hpc_ckpt_10 (numerically highest, not hpc_ckpt_2) is past max_epochs=2: nothing is
    // trained and the position is its own (from hpc_ckpt_2 it would be epoch 2, step 16)
    assert_eq!((t2.current_epoch(), t2.global_step()), (3, 24));
}
