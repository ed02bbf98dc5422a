//! A small GAN on the digits images, shared by `examples/gan.rs` (its command line) and the
//! manual-optimization tests (`tests/trainer/manual_optim.rs` runs [`train`] directly): a
//! generator and a discriminator (two MLPs), two Adam optimizers, and manual optimization
//! (`automatic_optimization` false): each training step toggles one network's parameters on,
//! back-propagates through `ctx.manual_backward` and steps that network's optimizer itself,
//! as Lightning's GAN example does. A checkpoint every epoch and `last.ckpt`; `--resume last`
//! continues exactly.

use anyhow::Context;
use clap::Parser;
use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Reduction, Tensor};

/// The GAN's hyperparameters (saved in every checkpoint as `hyper_parameters`).
#[derive(Hyperparameters, Clone, Debug)]
pub struct GanConfig {
    /// Size of the generator's noise input.
    #[hparam(default = 16)]
    pub latent: i64,
    /// Hidden width of both networks.
    #[hparam(default = 64)]
    pub hidden: i64,
    /// Adam's learning rate (both optimizers).
    #[hparam(default = 2e-3)]
    pub lr: f64,
    /// Adam's first beta (0.5, the usual GAN setting).
    #[hparam(default = 0.5)]
    pub beta1: f64,
}

/// Generator `latent -> hidden -> 64` (sigmoid pixels) and discriminator `64 -> hidden -> 1`
/// (a logit), with LeakyReLU (slope 0.01).
#[lightning_module]
pub struct Gan {
    #[hparams]
    hp: GanConfig,
    gen_fc1: nn::Linear,
    gen_fc2: nn::Linear,
    disc_fc1: nn::Linear,
    disc_fc2: nn::Linear,
}

/// The optimizers' indices in `configure_optimizers`.
const GEN: usize = 0;
const DISC: usize = 1;

fn linear_params(layers: [&nn::Linear; 2]) -> Vec<Tensor> {
    layers
        .iter()
        .flat_map(|l| {
            std::iter::once(l.ws.shallow_clone()).chain(l.bs.as_ref().map(Tensor::shallow_clone))
        })
        .collect()
}

impl Gan {
    /// Images (`[n, 64]`, pixels in 0..1) from noise `[n, latent]`.
    pub fn generate(&self, z: &Tensor) -> Tensor {
        z.apply(&self.gen_fc1)
            .leaky_relu()
            .apply(&self.gen_fc2)
            .sigmoid()
    }

    /// The discriminator's logit that each image is real.
    pub fn discriminate(&self, x: &Tensor) -> Tensor {
        x.apply(&self.disc_fc1).leaky_relu().apply(&self.disc_fc2)
    }

    fn adam(&self, params: Vec<Tensor>) -> lightning_core::Result<Adam> {
        let cfg = AdamConfig {
            lr: self.hp.lr,
            betas: (self.hp.beta1, 0.999),
            ..AdamConfig::default()
        };
        Ok(Adam::new(params, cfg)?)
    }
}

/// Binary cross-entropy of `logits` against an all-`target` label.
fn bce(logits: &Tensor, target: f64) -> Tensor {
    let labels = logits.full_like(target);
    logits.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean)
}

impl LightningModule for Gan {
    fn build(hp: &GanConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(Gan {
            hp: hp.clone(),
            gen_fc1: nn::linear(vs / "gen_fc1", hp.latent, hp.hidden, Default::default()),
            gen_fc2: nn::linear(vs / "gen_fc2", hp.hidden, 64, Default::default()),
            disc_fc1: nn::linear(vs / "disc_fc1", 64, hp.hidden, Default::default()),
            disc_fc2: nn::linear(vs / "disc_fc2", hp.hidden, 1, Default::default()),
        })
    }

    fn automatic_optimization(&self) -> bool {
        false
    }

    fn training_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let real = &batch[0];
        let z = Tensor::randn(
            [real.size()[0], self.hp.latent],
            (Kind::Float, real.device()),
        );

        // the generator: make the discriminator call its images real
        ctx.optimizers()?.toggle(GEN)?;
        let g_loss = bce(&self.discriminate(&self.generate(&z)), 1.0);
        ctx.optimizers()?.zero_grad(GEN)?;
        ctx.manual_backward(&g_loss)?;
        ctx.optimizers()?.step(GEN)?;
        ctx.optimizers()?.untoggle(GEN)?;

