//! `Timer`: a spent budget stops training at the end of a batch (or of an epoch) on every
//! rank; the elapsed training time is saved in Lightning's layout and counted on resume.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{Timer, TimerInterval};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use std::time::Duration;
use trainer_util::{data, quiet_builder, Tiny, TinyHp};

fn fit(root: &std::path::Path, timer: Timer, resume: Option<CkptPath>) -> Trainer {
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 3);
    let mut t = quiet_builder(root)
        .max_epochs(3)
        .callback(timer)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), resume).unwrap();
    let p = root.join("after.ckpt");
    t.save_checkpoint(&m, &p, false).unwrap();
    t
}

#[test]
fn a_spent_budget_stops_at_the_batch_or_epoch_end_and_counts_across_resume() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    // a budget spent by the first batch, checked per step: one batch (a zero budget stops
    // before any, as Lightning)
    let t = fit(dir.path(), Timer::new(Some(Duration::from_nanos(1))), None);
    assert_eq!(t.global_step(), 1);
    // per epoch: the first epoch (8 batches)
    let t = fit(
        &dir.path().join("e"),
        Timer::new(Some(Duration::from_nanos(1))).interval(TimerInterval::Epoch),
        None,
    );
    assert_eq!(t.global_step(), 8);
    // no budget: all 3 epochs; the saved state is Lightning's
    let t = fit(&dir.path().join("all"), Timer::new(None), None);
    assert_eq!(t.global_step(), 24);
    let c = lightning_core::checkpoint::load(&dir.path().join("all/after.ckpt")).unwrap();
    let elapsed = c.get_path("callbacks.Timer.time_elapsed").unwrap();
    let keys: Vec<String> = elapsed
        .as_dict()
        .unwrap()
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        keys,
        ["train", "sanity_check", "validate", "test", "predict"]
    );
    let trained = elapsed.get("train").and_then(Value::as_f64).unwrap();
    assert!(trained > 0.0);
    // resumed with a budget smaller than what the file already spent: stops before any batch
    let budget = Duration::from_secs_f64(trained / 2.0);
    let path = dir.path().join("all/after.ckpt");
    let mut t = fit(
        &dir.path().join("r"),
        Timer::new(Some(budget)),
        Some(CkptPath::from(&path)),
    );
    assert_eq!(t.global_step(), 24);
    let timer = t.callback_mut::<Timer>().unwrap();
    assert!(
        timer.time_elapsed_train() >= trained,
        "the resumed run counts the saved time"
    );
    assert!(Timer::parse("1:00:00:30").unwrap().duration() == Some(Duration::from_secs(86430)));
    assert!(Timer::parse("00:1:00:00").is_err());
}

#[test]
fn a_zero_budget_trains_nothing() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let t = fit(dir.path(), Timer::new(Some(Duration::ZERO)), None);
    assert_eq!(t.global_step(), 0);
}
