//! Training on a [`Dataset`] (and an [`IterableDataset`]) through the loader's worker threads:
//! the number of workers never changes the weights, a mid-epoch resume with other workers is
//! bitwise exact (the loader's state in `loops.fit_loop.state_dict.combined_loader`), and a
//! sample that fails to load or a panicking dataset ends `fit` with an error naming it.

use lightning_testkit::trainer_util;

use lightning_core::checkpoint;
use lightning_core::data::{
    BoxError, DataLoader, DataModule, Dataset, Field, IterableDataset, Sample, SampleRng,
    StreamContext, TensorDataset,
};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, TrainerBuilder};
use std::path::Path;
use tch::Tensor;
use trainer_util::{final_state, SaveAt, Tiny, TinyHp};

/// Tiny's rows with noise drawn from each sample's RNG (an augmentation), and a failure or a
/// panic at a chosen index.
struct Noisy {
    rows: TensorDataset,
    fail_at: Option<usize>,
    panic_at: Option<usize>,
}

impl Dataset for Noisy {
    fn len(&self) -> usize {
        Dataset::len(&self.rows)
    }
    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample, BoxError> {
        if self.fail_at == Some(index) {
            return Err(format!("cannot decode rows/{index}.bin").into());
        }
        if self.panic_at == Some(index) {
            panic!("dataset bug at {index}");
        }
        noised(self.rows.get(index, rng)?, rng)
    }
}

/// Adds noise to an `(x, y)` row's `x` from the sample's RNG (an augmentation).
fn noised(row: Sample, rng: &mut SampleRng) -> Result<Sample, BoxError> {
    let mut fields = row.into_fields().into_iter().map(|(_, f)| f);
    let (Some(Field::Tensor(x)), Some(Field::Tensor(y))) = (fields.next(), fields.next()) else {
        return Err("expected (x, y) rows".into());
    };
    let noise: Vec<f32> = (0..4).map(|_| rng.range(-0.1, 0.1) as f32).collect();
    Ok(Sample::from_tensors(vec![
        x + Tensor::from_slice(&noise),
        y,
    ]))
}

/// The `(x, y)` rows of one of `trainer_util::data`'s loaders, read back through the Dataset
/// trait.
fn rows(l: Option<&DataLoader>) -> TensorDataset {
    let t = l.and_then(DataLoader::dataset).expect("a map-style loader");
    let mut rng = SampleRng::new(0, 0, 0);
    let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = (0..t.len())
        .map(|i| {
            let mut f = t.get(i, &mut rng).unwrap().into_fields().into_iter();
            let mut next = || match f.next() {
                Some((_, Field::Tensor(t))) => t,
                _ => unreachable!("tensor rows"),
            };
            (next(), next())
        })
        .unzip();
    TensorDataset::new(vec![Tensor::stack(&xs, 0), Tensor::stack(&ys, 0)]).unwrap()
}

fn noisy(workers: usize, fail_at: Option<usize>, panic_at: Option<usize>) -> DataModule {
    let dm = trainer_util::data(80, 8, true);
    let train = Noisy {
        rows: rows(dm.train_loader()),
        fail_at,
        panic_at,
    };
    DataModule::new()
        .train(DataLoader::new(train, 8).shuffle(true).num_workers(workers))
        .val(DataLoader::new(rows(dm.val_loader()), 8).num_workers(workers))
}

fn builder(root: &Path) -> TrainerBuilder {
    trainer_util::quiet_builder(root).enable_model_summary(false)
}

/// Three epochs on `data` without a stop: the final state.
fn straight(dir: &Path, data: &DataModule) -> Value {
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir)
        .max_epochs(3)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, data, None).unwrap();
    final_state(&m, &mut t, dir)
}

/// A run on `first` that saves at step 13 (mid epoch 1) and stops at 15, then a fresh model
/// resumed from that file on `then` to the end of epoch 3: the saved file, the resumed run's
/// final state and its global step.
fn stopped_and_resumed(dir: &Path, first: &DataModule, then: &DataModule) -> (Value, Value, i64) {
    let ck = dir.join("ck");
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
    let mut t = builder(dir)
        .max_steps(15)
        .callback(SaveAt::new(&ck, &[13], "last.ckpt"))
        .build()
        .unwrap();
    t.fit(&mut m, first, None).unwrap();
    let saved = checkpoint::load(&ck.join("last.ckpt")).unwrap();
    let (mut m2, _vs2) = Tiny::new(TinyHp::default(), 99);
    let mut t2 = builder(dir)
        .max_epochs(3)
        .callback(SaveAt::new(&ck, &[], "unused.ckpt"))
        .build()
        .unwrap();
    t2.fit(&mut m2, then, Some(CkptPath::Last)).unwrap();
    (saved, final_state(&m2, &mut t2, dir), t2.global_step())
}

