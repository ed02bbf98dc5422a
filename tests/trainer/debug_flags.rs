//! `fast_dev_run` and `overfit_batches`, as Lightning sets them up.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{EarlyStopping, ModelCheckpoint};
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use std::path::Path;
use trainer_util::{data, Tiny, TinyHp};

#[test]
fn fast_dev_run_runs_n_batches_and_writes_nothing() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 1);
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .default_root_dir(dir.path())
        .max_epochs(10)
        .fast_dev_run(2)
        .callback(
            ModelCheckpoint::builder()
                .dirpath(dir.path().join("ck"))
                .build()
                .unwrap(),
        )
        .callback(
            EarlyStopping::builder("val_loss")
                .patience(0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, true), None).unwrap();
    assert_eq!((t.global_step(), t.current_epoch()), (2, 1));
    assert!(
        t.callback_metrics().contains_key("val_loss"),
        "validation ran"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(files.is_empty(), "no checkpoint, no log: {files:?}");
}

fn overfit(root: &Path, shuffle: bool) -> Vec<(String, tch::Tensor)> {
    let (mut m, _vs) = Tiny::new(
        TinyHp {
            dropout: 0.0,
            ..TinyHp::default()
        },
        1,
    );
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .enable_checkpointing(false)
        .logger(false)
        .seed(2)
        .default_root_dir(root)
        .max_epochs(3)
        .overfit_batches(2)
        .build()
        .unwrap();
    t.fit(&mut m, &data(80, 8, shuffle), None).unwrap();
    assert_eq!(t.global_step(), 6, "2 batches x 3 epochs");
    m.named_parameters()
}

#[test]
fn overfit_batches_trains_the_same_batches_every_epoch() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    // a shuffling loader is unshuffled: the same first 2 batches as an unshuffled one
    let a = overfit(dir.path(), true);
    let b = overfit(dir.path(), false);
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{n}");
    }
}
