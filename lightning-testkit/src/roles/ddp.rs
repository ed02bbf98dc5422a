//! The training of tests/distributed/trainer_ddp.rs (shared with it): `child` is rank 0 of a 2-process
//! `strategy="ddp"` job on the CPU (it launches rank 1 itself, the same binary with the same
//! arguments), or one process of the same job started by `torchrun`, or the single-process
//! reference run.

use crate::trainer_util::{Tiny, TinyHp};
use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::trainer::{CkptPath, DdpOptions, Strategy, Trainer};
use lightning_core::traverse::Traverse;
use lightning_core::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Rows of training data (a multiple of ranks x batch: no padding).
pub const ROWS: i64 = 96;
/// Per-rank batch size; the single-process reference uses twice this.
pub const BATCH: i64 = 8;

/// `root`, `max_epochs`, `devices` per node (1 on 1 node: the reference), `resume` ("1":
/// from `last`), `num_nodes` (default 1).
pub struct Args {
    pub root: PathBuf,
    pub max_epochs: i64,
    pub devices: usize,
    pub resume: bool,
    pub num_nodes: usize,
}

impl Args {
    pub fn parse(args: &[String]) -> Args {
        let get = |i: usize| args.get(i).cloned().unwrap_or_default();
        Args {
            root: PathBuf::from(get(0)),
            max_epochs: get(1).parse().unwrap_or(2),
            devices: get(2).parse().unwrap_or(2),
            resume: get(3) == "1",
            num_nodes: get(4).parse().unwrap_or(1),
        }
    }
}

pub fn data(batch: i64) -> DataModule {
    tch::manual_seed(77);
    let x = Tensor::randn([ROWS + 16, 4], (Kind::Float, Device::Cpu));
    let y = x
        .sum_dim_intlist(1, false, Kind::Float)
        .gt(0.0)
        .to_kind(Kind::Int64);
    let train = TensorDataset::new(vec![x.narrow(0, 0, ROWS), y.narrow(0, 0, ROWS)]).unwrap();
    let val = TensorDataset::new(vec![x.narrow(0, ROWS, 16), y.narrow(0, ROWS, 16)]).unwrap();
    DataModule::new()
        .train(DataLoader::new(train, batch).shuffle(true))
        .val(DataLoader::new(val, 8))
}

/// The single-process reference's data: the same sample order (PyTorch's sampler with one
/// replica), batches of both ranks' samples together.
pub fn reference_data() -> lightning_core::Result<DataModule> {
    let d = data(BATCH * 2);
    let (Some(train), Some(val)) = (d.train_loader(), d.val_loader()) else {
        return Err(lightning_core::Error::Msg(
            "the test data has no loaders".into(),
        ));
    };
    Ok(DataModule::new()
        .train(train.clone().distributed(1, 0)?)
        .val(val.clone()))
}

/// With this variable set to a step, every rank but 0 exits with status 3 after that step (a
/// rank that dies), and the collectives' timeout is 10 s.
pub const DIE_AT: &str = "DDP_TEST_DIE_AT_STEP";

struct Die(i64);
impl lightning_core::callbacks::Callback for Die {
    fn state_key(&self) -> String {
        "Die".into()
    }
    fn on_train_batch_end(
        &mut self,
        t: &mut lightning_core::callbacks::TrainerContext<'_>,
    ) -> lightning_core::Result<()> {
        if !t.run.is_global_zero && t.run.global_step == self.0 {
            eprintln!("rank dies at step {}", self.0);
            std::process::exit(3);
        }
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// What a rank ends with: its weights, whether it is rank 0, and its final `train_loss`
/// (logged with `sync_dist`: the same on every rank).
pub type Outcome = (Vec<(String, Tensor)>, bool, f64);

/// With this variable set to a number of milliseconds, every step sleeps that long and rank 0
/// prints `step N` (for the preemption test, which signals rank 0 mid-run).
pub const SLOW: &str = "DDP_TEST_SLOW_MS";

pub struct Slow(pub u64);
impl lightning_core::callbacks::Callback for Slow {
    fn state_key(&self) -> String {
        "Slow".into()
    }
    fn on_train_batch_end(
        &mut self,
        t: &mut lightning_core::callbacks::TrainerContext<'_>,
    ) -> lightning_core::Result<()> {
        if t.run.is_global_zero {
            println!("step {}", t.run.global_step);
        }
        std::thread::sleep(Duration::from_millis(self.0));
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Trains a rank.
pub fn train(a: &Args) -> lightning_core::Result<Outcome> {
    let hp = TinyHp {
        dropout: 0.0,
        ..TinyHp::default()
    };
    let (mut m, _vs) = Tiny::new(hp, 5);
    m.sync_dist = true;
    let ckpt = ModelCheckpoint::builder()
        .dirpath(a.root.join("ck"))
        .monitor("val_loss")
        .save_top_k(-1)
        .save_last(SaveLast::True)
        .build()?;
    let mut b = Trainer::builder()
        .enable_progress_bar(false)
        .seed(13)
        .default_root_dir(&a.root)
        .max_epochs(a.max_epochs)
        .num_sanity_val_steps(0)
        .callback(ckpt);
    let die_at = std::env::var(DIE_AT)
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    if let Some(step) = die_at {
        b = b.callback(Die(step));
    }
    if let Some(ms) = std::env::var(SLOW).ok().and_then(|s| s.parse::<u64>().ok()) {
        b = b.callback(Slow(ms));
    }
    let data = if a.devices * a.num_nodes > 1 {
        b = b
            .strategy(Strategy::Ddp(DdpOptions {
                timeout: Duration::from_secs(if die_at.is_some() { 10 } else { 60 }),
                ..DdpOptions::default()
            }))
            .devices(a.devices)
            .num_nodes(a.num_nodes)
            .accelerator("cpu");
        data(BATCH)
    } else {
        reference_data()?
    };
    let mut t = b.build()?;
    t.fit(&mut m, &data, a.resume.then_some(CkptPath::Last))?;
    let rank0 = t.is_global_zero();
    if t.was_preempted() {
        println!("preempted at step {}", t.global_step());
    }
    let loss = t
        .callback_metrics()
        .get("train_loss")
        .copied()
        .unwrap_or(f64::NAN);
    Ok((m.named_parameters(), rank0, loss))
}

/// The child: trains, writes `weights-<rank0|other>-<pid>.ckpt` with its final weights, and
/// (rank 0) waits for the ranks it launched.
pub fn child(args: &[String]) {
    let a = Args::parse(args);
    let r = train(&a).and_then(|(weights, rank0, loss)| {
        let mut sd = lightning_core::Dict::new();
        for (k, v) in weights {
            sd.insert(k.into(), Value::Tensor(v));
        }
        let tag = if rank0 { "rank0" } else { "other" };
        let p = a
            .root
            .join(format!("weights-{tag}-{}.ckpt", std::process::id()));
        lightning_core::checkpoint::save(&p, &Value::OrderedDict(sd))
            .map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
        std::fs::write(p.with_extension("loss"), format!("{loss:?}"))
            .map_err(|e| lightning_core::Error::Msg(e.to_string()))?;
        lightning_core::trainer::finish_distributed()
    });
    if let Err(e) = r {
        eprintln!("ddp child failed: {e}");
        std::process::exit(1);
    }
    println!("ddp child ok");
}

/// The weights files the children wrote under `root`, rank 0's first.
pub fn weights_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("weights-"))
            && p.extension().is_some_and(|e| e == "ckpt")
    });
    v.sort();
    v
}
