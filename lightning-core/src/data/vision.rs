//! Images on disk: [`ImageFolder`] (torchvision's `ImageFolder`: one sub-folder per class,
//! PNG and JPEG files) and [`Transforms`], the usual augmentations (random resized crop,
//! horizontal flip, resize, center crop, normalize), applied in one pass from the decoded
//! pixels to the output tensor.

use super::dataset::{BoxError, Dataset, SampleRng};
use super::error::DataError;
use super::sample::Sample;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The file extensions [`ImageFolder`] reads (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Images in one sub-folder per class (torchvision's `ImageFolder`): classes are the
/// sub-folders' names in sorted order (class `i` is the `i`-th), samples the PNG and JPEG
/// files under each, sorted by path. A sample is `(image, label)`: the image decoded to RGB and
/// passed through the [`Transforms`] (a `[3, H, W]` float tensor), the label an integer.
///
/// ```no_run
/// use lightning_core::data::{DataLoader, ImageFolder, Transforms};
/// let train = ImageFolder::new("images/train")?.transform(
///     Transforms::new()
///         .random_resized_crop(28, (0.6, 1.0), (3.0 / 4.0, 4.0 / 3.0))
///         .random_horizontal_flip(0.5)
///         .normalize(&[0.5], &[0.5]),
/// );
/// println!("{} images of {} classes", train.samples().len(), train.classes().len());
/// let loader = DataLoader::new(train, 64).shuffle(true).num_workers(4);
/// # Ok::<(), lightning_core::data::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, i64)>,
    transform: Transforms,
}

impl ImageFolder {
    /// Lists `root`'s classes and images. Errors when `root` cannot be read, has no
    /// sub-folder, or a class folder has no image.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref().to_path_buf();
        let io = |path: &Path, e: std::io::Error| DataError::Folder {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let mut classes: Vec<String> = std::fs::read_dir(&root)
            .map_err(|e| io(&root, e))?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(DataError::Folder {
                path: root,
                detail: "no class sub-folder (expected one folder per class)".into(),
            });
        }
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files = Vec::new();
            walk(&dir, &mut files).map_err(|e| io(&dir, e))?;
            files.sort();
            if files.is_empty() {
                return Err(DataError::Folder {
                    path: dir,
                    detail: format!("no image ({})", IMAGE_EXTENSIONS.join(", ")),
                });
            }
            samples.extend(files.into_iter().map(|f| (f, label as i64)));
        }
        Ok(ImageFolder {
            root,
            classes,
            samples,
            transform: Transforms::new(),
        })
    }
    /// Applies `t` to every image.
    pub fn transform(mut self, t: Transforms) -> Self {
        self.transform = t;
        self
    }
    /// The class names; a label is an index into them.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    /// Every image's path and label, in sample order.
    pub fn samples(&self) -> &[(PathBuf, i64)] {
        &self.samples
    }
    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| IMAGE_EXTENSIONS.iter().any(|k| x.eq_ignore_ascii_case(k)))
        {
            out.push(path);
        }
    }
    Ok(())
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn get(&self, index: usize, rng: &mut SampleRng) -> Result<Sample, BoxError> {
        let (path, label) = self
            .samples
            .get(index)
            .ok_or_else(|| format!("index {index} out of range for {} images", self.len()))?;
        let image = image::ImageReader::open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .with_guessed_format()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .decode()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .to_rgb8();
        let (w, h) = image.dimensions();
        let pixels = Pixels::rgb(w as usize, h as usize, image.as_raw());
        let x = self.transform.apply(&pixels, rng)?;
        Ok(Sample::new().push(x).push(*label))
    }
}

/// Decoded 8-bit pixels, row-major, channels interleaved.
#[derive(Clone, Copy, Debug)]
pub struct Pixels<'a> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Channels per pixel.
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: &'a [u8],
}

