//! Trainer basics: fit/validate/test/predict, logging, checkpointing off, max_steps,
//! gradient accumulation and clipping, errors for misuse.

use lightning_testkit::trainer_util;

use lightning_core::data::{DataLoader, DataModule};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, ClipAlgorithm, Trainer};
use std::sync::atomic::Ordering;
use trainer_util::{data, files_under, Tiny, TinyHp};

fn quiet() -> lightning_core::trainer::TrainerBuilder {
    Trainer::builder().enable_progress_bar(false).seed(7)
}

#[test]
fn fit_then_validate_test_predict() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(
        TinyHp {
            dropout: 0.0,
            ..Default::default()
        },
        0,
    );
    let dm = data(96, 8, true);
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(8)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    let before = t.validate(&mut m, &dm, None).unwrap()["val_loss"];
    t.fit(&mut m, &dm, None).unwrap();
    // 72 train rows / 8 = 9 batches per epoch.
    assert_eq!((t.current_epoch(), t.global_step()), (8, 72));
    let after = t.validate(&mut m, &dm, None).unwrap();
    assert!(
        after["val_loss"] < before * 0.8,
        "val_loss {before} -> {}",
        after["val_loss"]
    );
    assert!(after["val_acc"] > 0.6, "{after:?}");
    let test = t.test(&mut m, &dm, None).unwrap();
    assert!(
        (test["test_loss"] - after["val_loss"]).abs() < 1e-6,
        "same data, eval mode"
    );
    let preds = t.predict(&mut m, &dm, None).unwrap();
    assert_eq!(preds.iter().map(|p| p.size()[0]).sum::<i64>(), 24);
    assert!(t.callback_metrics().contains_key("train_loss"));
}

#[test]
fn checkpointing_and_logger_off_write_nothing() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(2)
        .enable_checkpointing(false)
        .logger(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(32, 8, true), None).unwrap();
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
    // With the logger on: only the CSV logger's files.
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(1)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(32, 8, true), None).unwrap();
    assert_eq!(
        files_under(dir.path()),
        [
            "lightning_logs/version_0/hparams.yaml",
            "lightning_logs/version_0/metrics.csv"
        ]
    );
}

#[test]
fn metrics_csv_and_hparams_yaml_match_csvlogger() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let dm = data(32, 8, false); // 3 train batches, 1 val batch
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(2)
        .log_every_n_steps(1)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    let v = dir.path().join("lightning_logs/version_0");
    assert_eq!(t.log_dir().unwrap(), v);
    let csv = std::fs::read_to_string(v.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,step,train_loss,val_acc,val_loss");
    // Per epoch: 3 step rows and one validation row.
    assert_eq!(lines.len(), 1 + 2 * 4, "{csv}");
    assert!(
        lines[1].starts_with("0,0,") && lines[4].starts_with("0,2,,"),
        "{csv}"
    );
    assert!(lines[8].starts_with("1,5,,"), "{csv}");
    let yaml = std::fs::read_to_string(v.join("hparams.yaml")).unwrap();
    assert!(
        yaml.contains("hidden: 8") && yaml.contains("optimizer: adam"),
        "{yaml}"
    );
    // A second run gets the next version.
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(1)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    assert!(t.log_dir().unwrap().ends_with("version_1"));
}

#[test]
fn epoch_metrics_are_batch_weighted_means() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let dm = data(40, 4, false); // val: 10 rows = 4 + 4 + 2
    let mut t = quiet()
        .default_root_dir(dir.path())
        .logger(false)
        .build()
        .unwrap();
    let got = t.validate(&mut m, &dm, None).unwrap()["val_loss"];
    let val = dm.val_loader().unwrap();
    let whole = DataModule::new().val(DataLoader::from_shared(val.dataset().unwrap().clone(), 100));
    let want = t.validate(&mut m, &whole, None).unwrap()["val_loss"];
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn max_steps_stops_mid_epoch() {
    let _serial = trainer_util::serial();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let dir = tempfile::tempdir().unwrap();
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_steps(5)
        .logger(false)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(32, 8, true), None).unwrap();
    assert_eq!(t.global_step(), 5);
}

