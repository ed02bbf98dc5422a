//! Per-step framework overhead: `Trainer::fit` vs a hand-written tch loop doing the same
//! work (same tiny MLP, same data order, same Adam, CPU), as a ratio measured in one run.
//!
//! `cargo bench --bench overhead` (under `cargo test` it only checks that both loops run).

use clap::Parser;
use lightning_core::data::{mix_seed, permutation, DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig, Optimizer};
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use lightning_core::TensorKind;
use lightning_testkit::bench::CargoArgs;
use std::time::Instant;
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[derive(Clone, Debug, Default)]
struct Hp;

impl Hyperparameters for Hp {
    fn to_value(&self) -> Value {
        Value::dict()
    }
    fn from_value(_: &Value) -> Result<Self, lightning_core::HparamError> {
        Ok(Hp)
    }
    fn set_str(&mut self, key: &str, _: &str) -> Result<(), lightning_core::HparamError> {
        Err(lightning_core::HparamError::Unknown {
            field: key.into(),
            valid: vec![],
        })
    }
    fn fields() -> Vec<lightning_core::hparams::HparamField> {
        vec![]
    }
}

/// 32 -> 64 -> 64 -> 10.
struct Mlp {
    hp: Hp,
    layers: Vec<nn::Linear>,
}

impl Traverse for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (i, l) in self.layers.iter().enumerate() {
            f(&format!("{prefix}{i}.weight"), &l.ws, TensorKind::Parameter);
            if let Some(b) = &l.bs {
                f(&format!("{prefix}{i}.bias"), b, TensorKind::Parameter);
            }
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            f(
                &format!("{prefix}{i}.weight"),
                &mut l.ws,
                TensorKind::Parameter,
            );
            if let Some(b) = &mut l.bs {
                f(&format!("{prefix}{i}.bias"), b, TensorKind::Parameter);
            }
        }
    }
}

impl HasHparams for Mlp {
    type Hparams = Hp;
    fn hparams(&self) -> &Hp {
        &self.hp
    }
}

impl Mlp {
    fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let h = self.layers[0].forward(x).relu();
        let h = self.layers[1].forward(&h).relu();
        self.layers[2].forward(&h).cross_entropy_for_logits(y)
    }
}

impl LightningModule for Mlp {
    fn build(_: &Hp, vs: &nn::Path) -> lightning_core::Result<Self> {
        let dims = [(32, 64), (64, 64), (64, 10)];
        Ok(Mlp {
            hp: Hp,
            layers: dims
                .iter()
                .enumerate()
                .map(|(i, &(a, b))| nn::linear(vs / i, a, b, Default::default()))
                .collect(),
        })
    }
    fn training_step(
        &mut self,
        b: &Batch,
        _: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let loss = self.loss(&b[0], &b[1]);
        ctx.log("train_loss", &loss).prog_bar(true);
        Ok(loss)
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let opt = Adam::new(self.parameters(), AdamConfig::default())?;
        Ok(OptimizerConfig::new(opt))
    }
}

const ROWS: i64 = 2048;
const BATCH: i64 = 32;
const SEED: u64 = 5;

fn dataset() -> TensorDataset {
    tch::manual_seed(0);
    let x = Tensor::randn([ROWS, 32], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 10).argmax(-1, false);
    TensorDataset::new(vec![x, y]).expect("dataset")
}

fn model() -> (Mlp, nn::VarStore) {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Mlp::build(&Hp, &vs.root()).expect("build");
    (m, vs)
}

/// Seconds per step of `epochs` epochs through the Trainer (no logger, checkpoints, bar or
/// validation: the loop, hooks, logging and RNG bookkeeping only).
fn trainer_loop(epochs: i64) -> (f64, Vec<f32>) {
    let (mut m, _vs) = model();
    let dm = DataModule::new().train(DataLoader::new(dataset(), BATCH).shuffle(true));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = Trainer::builder()
        .max_epochs(epochs)
        .seed(SEED)
        .default_root_dir(dir.path())
        .logger(false)
        .enable_checkpointing(false)
        .enable_progress_bar(false)
        .build()
        .expect("trainer");
    let start = Instant::now();
    t.fit(&mut m, &dm, None).expect("fit");
    let secs = start.elapsed().as_secs_f64() / t.global_step() as f64;
    (
        secs,
        Vec::<f32>::try_from(&m.layers[2].ws.flatten(0, -1)).expect("weights"),
    )
}

/// The same work by hand: shuffled batches, reseeded RNG, forward, backward, Adam, the loss
/// read back as a float (what logging it costs).
fn manual_loop(epochs: i64) -> (f64, Vec<f32>) {
    let (m, _vs) = model();
    let ds = dataset();
    let mut opt = Adam::new(m.parameters(), AdamConfig::default()).expect("adam");
    let steps_per_epoch = ROWS / BATCH;
    let start = Instant::now();
    let mut steps = 0;
    for epoch in 0..epochs {
        let perm = Tensor::from_slice(&permutation(ROWS, mix_seed(SEED, &[epoch as u64])));
        for i in 0..steps_per_epoch {
            tch::manual_seed(mix_seed(SEED, &[epoch as u64, i as u64]) as i64);
            let b = ds.gather(&perm.narrow(0, i * BATCH, BATCH));
            let loss = m.loss(&b[0], &b[1]);
            loss.backward();
            opt.step().expect("step");
            opt.zero_grad();
            std::hint::black_box(loss.double_value(&[]));
            steps += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    (
        secs,
        Vec::<f32>::try_from(&m.layers[2].ws.flatten(0, -1)).expect("weights"),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The command line: cargo's arguments only (`--bench` measures; without it, see above).
#[derive(Parser, Debug)]
#[command(about = "Per-step overhead of the Trainer against a hand-written tch loop")]
struct Cli {
    #[command(flatten)]
    cargo: CargoArgs,
}

fn main() {
    tch::set_num_threads(1);
    let bench = Cli::parse().cargo.bench;
    let (epochs, rounds) = if bench { (2, 21) } else { (1, 1) };
    // Same work: both loops end with the same weights.
    let (_, wt) = trainer_loop(1);
    let (_, wm) = manual_loop(1);
    assert_eq!(
        wt, wm,
        "the Trainer and the hand-written loop must do identical work"
    );
    let (mut ours, mut theirs) = (vec![], vec![]);
    for _ in 0..rounds {
        ours.push(trainer_loop(epochs).0);
        theirs.push(manual_loop(epochs).0);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (omin, hmin) = (min(&ours), min(&theirs));
    let (o, h) = (median(ours), median(theirs));
    println!(
        "per-step time, tiny MLP (32-64-64-10, batch {BATCH}, Adam, CPU, 1 thread), {rounds} interleaved runs x {} steps:",
        epochs * ROWS / BATCH
    );
    println!(
        "  hand-written tch loop: {:8.1} us/step min, {:8.1} median",
        hmin * 1e6,
        h * 1e6
    );
    println!(
        "  Trainer::fit:          {:8.1} us/step min, {:8.1} median",
        omin * 1e6,
        o * 1e6
    );
    println!(
        "  ratio Trainer / hand-written: {:.3} by min (overhead {:+.1}%), {:.3} by median",
        omin / hmin,
        (omin / hmin - 1.0) * 100.0,
        o / h
    );
    if !bench {
        println!("(quick check under `cargo test`; run `cargo bench --bench overhead` to measure)");
    }
}