#[test]
fn the_number_of_workers_never_changes_the_weights() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let want = straight(dir.path(), &noisy(0, None, None));
    for workers in [1, 4] {
        assert!(
            straight(dir.path(), &noisy(workers, None, None)) == want,
            "{workers} workers"
        );
    }
}

#[test]
fn a_mid_epoch_resume_with_other_workers_is_bitwise_exact() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let want = straight(dir.path(), &noisy(2, None, None));
    let (saved, got, step) =
        stopped_and_resumed(dir.path(), &noisy(3, None, None), &noisy(1, None, None));
    let loader = saved
        .get_path("loops.fit_loop.state_dict.combined_loader")
        .and_then(Value::as_seq)
        .and_then(|l| l.first().cloned())
        .expect("the loader's state where Lightning keeps a stateful loader's");
    // 60 training rows in batches of 8: 8 batches per epoch, step 13 is batch 5 of epoch 1
    assert_eq!(loader.get("epoch").and_then(Value::as_i64), Some(1));
    assert_eq!(loader.get("_num_yielded").and_then(Value::as_i64), Some(5));
    assert_eq!(
        loader.get("samples_consumed").and_then(Value::as_i64),
        Some(40)
    );
    assert_eq!(step, 24);
    assert!(got == want, "the resumed run differs from the straight one");
}

#[test]
fn a_sample_that_fails_to_load_ends_fit_with_an_error_naming_it() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    for workers in [0, 2] {
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let mut t = builder(dir.path())
            .max_epochs(1)
            .enable_checkpointing(false)
            .build()
            .unwrap();
        let e = t
            .fit(&mut m, &noisy(workers, Some(17), None), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample 17") && e.contains("rows/17.bin"), "{e}");
        let (mut m, _vs) = Tiny::new(TinyHp::default(), 5);
        let e = t
            .fit(&mut m, &noisy(workers, None, Some(3)), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("panicked") && e.contains("dataset bug at 3"),
            "{e}"
        );
    }
}

#[test]
fn the_image_example_trains_on_png_files_to_val_acc_090() {
    use lightning_rs::images::{prepare, train_set, val_set, Cnn, CnnConfig};
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    let (train, val) = prepare(&data, 0).unwrap();
    assert_eq!((train, val), (1438, 359));
    let dm = DataModule::new()
        .train(
            DataLoader::new(train_set(&data).unwrap(), 64)
                .shuffle(true)
                .num_workers(2),
        )
        .val(DataLoader::new(val_set(&data).unwrap(), 256).num_workers(2));
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let hp = CnnConfig::from_value(&Value::dict()).unwrap();
    let mut m = Cnn::build(&hp, &vs.root()).unwrap();
    let mut t = builder(dir.path())
        .max_epochs(4)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    t.fit(&mut m, &dm, None).unwrap();
    let acc = t.callback_metrics()["val_acc"];
    eprintln!(
        "val_acc {acc:.4} after 4 epochs in {:.1}s, {:.1}s waiting for data",
        started.elapsed().as_secs_f64(),
        t.data_wait().as_secs_f64()
    );
    assert!(acc >= 0.9, "val_acc {acc}");
}

/// Tiny's training rows as a stream, shifted by the epoch (so epochs differ) and each with
/// noise from its own RNG; it seeks to `skip` instead of reading the consumed rows.
struct Streamed {
    rows: TensorDataset,
}

impl IterableDataset for Streamed {
    fn len(&self, _epoch: u64, rank: usize, world: usize) -> usize {
        Dataset::len(&self.rows)
            .saturating_sub(rank)
            .div_ceil(world)
    }
    fn stream(
        &self,
        ctx: &StreamContext,
        skip: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Sample, BoxError>> + Send>, BoxError> {
        let (rows, ctx) = (self.rows.clone(), *ctx);
        let n = Dataset::len(&rows);
        let it = (ctx.rank + skip * ctx.world..n)
            .step_by(ctx.world)
            .map(move |k| {
                let i = (k + 7 * ctx.epoch as usize) % n;
                let mut rng = SampleRng::new(ctx.seed, ctx.epoch, k as u64);
                noised(rows.get(i, &mut rng)?, &mut rng)
            });
        Ok(Box::new(it))
    }
}

fn streamed(workers: usize) -> DataModule {
    let dm = trainer_util::data(80, 8, true);
    DataModule::new()
        .train(
            DataLoader::iterable(
                Streamed {
                    rows: rows(dm.train_loader()),
                },
                8,
            )
            .num_workers(workers),
        )
        .val(DataLoader::new(rows(dm.val_loader()), 8))
}

#[test]
fn an_iterable_dataset_trains_the_same_with_workers_and_resumes_mid_epoch_exactly() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let want = straight(dir.path(), &streamed(0));
    assert!(straight(dir.path(), &streamed(2)) == want, "2 workers");
    let (_, got, _) = stopped_and_resumed(dir.path(), &streamed(1), &streamed(3));
    assert!(got == want, "the resumed run differs");
}