#[test]
fn accumulating_two_half_batches_equals_one_full_batch() {
    let _serial = trainer_util::serial();
    let hp = TinyHp {
        dropout: 0.0,
        optimizer: "sgd".into(),
        step_lr: 0,
        ..Default::default()
    };
    let run = |batch: i64, acc: usize| {
        let (mut m, _vs) = Tiny::new(hp.clone(), 3);
        let dir = tempfile::tempdir().unwrap();
        let mut t = quiet()
            .default_root_dir(dir.path())
            .max_epochs(2)
            .accumulate_grad_batches(acc)
            .logger(false)
            .enable_checkpointing(false)
            .num_sanity_val_steps(0)
            .build()
            .unwrap();
        t.fit(&mut m, &data(64, batch, false), None).unwrap();
        (t.global_step(), m.weights())
    };
    let (s_acc, w_acc) = run(4, 2);
    let (s_full, w_full) = run(8, 1);
    assert_eq!(s_acc, s_full);
    assert_eq!(s_acc, 12);
    for ((n, a), (_, b)) in w_acc.iter().zip(&w_full) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{n}: {x} vs {y}");
        }
    }
}

#[test]
fn gradient_clipping_bounds_each_update() {
    let _serial = trainer_util::serial();
    let hp = TinyHp {
        dropout: 0.0,
        optimizer: "sgd".into(),
        step_lr: 0,
        lr: 1.0,
        ..Default::default()
    };
    for (algo, clip) in [(ClipAlgorithm::Norm, 1e-3), (ClipAlgorithm::Value, 1e-4)] {
        let (mut m, _vs) = Tiny::new(hp.clone(), 0);
        let before: Vec<f32> = m.weights().into_iter().flat_map(|(_, w)| w).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut t = quiet()
            .default_root_dir(dir.path())
            .max_steps(1)
            .gradient_clip_val(clip)
            .gradient_clip_algorithm(algo)
            .logger(false)
            .enable_checkpointing(false)
            .build()
            .unwrap();
        t.fit(&mut m, &data(32, 8, false), None).unwrap();
        let after: Vec<f32> = m.weights().into_iter().flat_map(|(_, w)| w).collect();
        let d: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(a, b)| f64::from(a - b))
            .collect();
        match algo {
            ClipAlgorithm::Norm => {
                let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!(
                    norm <= clip * 1.01 && norm > clip * 0.5,
                    "update norm {norm}"
                );
            }
            ClipAlgorithm::Value => {
                let max = d.iter().fold(0f64, |a, x| a.max(x.abs()));
                assert!(max <= clip * 1.01 && max > clip * 0.5, "max update {max}");
            }
        }
    }
}

#[test]
fn validation_schedule_follows_interval_settings() {
    let _serial = trainer_util::serial();
    let runs = |b: lightning_core::trainer::TrainerBuilder| {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
        let counter = m.val_runs.clone();
        let dir = tempfile::tempdir().unwrap();
        let mut t = b
            .default_root_dir(dir.path())
            .max_epochs(4)
            .logger(false)
            .enable_checkpointing(false)
            .build()
            .unwrap();
        t.fit(&mut m, &data(64, 8, true), None).unwrap(); // 6 train batches
        counter.load(Ordering::SeqCst)
    };
    // 1 sanity run + one per epoch.
    assert_eq!(runs(quiet()), 5);
    assert_eq!(
        runs(quiet().num_sanity_val_steps(0).check_val_every_n_epoch(2)),
        2
    );
    // Every 2 batches: after batches 2, 4 and the epoch end.
    assert_eq!(
        runs(quiet().num_sanity_val_steps(0).val_check_interval(2)),
        12
    );
    // A fraction of the epoch: every 3 of the 6 batches -> after batch 3 and at the end.
    assert_eq!(
        runs(quiet().num_sanity_val_steps(0).val_check_interval(0.5)),
        8
    );
    assert_eq!(
        runs(quiet().num_sanity_val_steps(0).val_check_interval(1.0)),
        4
    );
    assert_eq!(
        runs(quiet().num_sanity_val_steps(0).limit_val_batches(0usize)),
        0
    );
}

