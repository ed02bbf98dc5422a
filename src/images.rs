//! The image example's data and model (`examples/images.rs`; the tests train it too): the
//! shipped digits written as a real image folder (upscaled PNG files, one folder per class),
//! and a small CNN trained on it through [`ImageFolder`] and the loader's worker threads.

use anyhow::Context;
use lightning_core::data::{ImageFolder, Transforms};
use lightning_core::prelude::*;
use std::path::Path;
use tch::{nn, Tensor};

/// Side of the PNG files `prepare` writes (the 8x8 digits upscaled).
pub const FILE_SIDE: u32 = 32;
/// Side of the images the CNN sees (random resized crops of the files for training, resized
/// files for validation).
pub const SIDE: usize = 28;

/// Writes the shipped digits as `out/train/<class>/<i>.png` and `out/val/<class>/<i>.png`
/// (one in five images, chosen by a seeded permutation, for validation): 8-bit grey PNG
/// files of `FILE_SIDE` pixels, upscaled bilinearly. Returns `(train, val)` counts.
pub fn prepare(out: &Path, seed: u64) -> anyhow::Result<(usize, usize)> {
    let (x, y) = crate::digits::load()?;
    let n = y.size()[0];
    let pixels = Vec::<f32>::try_from(&x.flatten(0, -1))?;
    let labels = Vec::<i64>::try_from(&y)?;
    let order = lightning_core::data::permutation(n, seed);
    let val_rows = (n / 5) as usize;
    let (mut train, mut val) = (0, 0);
    for (k, &i) in order.iter().enumerate() {
        let i = i as usize;
        let split = if k < val_rows { "val" } else { "train" };
        let dir = out.join(split).join(labels[i].to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let small = image::GrayImage::from_fn(8, 8, |c, r| {
            image::Luma([(pixels[i * 64 + (r * 8 + c) as usize] * 255.0).round() as u8])
        });
        let big = image::imageops::resize(
            &small,
            FILE_SIDE,
            FILE_SIDE,
            image::imageops::FilterType::Triangle,
        );
        let path = dir.join(format!("{i:04}.png"));
        big.save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        match split {
            "val" => val += 1,
            _ => train += 1,
        }
    }
    Ok((train, val))
}

/// The training set under `data/train`: random resized crops (70% to 100% of the area, near
/// square) to `SIDE`, normalized to about [-1, 1].
pub fn train_set(data: &Path) -> Result<ImageFolder, lightning_core::data::DataError> {
    Ok(ImageFolder::new(data.join("train"))?.transform(
        Transforms::new()
            .random_resized_crop(SIDE, (0.7, 1.0), (0.9, 1.1))
            .normalize(&[0.5], &[0.5]),
    ))
}

/// The validation set under `data/val`: resized to `SIDE`, normalized as the training set.
pub fn val_set(data: &Path) -> Result<ImageFolder, lightning_core::data::DataError> {
    Ok(ImageFolder::new(data.join("val"))?
        .transform(Transforms::new().resize(SIDE).normalize(&[0.5], &[0.5])))
}

/// The CNN's hyperparameters.
#[derive(Hyperparameters, Clone, Debug)]
pub struct CnnConfig {
    /// Channels of the first convolution (the second has twice as many).
    #[hparam(default = 16)]
    pub width: i64,
    /// Output classes.
    #[hparam(default = 10)]
    pub classes: i64,
    /// Adam's learning rate.
    #[hparam(default = 3e-3)]
    pub lr: f64,
}

/// conv(3 -> w) -> pool -> conv(w -> 2w) -> pool -> linear, ReLU between.
#[lightning_module]
pub struct Cnn {
    #[hparams]
    hp: CnnConfig,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    head: nn::Linear,
}

impl Cnn {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.conv1).relu().max_pool2d_default(2);
        let h = h.apply(&self.conv2).relu().max_pool2d_default(2);
        h.flatten(1, -1).apply(&self.head)
    }

    fn metrics(&self, batch: &Batch) -> (Tensor, Tensor) {
        crate::loss_and_accuracy(&self.forward(&batch[0]), &batch[1])
    }
}

impl LightningModule for Cnn {
    fn build(hp: &CnnConfig, vs: &nn::Path) -> lightning_core::Result<Self> {
        let conv = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let (w, side) = (hp.width, SIDE as i64 / 4);
        Ok(Cnn {
            hp: hp.clone(),
            conv1: nn::conv2d(vs / "conv1", 3, w, 3, conv),
            conv2: nn::conv2d(vs / "conv2", w, 2 * w, 3, conv),
            head: nn::linear(
                vs / "head",
                2 * w * side * side,
                hp.classes,
                Default::default(),
            ),
        })
    }

    fn training_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        let (loss, acc) = self.metrics(batch);
        ctx.log("train_loss", &loss).prog_bar(true);
        ctx.log("train_acc", &acc).on_step(false).on_epoch(true);
        Ok(loss)
    }

    fn validation_step(
        &mut self,
        batch: &Batch,
        _idx: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        let (loss, acc) = self.metrics(batch);
        ctx.log("val_loss", &loss);
        ctx.log("val_acc", &acc).prog_bar(true);
        Ok(())
    }

    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let opt = Adam::new(
            self.parameters(),
            AdamConfig {
                lr: self.hp.lr,
                ..AdamConfig::default()
            },
        )?;
        Ok(OptimizerConfig::new(opt))
    }
}
