//! Loading an image folder: our `DataLoader` over `ImageFolder` (decode, random resized crop,
//! horizontal flip, normalize; batches of 64) against `torch.utils.data.DataLoader` with PIL
//! doing the same (`dataloader_anchor.py`), at the same number of workers (threads for us,
//! processes for torch), in one run, best of rounds. The folder is written first: JPEG files
//! (quality 90, `--side` pixels square) made from the shipped digits, upscaled and tinted, 10
//! classes.
//!
//! ```text
//! cargo bench --bench dataloader -- --bench                      # 2 workers, 1280 images
//! cargo bench --bench dataloader -- --bench --workers 4 --images 2560
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) a small smoke run loads 64 small
//! images through 2 workers and checks an epoch yields every image, without Python.

use anyhow::Context;
use clap::Parser;
use lightning_core::data::{DataLoader, ImageFolder, LoaderState, Transforms};
use lightning_testkit::bench::{positive, CargoArgs};
use std::path::Path;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Image-folder loading: ours vs torch.utils.data.DataLoader with PIL")]
struct Args {
    #[command(flatten)]
    cargo: CargoArgs,
    /// Loader workers, for both.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Images in the folder.
    #[arg(long, default_value_t = 1280, value_parser = positive::<usize>())]
    images: usize,
    /// Side of the JPEG files.
    #[arg(long, default_value_t = 192, value_parser = positive::<u32>())]
    side: u32,
    /// Side of the random resized crops.
    #[arg(long, default_value_t = 128, value_parser = positive::<usize>())]
    crop: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64, value_parser = positive::<i64>())]
    batch: i64,
    /// Epochs timed per loader (the best one counts).
    #[arg(long, default_value_t = 3, value_parser = positive::<usize>())]
    rounds: usize,
}

/// Writes `n` JPEG files of `side` pixels under `root/<class>/`.
fn write_folder(root: &Path, n: usize, side: u32) -> anyhow::Result<()> {
    let (x, y) = lightning_rs::digits::load()?;
    let pixels = Vec::<f32>::try_from(&x.flatten(0, -1))?;
    let labels = Vec::<i64>::try_from(&y)?;
    for i in 0..n {
        let d = i % labels.len();
        let tint = [
            (i * 37 % 255) as f32,
            (i * 91 % 255) as f32,
            (i * 53 % 255) as f32,
        ];
        let small = image::RgbImage::from_fn(8, 8, |c, r| {
            let v = pixels[d * 64 + (r * 8 + c) as usize];
            image::Rgb(tint.map(|t| (v * 200.0 + t * 0.2) as u8))
        });
        let big =
            image::imageops::resize(&small, side, side, image::imageops::FilterType::Triangle);
        let dir = root.join(labels[d].to_string());
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{i:05}.jpg"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90)
            .encode_image(&big)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Samples per second of one epoch through our loader.
fn ours(root: &Path, a: &Args, epoch: i64) -> anyhow::Result<(f64, usize)> {
    let ds = ImageFolder::new(root)?.transform(
        Transforms::new()
            .random_resized_crop(a.crop, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))
            .random_horizontal_flip(0.5)
            .normalize(&[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]),
    );
    let loader = DataLoader::new(ds, a.batch)
        .shuffle(true)
        .num_workers(a.workers);
    let started = Instant::now();
    let mut n = 0;
    for b in loader.epoch_iter(7, LoaderState::at(epoch, 0)) {
        let (_, b) = b?;
        anyhow::ensure!(b[0].size()[1..] == [3, a.crop as i64, a.crop as i64]);
        n += b.size() as usize;
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), n))
}

fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    tch::set_num_threads(1);
    if !a.cargo.bench {
        (a.images, a.side, a.crop, a.rounds) = (64, 32, 16, 1);
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("images");
    write_folder(&root, a.images, a.side)?;
    let mut best = 0f64;
    for round in 0..a.rounds {
        let (rate, n) = ours(&root, &a, round as i64)?;
        anyhow::ensure!(n == a.images, "an epoch loaded {n} of {} images", a.images);
        best = best.max(rate);
    }
    if !a.cargo.bench {
        println!(
            "dataloader smoke run: {} images through {} workers",
            a.images, a.workers
        );
        return Ok(());
    }
    println!(
        "dataloader bench: {} JPEG files {}x{}, random resized crop to {}, flip, normalize, \
         batch {}, {} workers, best of {} epochs",
        a.images, a.side, a.side, a.crop, a.batch, a.workers, a.rounds
    );
    println!("ours:  {best:.0} samples/s (threads)");
    // A mid-epoch resume opens the epoch at its next batch: the first batch comes as fast as
    // an epoch's first (nothing consumed is loaded again).
    let ds = ImageFolder::new(&root)?.transform(Transforms::new().random_resized_crop(
        a.crop,
        (0.08, 1.0),
        (3.0 / 4.0, 4.0 / 3.0),
    ));
    let loader = DataLoader::new(ds, a.batch)
        .shuffle(true)
        .num_workers(a.workers);
    let first = |consumed: usize| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut it = loader.epoch_iter(7, LoaderState::at(0, consumed));
        it.next().context("a batch")??;
        Ok(started.elapsed().as_secs_f64())
    };
    let late = loader.len() * 9 / 10;
    let (at_start, at_late) = (first(0)?, first(late)?);
    println!(
        "first batch: {:.1} ms at the epoch's start, {:.1} ms resuming after {late} of {} \
         batches ({:.2}x)",
        at_start * 1e3,
        at_late * 1e3,
        loader.len(),
        at_late / at_start
    );
    let script = include_str!("dataloader_anchor.py");
    let args = [
        root.to_string_lossy().into_owned(),
        a.crop.to_string(),
        a.batch.to_string(),
        a.workers.to_string(),
        a.rounds.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(out) = lightning_testkit::run_python(script, &args) else {
        anyhow::bail!("the torch anchor needs the venv's Python (scripts/setup.sh)");
    };
    let out = out.map_err(anyhow::Error::msg)?;
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))?;
    let torch = v["samples_per_s"]
        .as_array()
        .context("the anchor's samples_per_s")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .fold(0f64, f64::max);
    println!("torch: {torch:.0} samples/s (worker processes, PIL)");
    println!(
        "ours = {:.2}x torch DataLoader (num_workers={})",
        best / torch,
        a.workers
    );
    Ok(())
}
