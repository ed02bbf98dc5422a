//! The training of tests/distributed/data_ddp.rs: a `strategy="ddp"` job on the CPU (rank 0
//! launches the others) or one process, on a dataset that records which samples it loaded,
//! with loader worker threads; each process writes what the test compares: the sample indices
//! it trained on, its final weights and its validation metrics.

use crate::trainer_util::{Tiny, TinyHp};
use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::data::{
    BoxError, DataLoader, DataModule, Dataset, Sample, SampleRng, TensorDataset,
};
use lightning_core::trainer::{CkptPath, DdpOptions, Strategy, Trainer};
use lightning_core::traverse::Traverse;
use lightning_core::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Training rows: not a multiple of the ranks times the batch, so shards and steps are uneven.
pub const ROWS: i64 = 61;
/// Validation rows: the ranks' validation shards differ in length (and, on 3 ranks, in
/// batches).
pub const VAL_ROWS: i64 = 13;
/// Per-rank batch size.
pub const BATCH: i64 = 4;

/// `test-child data-ddp ROOT DEVICES MAX_EPOCHS MAX_STEPS RESUME WORKERS LR TAG`.
#[derive(Clone, Debug)]
pub struct Args {
    /// `default_root_dir` (checkpoints in `ROOT/ck`).
    pub root: PathBuf,
    /// Processes (1: no DDP).
    pub devices: usize,
    /// `max_epochs`.
    pub max_epochs: i64,
    /// `max_steps` (-1: none); a `last.ckpt` is saved every `max_steps` steps.
    pub max_steps: i64,
    /// Resume from `ROOT/ck/last.ckpt`.
    pub resume: bool,
    /// Loader worker threads.
    pub workers: usize,
    /// Adam's learning rate (0: the weights stay at their seeded init).
    pub lr: f64,
    /// Names this run's output files.
    pub tag: String,
}

impl Args {
    /// The command line's arguments after the role.
    pub fn parse(args: &[String]) -> Args {
        let get = |i: usize| args.get(i).cloned().unwrap_or_default();
        Args {
            root: PathBuf::from(get(0)),
            devices: get(1).parse().unwrap_or(1),
            max_epochs: get(2).parse().unwrap_or(1),
            max_steps: get(3).parse().unwrap_or(-1),
            resume: get(4) == "1",
            workers: get(5).parse().unwrap_or(0),
            lr: get(6).parse().unwrap_or(0.05),
            tag: get(7),
        }
    }
    /// The command line's arguments after the role.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.root.display().to_string(),
            self.devices.to_string(),
            self.max_epochs.to_string(),
            self.max_steps.to_string(),
            if self.resume { "1" } else { "0" }.into(),
            self.workers.to_string(),
            self.lr.to_string(),
            self.tag.clone(),
        ]
    }
}

/// Rows that record the indices loaded (in load order).
struct Recording {
    rows: TensorDataset,
    loaded: Arc<Mutex<Vec<usize>>>,
}

impl Dataset for Recording {
    fn len(&self) -> usize {
        Dataset::len(&self.rows)
    }
    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample, BoxError> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
        self.rows.get(index, rng)
    }
}

fn rows(n: i64, seed: i64) -> TensorDataset {
    tch::manual_seed(seed);
    let x = Tensor::randn([n, 4], (Kind::Float, Device::Cpu));
    let y = (x.narrow(1, 0, 1).squeeze_dim(1) + x.narrow(1, 1, 1).squeeze_dim(1))
        .gt(0.0)
        .to_kind(Kind::Int64);
    TensorDataset::new(vec![x, y]).unwrap_or_else(|e| panic!("{e}"))
}

/// What a process ends with: its weights, its rank, its validation metrics and the training
/// and validation indices it loaded.
type Outcome = (Vec<(String, Tensor)>, usize, Value, [Vec<usize>; 2]);

/// Trains one process.
fn train(a: &Args) -> lightning_core::Result<Outcome> {
    let hp = TinyHp {
        dropout: 0.0,
        lr: a.lr,
        ..TinyHp::default()
    };
    let (mut m, _vs) = Tiny::new(hp, 5);
    let mut ckpt = ModelCheckpoint::builder()
        .dirpath(a.root.join("ck"))
        .save_top_k(0)
        .save_last(SaveLast::True);
    if a.max_steps > 0 {
        ckpt = ckpt.every_n_train_steps(a.max_steps);
    }
    let mut b = Trainer::builder()
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .seed(21)
        .default_root_dir(&a.root)
        .max_epochs(a.max_epochs)
        .max_steps(a.max_steps)
        .num_sanity_val_steps(0)
        .callback(ckpt.build()?);
    if a.devices > 1 {
        b = b
            .strategy(Strategy::Ddp(DdpOptions {
                timeout: Duration::from_secs(60),
                ..DdpOptions::default()
            }))
            .devices(a.devices)
            .accelerator("cpu");
    }
    let loaded = Arc::new(Mutex::new(Vec::new()));
    let val_loaded = Arc::new(Mutex::new(Vec::new()));
    let train = Recording {
        rows: rows(ROWS, 31),
        loaded: loaded.clone(),
    };
    let data = DataModule::new()
        .train(
            DataLoader::new(train, BATCH)
                .shuffle(true)
                .num_workers(a.workers),
        )
        .val(
            DataLoader::new(
                Recording {
                    rows: rows(VAL_ROWS, 32),
                    loaded: val_loaded.clone(),
                },
                BATCH,
            )
            .num_workers(a.workers),
        );
    let mut t = b.build()?;
    let resume = a
        .resume
        .then(|| CkptPath::from(a.root.join("ck/last.ckpt")));
    t.fit(&mut m, &data, resume)?;
    let mut metrics = Value::dict();
    for (k, v) in t.callback_metrics() {
        metrics.insert(k.as_str(), *v);
    }
    let rank = std::env::var("RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let take = |l: &Mutex<Vec<usize>>| l.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((
        m.named_parameters(),
        rank,
        metrics,
        [take(&loaded), take(&val_loaded)],
    ))
}

/// The child: trains, then writes `<tag>-rank<r>.ckpt` (weights, `val` metrics, the loaded
/// training `indices` and `val_indices`), and (rank 0) waits for the ranks it launched.
pub fn child(args: &[String]) {
    let a = Args::parse(args);
    let r = train(&a).and_then(|(weights, rank, metrics, loaded)| {
        let mut sd = lightning_core::Dict::new();
        for (k, v) in weights {
            sd.insert(k.into(), Value::Tensor(v));
        }
        let mut out = Value::dict();
        out.insert("state_dict", Value::OrderedDict(sd));
        out.insert("val", metrics);
        let list = |l: &[usize]| Value::List(l.iter().map(|&i| Value::from(i as i64)).collect());
        out.insert("indices", list(&loaded[0]));
        out.insert("val_indices", list(&loaded[1]));
        let p = output(&a.root, &a.tag, rank);
        lightning_core::checkpoint::save(&p, &out)
            .map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
        lightning_core::trainer::finish_distributed()
    });
    if let Err(e) = r {
        eprintln!("data-ddp child failed: {e}");
        std::process::exit(1);
    }
}

/// Where rank `rank` of the run tagged `tag` writes its outcome.
pub fn output(root: &Path, tag: &str, rank: usize) -> PathBuf {
    root.join(format!("{tag}-rank{rank}.ckpt"))
}