        // the discriminator: real images real, generated ones fake
        ctx.optimizers()?.toggle(DISC)?;
        let fake = self.generate(&z).detach();
        let d_loss =
            (bce(&self.discriminate(real), 1.0) + bce(&self.discriminate(&fake), 0.0)) / 2.0;
        ctx.optimizers()?.zero_grad(DISC)?;
        ctx.manual_backward(&d_loss)?;
        ctx.optimizers()?.step(DISC)?;
        ctx.optimizers()?.untoggle(DISC)?;

        ctx.log("g_loss", &g_loss).prog_bar(true);
        ctx.log("d_loss", &d_loss).prog_bar(true);
        Ok(g_loss.detach())
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let generator = self.adam(linear_params([&self.gen_fc1, &self.gen_fc2]))?;
        let disc = self.adam(linear_params([&self.disc_fc1, &self.disc_fc2]))?;
        Ok(OptimizerConfig::new(generator).and(OptimizerConfig::new(disc)))
    }
}

/// The command line (as `digits`'s).
#[derive(Parser, Debug, Clone)]
#[command(about = "Train a small GAN on the digits images, with manual optimization")]
pub struct Args {
    /// Epochs to train to (a resumed run continues up to this epoch).
    #[arg(long, default_value_t = 4)]
    pub max_epochs: i64,
    /// Root directory for logs (`lightning_logs/version_N`) and `checkpoints/`.
    #[arg(long, default_value = "runs/gan")]
    pub root: PathBuf,
    /// Resume from a checkpoint: a path or `last`.
    #[arg(long)]
    pub resume: Option<String>,
    /// Seed for weights, shuffling and noise.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Trainer precision (`32-true`, `16-mixed`, `bf16-mixed`).
    #[arg(long, default_value = "32-true")]
    pub precision: String,
    /// libtorch intra-op threads (0: libtorch's default; 1 keeps CPU runs bitwise repeatable).
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// `auto`, or `ddp_find_unused_parameters_true` (one process per device: each manual
    /// backward leaves the other network's parameters unused, as Lightning's GAN needs).
    #[arg(long, default_value = "auto")]
    pub strategy: String,
    /// Processes with a DDP strategy.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
}

/// What a run ended with.
#[derive(Debug)]
pub struct Outcome {
    /// The epoch the trainer stopped at.
    pub epoch: i64,
    /// Optimizer steps (two per batch: generator and discriminator).
    pub global_step: i64,
    /// The checkpoint directory (`<root>/checkpoints`).
    pub checkpoints: PathBuf,
    /// The final weights, by name.
    pub weights: Vec<(String, Tensor)>,
    /// Whether this process is global rank 0.
    pub rank_zero: bool,
}

/// Trains (or resumes) the GAN up to `--max-epochs`.
pub fn train(args: &Args) -> anyhow::Result<Outcome> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let hp = GanConfig::from_value(&Value::dict())?;
    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Gan::build(&hp, &vs.root())?;
    let checkpoints = args.root.join("checkpoints");
    let ckpt = ModelCheckpoint::builder()
        .dirpath(&checkpoints)
        .save_top_k(-1)
        .save_last(SaveLast::True)
        .build()?;
    let mut trainer = Trainer::builder()
        .max_epochs(args.max_epochs)
        .default_root_dir(&args.root)
        .seed(args.seed)
        .device(crate::digits::device(&args.device)?)
        .precision(args.precision.as_str())
        .strategy(args.strategy.as_str())
        .devices(args.devices)
        .enable_progress_bar(false)
        .callback(ckpt)
        .build()?;
    let (images, _labels) = crate::digits::load()?;
    let data = DataModule::new()
        .train(DataLoader::new(TensorDataset::new(vec![images])?, 64).shuffle(true));
    let start = Instant::now();
    trainer
        .fit(
            &mut model,
            &data,
            args.resume.as_deref().map(CkptPath::parse),
        )
        .context("training the GAN")?;
    let metric = |k: &str| {
        trainer
            .callback_metrics()
            .get(k)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "trained to epoch {} (global step {}) in {:.2}s; g_loss {:.4}, d_loss {:.4}; checkpoints in {}",
        trainer.current_epoch(),
        trainer.global_step(),
        start.elapsed().as_secs_f64(),
        metric("g_loss"),
        metric("d_loss"),
        checkpoints.display()
    );
    Ok(Outcome {
        epoch: trainer.current_epoch(),
        global_step: trainer.global_step(),
        checkpoints,
        weights: model.named_parameters(),
        rank_zero: trainer.is_global_zero(),
    })
}
