//! A small CNN with BatchNorm, a `Vec` of residual blocks, a nested optimizer config and an
//! enum hyperparameter: trained for one epoch on random data, checkpointed, and loaded back
//! with `load_from_checkpoint`. Override hyperparameters as `key=value` arguments
//! (`cargo run -- optim.lr=0.01 act=gelu`).

use lightning_core::data::{DataLoader, DataModule, TensorDataset};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig};
use lightning_core::prelude::*;
use lightning_core::trainer::Trainer;
use tch::{nn, Device, Kind, Tensor};

/// Activation, saved as its variant name (`"Relu"`); overrides accept any case.
#[derive(Hyperparameters, Clone, Copy, Debug, PartialEq)]
pub enum Act {
    Relu,
    Gelu,
}

/// Optimizer settings: a nested dict in `hyper_parameters`, `optim.lr=..` as an override.
#[derive(Hyperparameters, Clone, Debug)]
pub struct OptimConfig {
    #[hparam(default = 1e-3, range = 0.0..)]
    pub lr: f64,
    #[hparam(default = 1e-2, range = 0.0..)]
    pub weight_decay: f64,
}

#[derive(Hyperparameters, Clone, Debug)]
pub struct NetConfig {
    #[hparam(default = 8, range = 1..)]
    pub channels: i64,
    #[hparam(default = 2)]
    pub blocks: usize,
    #[hparam(default = 0.1, range = 0.0..=1.0)]
    pub dropout: f64,
    #[hparam(default = Act::Relu)]
    pub act: Act,
    #[hparam(default = OptimConfig::default())]
    pub optim: OptimConfig,
}

/// conv -> BatchNorm -> act -> conv -> BatchNorm, plus the input.
#[lightning_module]
pub struct Residual {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
}

impl Residual {
    fn new(vs: &nn::Path, c: i64) -> Self {
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Residual {
            conv1: nn::conv2d(vs / "conv1", c, c, 3, conv),
            bn1: nn::batch_norm2d(vs / "bn1", c, Default::default()),
            conv2: nn::conv2d(vs / "conv2", c, c, 3, conv),
            bn2: nn::batch_norm2d(vs / "bn2", c, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, act: Act, train: bool) -> Tensor {
        let h = activate(x.apply(&self.conv1).apply_t(&self.bn1, train), act);
        let h = h.apply(&self.conv2).apply_t(&self.bn2, train);
        activate(h + x, act)
    }
}

fn activate(x: Tensor, act: Act) -> Tensor {
    match act {
        Act::Relu => x.relu(),
        Act::Gelu => x.gelu("none"),
    }
}

#[lightning_module]
pub struct Net {
    #[hparams]
    hp: NetConfig,
    stem: nn::Conv2D,
    blocks: Vec<Residual>,
    head: nn::Linear,
}

impl Net {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.stem).relu();
        for b in &self.blocks {
            h = b.forward(&h, self.hp.act, train);
        }
        h.mean_dim(&[2i64, 3][..], false, Kind::Float)
            .dropout(self.hp.dropout, train)
            .apply(&self.head)
    }
}

impl LightningModule for Net {
    fn build(hp: &NetConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let c = hp.channels;
        Ok(Net {
            hp: hp.clone(),
            stem: nn::conv2d(vs / "stem", 1, c, 3, Default::default()),
            blocks: (0..hp.blocks)
                .map(|i| Residual::new(&(vs / "blocks" / i), c))
                .collect(),
            head: nn::linear(vs / "head", c, 2, Default::default()),
        })
    }

    fn training_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let loss = self
            .forward(&batch[0], ctx.training())
            .cross_entropy_for_logits(&batch[1]);
        ctx.log("train_loss", &loss).prog_bar(true);
        Ok(loss)
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let cfg = AdamConfig {
            lr: self.hp.optim.lr,
            weight_decay: self.hp.optim.weight_decay,
            ..AdamConfig::adamw()
        };
        Ok(OptimizerConfig::new(Adam::new(self.parameters(), cfg)?))
    }
}

fn main() -> lightning_core::Result<()> {
    let overrides: Vec<String> = std::env::args().skip(1).collect();
    let mut hp = NetConfig::default();
    for o in &overrides {
        let (k, v) = lightning_core::hparams::parse_override(o)?;
        hp.set_str(&k, &v)?;
    }
    tch::manual_seed(0);
    let x = Tensor::randn([64, 1, 8, 8], (Kind::Float, Device::Cpu));
    let y = x.sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float).gt(0.0).to_kind(Kind::Int64);
    let data = DataModule::new().train(DataLoader::new(TensorDataset::new(vec![x, y])?, 16));

    let root = std::env::temp_dir().join(format!("lightning-app-{}", std::process::id()));
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Net::build(&hp, &vs.root())?;
    let mut trainer = Trainer::builder()
        .max_epochs(1)
        .default_root_dir(&root)
        .build()?;
    trainer.fit(&mut model, &data, None)?;
    let path = root.join("net.ckpt");
    trainer.save_checkpoint(&model, &path, false)?;

    let loaded = Net::load_from_checkpoint(&path)?;
    let same = model
        .state_dict()
        .iter()
        .all(|(k, t)| t.equal(&loaded.state_dict()[k]));
    println!(
        "lightning-app: trained {} parameters, saved {}, loaded back: {}",
        model.num_parameters(),
        path.display(),
        if same { "identical" } else { "DIFFERENT" }
    );
    std::fs::remove_dir_all(&root).map_err(|source| lightning_core::Error::Io {
        context: format!("removing {}", root.display()),
        source,
    })?;
    if !same {
        return Err(lightning_core::Error::Msg("the loaded weights differ".into()));
    }
    Ok(())
}