impl<'a> Pixels<'a> {
    /// RGB pixels (3 channels), `width * height * 3` bytes.
    pub fn rgb(width: usize, height: usize, data: &'a [u8]) -> Self {
        Pixels {
            width,
            height,
            channels: 3,
            data,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    RandomResizedCrop {
        size: usize,
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    Resize(usize),
    CenterCrop(usize),
    HorizontalFlip(f64),
    Normalize {
        mean: Vec<f32>,
        std: Vec<f32>,
    },
}

/// A pipeline of image transforms (torchvision's `Compose`), ending in a `[C, H, W]` float
/// tensor of values in `[0, 1]` (torchvision's `ToTensor`), then normalized when asked.
/// Geometric transforms compose into one map from output to input pixels, sampled once with
/// bilinear interpolation (torchvision's tensor backend with `antialias=False`). Random
/// choices come from the sample's [`SampleRng`], so they do not depend on the workers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transforms {
    ops: Vec<Op>,
}

/// Output pixel `o` (center at `o + 0.5`) to input coordinate, per axis: `a * o + b`.
#[derive(Clone, Copy, Debug)]
struct Axis {
    a: f64,
    b: f64,
}

impl Transforms {
    /// No transform: the image as a `[C, H, W]` tensor in `[0, 1]`.
    pub fn new() -> Self {
        Self::default()
    }
    /// torchvision's `RandomResizedCrop(size, scale, ratio)`: a random area fraction in
    /// `scale` and aspect ratio in `ratio` (log-uniform), resized to `size x size`.
    pub fn random_resized_crop(
        mut self,
        size: usize,
        scale: (f64, f64),
        ratio: (f64, f64),
    ) -> Self {
        self.ops.push(Op::RandomResizedCrop { size, scale, ratio });
        self
    }
    /// torchvision's `Resize(size)`: the shorter side to `size`, keeping the aspect ratio.
    pub fn resize(mut self, size: usize) -> Self {
        self.ops.push(Op::Resize(size));
        self
    }
    /// torchvision's `CenterCrop(size)`.
    pub fn center_crop(mut self, size: usize) -> Self {
        self.ops.push(Op::CenterCrop(size));
        self
    }
    /// torchvision's `RandomHorizontalFlip(p)`.
    pub fn random_horizontal_flip(mut self, p: f64) -> Self {
        self.ops.push(Op::HorizontalFlip(p));
        self
    }
    /// torchvision's `Normalize(mean, std)`, per channel (one value: every channel).
    pub fn normalize(mut self, mean: &[f32], std: &[f32]) -> Self {
        self.ops.push(Op::Normalize {
            mean: mean.to_vec(),
            std: std.to_vec(),
        });
        self
    }

    /// Applies the pipeline to `px`, drawing random choices from `rng`.
    pub fn apply(&self, px: &Pixels<'_>, rng: &mut SampleRng) -> Result<Tensor, BoxError> {
        let c = px.channels;
        if px.data.len() != px.width * px.height * c || px.width == 0 || px.height == 0 {
            return Err(format!(
                "{}x{}x{} pixels need {} bytes, found {}",
                px.width,
                px.height,
                c,
                px.width * px.height * c,
                px.data.len()
            )
            .into());
        }
        // the current image's size and its map to the input
        let (mut w, mut h) = (px.width as f64, px.height as f64);
        let (mut x, mut y) = (Axis { a: 1.0, b: 0.0 }, Axis { a: 1.0, b: 0.0 });
        let (mut mean, mut std) = (vec![0.0f32; c], vec![1.0f32; c]);
        for op in &self.ops {
            match op {
                Op::RandomResizedCrop { size, scale, ratio } => {
                    let r = crop_params(w, h, *scale, *ratio, rng);
                    (w, h) = crop(&mut x, &mut y, r, *size, *size);
                }
                Op::Resize(size) => {
                    let (ow, oh) = if w <= h {
                        (*size, ((*size as f64) * h / w) as usize)
                    } else {
                        (((*size as f64) * w / h) as usize, *size)
                    };
                    (w, h) = crop(&mut x, &mut y, [0.0, 0.0, w, h], ow.max(1), oh.max(1));
                }
                Op::CenterCrop(size) => {
                    let s = *size as f64;
                    let (left, top) = (((w - s) / 2.0).round(), ((h - s) / 2.0).round());
                    (w, h) = crop(&mut x, &mut y, [left, top, s, s], *size, *size);
                }
                Op::HorizontalFlip(p) => {
                    if rng.bernoulli(*p) {
                        // current' = w - 1 - out
                        x = compose(x, -1.0, w - 1.0);
                    }
                }
                Op::Normalize { mean: m, std: s } => {
                    let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
                    if (m.len() != 1 && m.len() != c) || (s.len() != 1 && s.len() != c) {
                        return Err(format!(
                            "normalize: {} means and {} stds for {c} channels",
                            m.len(),
                            s.len()
                        )
                        .into());
                    }
                    for i in 0..c {
                        // composed: ((v - mean) / std - m) / s
                        mean[i] += pick(m, i) * std[i];
                        std[i] *= pick(s, i);
                    }
                }
            }
        }
        let (ow, oh) = (w as usize, h as usize);
        let mut out = vec![0f32; c * oh * ow];
        let plane = oh * ow;
        let (iw, ih) = (px.width, px.height);
        let scale: Vec<f32> = std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift: Vec<f32> = mean.iter().zip(&std).map(|(m, s)| m / s).collect();
        let xs: Vec<(usize, usize, f32)> = (0..ow).map(|o| taps(x, o, iw)).collect();
        for oy in 0..oh {
            let (y0, y1, fy) = taps(y, oy, ih);
            let (r0, r1) = (&px.data[y0 * iw * c..], &px.data[y1 * iw * c..]);
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                for ch in 0..c {
                    let p = |row: &[u8], xi: usize| f32::from(row[xi * c + ch]);
                    let top = p(r0, x0) + (p(r0, x1) - p(r0, x0)) * fx;
                    let bottom = p(r1, x0) + (p(r1, x1) - p(r1, x0)) * fx;
                    let v = top + (bottom - top) * fy;
                    out[ch * plane + oy * ow + ox] = v * scale[ch] - shift[ch];
                }
            }
        }
        Ok(Tensor::from_slice(&out).view([c as i64, oh as i64, ow as i64]))
    }
}

/// `current = a' * out + b'` composed into `input = a * current + b`.
fn compose(m: Axis, a: f64, b: f64) -> Axis {
    Axis {
        a: m.a * a,
        b: m.a * b + m.b,
    }
}

/// Crops `r = [left, top, width, height]` of the current image and resizes it to `ow x oh`:
/// updates the maps from output to input pixels and returns the new size.
fn crop(x: &mut Axis, y: &mut Axis, r: [f64; 4], ow: usize, oh: usize) -> (f64, f64) {
    let (sx, sy) = (r[2] / ow as f64, r[3] / oh as f64);
    *x = compose(*x, sx, r[0] + 0.5 * sx - 0.5);
    *y = compose(*y, sy, r[1] + 0.5 * sy - 0.5);
    (ow as f64, oh as f64)
}

/// The two input pixels around output pixel `o` along an axis of `n` pixels, and the weight of
/// the second (edges clamped).
fn taps(m: Axis, o: usize, n: usize) -> (usize, usize, f32) {
    let s = (m.a * o as f64 + m.b).clamp(0.0, (n - 1) as f64);
    let i0 = s.floor() as usize;
    let i1 = (i0 + 1).min(n - 1);
    (i0, i1, (s - i0 as f64) as f32)
}

/// torchvision's `RandomResizedCrop.get_params`: `[left, top, width, height]`.
fn crop_params(
    w: f64,
    h: f64,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> [f64; 4] {
    let area = w * h;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let top = rng.below((h - ch) as u64 + 1) as f64;
            let left = rng.below((w - cw) as u64 + 1) as f64;
            return [left, top, cw, ch];
        }
    }
    // fallback: a center crop of the ratio's nearest aspect
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (w / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h * ratio.1).round(), h)
    } else {
        (w, h)
    };
    [((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 10) as u8, (y * 10) as u8, 7]))
            .collect()
    }

    #[test]
    fn identity_resize_flip_and_normalize_move_pixels_where_expected() {
        let data = gradient(4, 3);
        let px = Pixels::rgb(4, 3, &data);
        let mut rng = SampleRng::new(0, 0, 0);
        let t = Transforms::new().apply(&px, &mut rng).unwrap();
        assert_eq!(t.size(), vec![3, 3, 4]);
        let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        assert!((v[1] - 10.0 / 255.0).abs() < 1e-6, "red grows along x");
        assert!(
            (v[12 + 4] - 10.0 / 255.0).abs() < 1e-6,
            "green grows along y"
        );
        // a sure flip reverses x
        let f = Transforms::new()
            .random_horizontal_flip(1.0)
            .apply(&px, &mut rng)
            .unwrap();
        let f = Vec::<f32>::try_from(f.flatten(0, -1)).unwrap();
        assert!((f[0] - 30.0 / 255.0).abs() < 1e-6);
        // normalize: (v - 0.5) / 0.25 on every channel
        let n = Transforms::new()
            .normalize(&[0.5], &[0.25])
            .apply(&px, &mut rng)
            .unwrap();
        let n = Vec::<f32>::try_from(n.flatten(0, -1)).unwrap();
        assert!((n[1] - (10.0 / 255.0 - 0.5) / 0.25).abs() < 1e-5);
        // resize 2x (short side 3 -> 6) keeps the corners
        let r = Transforms::new().resize(6).apply(&px, &mut rng).unwrap();
        assert_eq!(r.size(), vec![3, 6, 8]);
        let c = Transforms::new()
            .resize(6)
            .center_crop(4)
            .apply(&px, &mut rng)
            .unwrap();
        assert_eq!(c.size(), vec![3, 4, 4]);
        assert!(Transforms::new()
            .normalize(&[0.5, 0.5], &[1.0])
            .apply(&px, &mut rng)
            .is_err());
    }

    #[test]
    fn random_resized_crop_depends_only_on_the_samples_rng() {
        let data = gradient(20, 16);
        let px = Pixels::rgb(20, 16, &data);
        let t = Transforms::new()
            .random_resized_crop(8, (0.3, 1.0), (0.75, 1.333))
            .random_horizontal_flip(0.5);
        let a = t.apply(&px, &mut SampleRng::new(1, 2, 3)).unwrap();
        let b = t.apply(&px, &mut SampleRng::new(1, 2, 3)).unwrap();
        assert_eq!(a.size(), vec![3, 8, 8]);
        assert!(a.equal(&b));
        let others = (0..8).filter(|i| {
            !t.apply(&px, &mut SampleRng::new(1, 2, *i))
                .unwrap()
                .equal(&a)
        });
        assert!(others.count() >= 6, "other samples crop elsewhere");
        for i in 0..50 {
            let r = crop_params(
                20.0,
                16.0,
                (0.3, 1.0),
                (0.75, 1.333),
                &mut SampleRng::new(0, 0, i),
            );
            assert!(
                r[0] + r[2] <= 20.0 && r[1] + r[3] <= 16.0 && r[2] >= 1.0,
                "{r:?}"
            );
        }
    }

    #[test]
    fn image_folder_lists_classes_and_decodes_with_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("cat", 2), ("dog", 1)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(5, 4, |x, y| {
                    image::Rgb([x as u8 * 40, y as u8 * 60, i * 100])
                });
                let ext = if i == 0 { "png" } else { "JPG" };
                img.save_with_format(
                    dir.path().join(format!("{class}/{i}.{ext}")),
                    match ext {
                        "png" => image::ImageFormat::Png,
                        _ => image::ImageFormat::Jpeg,
                    },
                )
                .unwrap();
            }
        }
        std::fs::write(dir.path().join("dog/notes.txt"), b"not an image").unwrap();
        let ds = ImageFolder::new(dir.path()).unwrap();
        assert_eq!(ds.classes(), ["cat", "dog"]);
        assert_eq!(
            ds.samples().iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![0, 0, 1]
        );
        let s = ds.get(0, &mut SampleRng::new(0, 0, 0)).unwrap();
        let names = s.names();
        assert_eq!(names, vec![None, None]);
        std::fs::write(dir.path().join("dog/broken.png"), b"\x89PNG garbage").unwrap();
        let ds = ImageFolder::new(dir.path()).unwrap();
        let bad = ds
            .samples()
            .iter()
            .position(|(p, _)| p.ends_with("broken.png"))
            .unwrap();
        let e = ds
            .get(bad, &mut SampleRng::new(0, 0, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken.png"), "{e}");
        assert!(
            ImageFolder::new(dir.path().join("cat")).is_err(),
            "no class folders"
        );
        assert!(ImageFolder::new(dir.path().join("nope")).is_err());
    }
}
