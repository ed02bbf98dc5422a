//! The digits data shipped in `data/` (scikit-learn's copy of the UCI handwritten digits,
//! 1797 8x8 images), for the examples (`digits`, `gan`) and tests, and the examples' `--device`.

use anyhow::{bail, Context};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;
use tch::{Device, Tensor};

/// `data/digits.csv.gz`: 64 pixel values (0..16) then the label, one row per image. Returns
/// the images as `[n, 64]` f32 in [0, 1] and the labels as `[n]` i64.
pub fn load() -> anyhow::Result<(Tensor, Tensor)> {
    // The source tree the binary was built from, else the working directory (a release binary
    // carried to another machine with the repository, as `scripts/gpu_check.sh` does).
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz");
    let path = if built.exists() {
        built
    } else {
        Path::new("data/digits.csv.gz").to_path_buf()
    };
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("decompressing {}", path.display()))?;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let vals: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: line {}: not a number", path.display(), i + 1))?;
        if vals.len() != 65 {
            bail!(
                "{}: line {}: expected 65 values, found {}",
                path.display(),
                i + 1,
                vals.len()
            );
        }
        xs.extend(vals[..64].iter().map(|v| v / 16.0));
        ys.push(vals[64] as i64);
    }
    let n = ys.len() as i64;
    Ok((
        Tensor::from_slice(&xs).view([n, 64]),
        Tensor::from_slice(&ys),
    ))
}

/// The examples' `--device`: `cpu`, or `cuda` when a CUDA device is available.
pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => {
            // On the GPU check a silent fall back to the tch-ops optimizer path would time
            // and compare the wrong code.
            if let Some(missing) = lightning_core::cuda::expected_gpu_missing() {
                bail!("--device cuda: {missing}");
            }
            Ok(Device::Cuda(0))
        }
        "cuda" => bail!("--device cuda: no CUDA device is available"),
        d => bail!("--device {d:?}: expected cpu or cuda"),
    }
}