#[test]
fn misuse_gets_clear_errors() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let dm = data(32, 8, true);
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(1)
        .build()
        .unwrap();
    let e = t
        .fit(
            &mut m,
            &dm,
            Some(CkptPath::from(dir.path().join("nope.ckpt"))),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Checkpoint file not found:") && e.contains("nope.ckpt"),
        "{e}"
    );
    let e = t
        .fit(&mut m, &dm, Some(CkptPath::Best))
        .unwrap_err()
        .to_string();
    assert!(e.contains("best"), "{e}");
    let e = t
        .fit(&mut m, &DataModule::new(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train loader"), "{e}");
    assert!(Trainer::builder().precision("8-bit").build().is_err());

    /// A module with no training_step: Lightning's MisconfigurationException.
    struct NoStep(Tiny);
    impl Traverse for NoStep {
        fn visit(
            &self,
            p: &str,
            f: &mut dyn FnMut(&str, &tch::Tensor, lightning_core::TensorKind),
        ) {
            self.0.visit(p, f)
        }
        fn visit_mut(
            &mut self,
            p: &str,
            f: &mut dyn FnMut(&str, &mut tch::Tensor, lightning_core::TensorKind),
        ) {
            self.0.visit_mut(p, f)
        }
    }
    impl HasHparams for NoStep {
        type Hparams = TinyHp;
        fn hparams(&self) -> &TinyHp {
            &self.0.hp
        }
    }
    impl LightningModule for NoStep {
        fn build(hp: &TinyHp, vs: &tch::nn::Path) -> lightning_core::Result<Self> {
            Ok(NoStep(Tiny::build(hp, vs)?))
        }
        fn configure_optimizers(
            &self,
        ) -> lightning_core::Result<lightning_core::lightning_module::OptimizerConfig> {
            self.0.configure_optimizers()
        }
    }
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut ns = NoStep::build(&TinyHp::default(), &vs.root()).unwrap();
    let e = t.fit(&mut ns, &dm, None).unwrap_err().to_string();
    assert!(e.contains("`training_step` must be implemented"), "{e}");
}

#[test]
fn last_without_checkpoints_warns_and_starts_fresh() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let cb = trainer_util::SaveAt::new(&dir.path().join("ckpts"), &[], "x.ckpt");
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(1)
        .callback(cb)
        .logger(false)
        .build()
        .unwrap();
    t.fit(&mut m, &data(32, 8, true), Some(CkptPath::Last))
        .unwrap();
    assert_eq!(t.global_step(), 3);
}

#[test]
fn default_checkpoint_is_epoch_end_in_the_version_dir() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 0);
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(2)
        .build()
        .unwrap();
    t.fit(&mut m, &data(32, 8, true), None).unwrap();
    // 24 train rows / 8 = 3 steps per epoch; save_top_k=1 without monitor keeps the newest.
    assert_eq!(
        files_under(dir.path()),
        [
            "lightning_logs/version_0/checkpoints/epoch=1-step=6.ckpt",
            "lightning_logs/version_0/hparams.yaml",
            "lightning_logs/version_0/metrics.csv"
        ]
    );
    let mc = t
        .callback::<lightning_core::callbacks::ModelCheckpoint>()
        .unwrap();
    assert!(mc
        .best_model_path()
        .unwrap()
        .ends_with("epoch=1-step=6.ckpt"));
    // The file holds the callback's state as of its own save (Lightning's order).
    let f = dir
        .path()
        .join("lightning_logs/version_0/checkpoints/epoch=1-step=6.ckpt");
    let c = lightning_core::checkpoint::load(&f).unwrap();
    let cbs = c.get("callbacks").and_then(Value::as_dict).unwrap();
    let (key, state) = cbs.iter().next().unwrap();
    assert!(
        key.to_string()
            .starts_with("ModelCheckpoint{'monitor': None"),
        "{key}"
    );
    let best = state
        .get("best_model_path")
        .and_then(Value::as_str)
        .unwrap();
    assert!(best.ends_with("epoch=1-step=6.ckpt"), "{best}");
}

#[test]
fn early_stopping_stops_fit_through_request_stop() {
    use lightning_core::callbacks::{EarlyStopping, Mode};
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(
        TinyHp {
            dropout: 0.0,
            ..Default::default()
        },
        0,
    );
    // val_loss falls while it trains: in "max" mode it never improves, so patience 1 stops
    // after the second validation.
    let es = EarlyStopping::builder("val_loss")
        .mode(Mode::Max)
        .patience(1)
        .build()
        .unwrap();
    let mut t = quiet()
        .default_root_dir(dir.path())
        .max_epochs(10)
        .logger(false)
        .enable_checkpointing(false)
        .callback(es)
        .build()
        .unwrap();
    t.fit(&mut m, &data(32, 8, true), None).unwrap();
    assert_eq!(t.current_epoch(), 2, "stopped after epoch 1's validation");
    assert_eq!(t.global_step(), 6);
}
