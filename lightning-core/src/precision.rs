//! Mixed precision as Lightning's `precision=` flag: `"32"`, `"16-mixed"`, `"bf16-mixed"`,
//! with libtorch autocast and a [`GradScaler`] matching `torch.amp.GradScaler`.

use crate::optim::{OptimError, Optimizer};
use crate::value::{Dict, Key, Value};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// A bad `precision` string.
#[derive(Debug, thiserror::Error)]
#[error("precision {given:?} is not supported; expected one of \"32\" (or \"32-true\"), \"16-mixed\", \"bf16-mixed\"")]
pub struct PrecisionError {
    /// What was given.
    pub given: String,
}

/// Autocast could not be entered for a device (one libtorch has no autocast for).
#[derive(Debug, thiserror::Error)]
#[error("precision {precision}: cannot autocast on {device:?}: {message}")]
pub struct AutocastError {
    /// The trainer's precision.
    pub precision: Precision,
    /// The device the step runs on.
    pub device: Device,
    /// libtorch's reason.
    pub message: String,
}

/// Training precision (Lightning's `Trainer(precision=...)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Full f32 (`"32"` / `"32-true"`).
    #[default]
    F32,
    /// f16 autocast with a gradient scaler (`"16-mixed"`).
    F16Mixed,
    /// bf16 autocast, no scaler (`"bf16-mixed"`).
    Bf16Mixed,
}

impl FromStr for Precision {
    type Err = PrecisionError;

    /// Parses Lightning's spellings (`"32"`, `"32-true"`, `"16-mixed"`, `"bf16-mixed"`, and
    /// the legacy `"16"` / `"bf16"`, which Lightning maps to the mixed variants).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "32" | "32-true" => Ok(Precision::F32),
            "16-mixed" | "16" => Ok(Precision::F16Mixed),
            "bf16-mixed" | "bf16" => Ok(Precision::Bf16Mixed),
            other => Err(PrecisionError {
                given: other.to_owned(),
            }),
        }
    }
}

impl TryFrom<&str> for Precision {
    type Error = PrecisionError;

    /// As [`str::parse`].
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<std::convert::Infallible> for PrecisionError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "32-true",
            Precision::F16Mixed => "16-mixed",
            Precision::Bf16Mixed => "bf16-mixed",
        })
    }
}

impl Precision {
    /// The autocast dtype, if this is a mixed mode.
    pub fn autocast_kind(&self) -> Option<Kind> {
        match self {
            Precision::F32 => None,
            Precision::F16Mixed => Some(Kind::Half),
            Precision::Bf16Mixed => Some(Kind::BFloat16),
        }
    }

    /// Runs `f` (a forward pass) under autocast to this precision's dtype on `device`'s type,
    /// as Lightning's `MixedPrecision` plugin does with `torch.autocast(device, dtype)`: on
    /// CUDA and on the CPU (where `"16-mixed"` autocasts to f16 with a gradient scaler, and
    /// `"bf16-mixed"` to bf16). `"32-true"` runs `f` unchanged.
    ///
    /// ```
    /// use lightning_core::precision::Precision;
    /// use tch::{Device, Kind, Tensor};
    /// let p: Precision = "bf16-mixed".parse()?;
    /// let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    /// let y = p.autocast(Device::Cpu, || x.matmul(&x))?;
    /// assert_eq!(y.kind(), Kind::BFloat16); // matmul runs in bf16 under autocast
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn autocast<T>(&self, device: Device, f: impl FnOnce() -> T) -> Result<T, AutocastError> {
        let Some(kind) = self.autocast_kind() else {
            return Ok(f());
        };
        let _guard =
            lightning_sys::ops::Autocast::enter(device, kind).map_err(|e| AutocastError {
                precision: *self,
                device,
                message: e.to_string(),
            })?;
        Ok(f())
    }

    /// A gradient scaler when this precision needs one (`"16-mixed"`).
    pub fn grad_scaler(&self) -> Option<GradScaler> {
        (*self == Precision::F16Mixed).then(GradScaler::default)
    }
}

/// Per-optimizer progress between two [`GradScaler::update`] calls.
struct OptState {
    id: usize,
    found_inf: Tensor,
    stepped: bool,
}

/// `torch.amp.GradScaler`: scales the loss, unscales gradients, skips steps with inf/NaN
/// gradients and adapts the scale (back off on overflow, grow after `growth_interval` good
/// steps). Its state goes into checkpoints in torch's layout.
///
/// ```
/// use lightning_core::optim::{Optimizer, Sgd, SgdConfig};
/// use lightning_core::precision::GradScaler;
/// let w = tch::Tensor::ones([1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
/// let mut opt = Sgd::new(vec![w.shallow_clone()], SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut scaler = GradScaler::default();
/// scaler.scale(&(&w * 2.0).sum(tch::Kind::Float)).backward();
/// assert!(scaler.step(&mut opt)?); // grads were finite: stepped with the unscaled gradient
/// scaler.update()?;
/// assert!((w.double_value(&[0]) - 0.8).abs() < 1e-6);
/// # Ok::<(), lightning_core::optim::OptimError>(())
/// ```
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: i64,
    growth_tracker: i64,
    enabled: bool,
    per_opt: Vec<OptState>,
}

impl Default for GradScaler {
    /// torch's defaults: init_scale 2**16, growth 2, backoff 0.5, interval 2000.
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
            enabled: true,
            per_opt: Vec::new(),
        }
    }
}

fn opt_id(opt: &dyn Optimizer) -> usize {
    opt as *const dyn Optimizer as *const () as usize
}

impl GradScaler {
    /// A scaler with torch's constructor arguments (errors as torch for bad factors).
    pub fn new(
        init_scale: f64,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: i64,
    ) -> Result<Self, OptimError> {
        if growth_factor.is_nan() || growth_factor <= 1.0 {
            return Err(OptimError::Config(format!(
                "The growth factor must be > 1.0, got {growth_factor}"
            )));
        }
        if backoff_factor.is_nan() || backoff_factor >= 1.0 || backoff_factor <= 0.0 {
            return Err(OptimError::Config(format!(
                "The backoff factor must be < 1.0, got {backoff_factor}"
            )));
        }
        if growth_interval <= 0 {
            return Err(OptimError::Config(format!(
                "growth_interval must be > 0, got {growth_interval}"
            )));
        }
        if !init_scale.is_finite() || init_scale <= 0.0 {
            return Err(OptimError::Config(format!(
                "init_scale must be finite and > 0, got {init_scale}"
            )));
        }
        Ok(GradScaler {
            scale: init_scale as f32 as f64,
            growth_factor,
            backoff_factor,
            growth_interval,
            growth_tracker: 0,
            enabled: true,
            per_opt: Vec::new(),
        })
    }

    /// A disabled scaler (every method is a pass-through, as `GradScaler(enabled=False)`).
    pub fn disabled() -> Self {
        GradScaler {
            enabled: false,
            ..GradScaler::default()
        }
    }

    /// Whether scaling is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The current scale (`get_scale()`).
    pub fn get_scale(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// The growth tracker (good steps since the last change of scale).
    pub fn growth_tracker(&self) -> i64 {
        self.growth_tracker
    }

    /// `loss * scale` (the loss unchanged when disabled).
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        if !self.enabled {
            return loss.shallow_clone();
        }
        // A scalar multiply: no host-to-device copy (which would synchronize).
        loss * self.scale
    }

    /// Divides the optimizer's gradients by the scale in place and returns `found_inf` (a
    /// 1-element f32 tensor on the grads' device, 1.0 when any gradient held inf/NaN) without
    /// a host sync. Errors when called twice for one optimizer before [`GradScaler::update`].
    pub fn unscale_(&mut self, opt: &dyn Optimizer) -> Result<Tensor, OptimError> {
        let id = opt_id(opt);
        if self.per_opt.iter().any(|s| s.id == id) {
            return Err(OptimError::State(
                "unscale_() has already been called on this optimizer since the last update()."
                    .into(),
            ));
        }
        let found_inf = self.unscale_grads(opt)?;
        self.per_opt.push(OptState {
            id,
            found_inf: found_inf.shallow_clone(),
            stepped: false,
        });
        Ok(found_inf)
    }

    fn unscale_grads(&self, opt: &dyn Optimizer) -> Result<Tensor, OptimError> {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = opt
            .params()
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let device = grads
            .first()
            .map(Tensor::device)
            .unwrap_or(tch::Device::Cpu);
        // torch: inv_scale = scale.double().reciprocal().float()
        // Filled on the device (a kernel, not a synchronizing host-to-device copy).
        let inv = Tensor::full([1], (1.0 / self.scale) as f32 as f64, (Kind::Float, device));
        let found = Tensor::zeros([1], (Kind::Float, device));
        let be = |e: tch::TchError| OptimError::Backend(e.to_string());
        if crate::cuda::fused_grads_supported(&grads) {
            crate::cuda::fused::unscale(&grads, &inv, &found)?;
            return Ok(found);
        }
        for g in &grads {
            let bad = g
                .f_isfinite()
                .and_then(|f| f.f_logical_not())
                .and_then(|f| f.f_any())
                .and_then(|b| b.f_to_kind(Kind::Float))
                .and_then(|b| b.f_to_device(device))
                .map_err(be)?;
            let mut fo = found.shallow_clone();
            fo.f_maximum(&bad.f_reshape([1]).map_err(be)?)
                .and_then(|m| fo.f_copy_(&m))
                .map_err(be)?;
            let mut g = g.shallow_clone();
            let _ = g
                .f_mul_(&inv.f_to_device(g.device()).map_err(be)?)
                .map_err(be)?;
        }
        Ok(found)
    }

    /// Unscales (if not yet done) and steps the optimizer unless a gradient was inf/NaN.
    /// Returns whether it stepped. Reads `found_inf` on the host (one sync, as torch does).
    pub fn step(&mut self, opt: &mut dyn Optimizer) -> Result<bool, OptimError> {
        if !self.enabled {
            opt.step()?;
            return Ok(true);
        }
        let id = opt_id(opt);
        if !self.per_opt.iter().any(|s| s.id == id) {
            let _found = self.unscale_(opt)?;
        }
        let st = self
            .per_opt
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| OptimError::State("scaler lost its optimizer state".into()))?;
        if st.stepped {
            return Err(OptimError::State(
                "step() has already been called since the last update().".into(),
            ));
        }
        st.stepped = true;
        let found = st
            .found_inf
            .f_sum(Kind::Float)
            .and_then(|s| s.f_double_value(&[]))
            .map_err(|e| OptimError::Backend(e.to_string()))?;
        if found == 0.0 {
            opt.step()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Adapts the scale from this iteration's inf checks (torch's `_amp_update_scale_`) and
    /// resets the per-optimizer state. Errors when no inf check was recorded.
    pub fn update(&mut self) -> Result<(), OptimError> {
        if !self.enabled {
            return Ok(());
        }
        if self.per_opt.is_empty() {
            return Err(OptimError::State(
                "No inf checks were recorded prior to update.".into(),
            ));
        }
        let mut found = 0.0;
        for s in &self.per_opt {
            found += s
                .found_inf
                .f_sum(Kind::Float)
                .and_then(|s| s.f_double_value(&[]))
                .map_err(|e| OptimError::Backend(e.to_string()))?;
        }
        self.per_opt.clear();
        if found != 0.0 {
            self.scale = (self.scale * self.backoff_factor) as f32 as f64;
            self.growth_tracker = 0;
        } else {
            let successful = self.growth_tracker + 1;
            if successful == self.growth_interval {
                let new_scale = (self.scale * self.growth_factor) as f32;
                if new_scale.is_finite() {
                    self.scale = new_scale as f64;
                }
                self.growth_tracker = 0;
            } else {
                self.growth_tracker = successful;
            }
        }
        Ok(())
    }

    /// torch's layout: `{"scale", "growth_factor", "backoff_factor", "growth_interval",
    /// "_growth_tracker"}` (an empty dict when disabled).
    pub fn state_dict(&self) -> Value {
        let mut d = Dict::new();
        if self.enabled {
            d.insert("scale".into(), Value::Float(self.scale));
            d.insert("growth_factor".into(), Value::Float(self.growth_factor));
            d.insert("backoff_factor".into(), Value::Float(self.backoff_factor));
            d.insert("growth_interval".into(), Value::Int(self.growth_interval));
            d.insert("_growth_tracker".into(), Value::Int(self.growth_tracker));
        }
        Value::Dict(d)
    }

    /// Restores [`GradScaler::state_dict`]'s layout (ours or Python's).
    pub fn load_state_dict(&mut self, sd: &Value) -> Result<(), OptimError> {
        if !self.enabled {
            return Ok(());
        }
        let d = sd.as_dict().ok_or_else(|| {
            OptimError::State(format!(
                "grad scaler state must be a dict, got {}",
                sd.type_name()
            ))
        })?;
        if d.is_empty() {
            return Err(OptimError::State(
                "The source state dict is empty, possibly because it was saved from a disabled instance of GradScaler.".into(),
            ));
        }
        let num = |k: &str| -> Result<f64, OptimError> {
            d.get(&Key::Str(k.into()))
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    OptimError::State(format!("grad scaler state: missing number {k:?}"))
                })
        };
        let int = |k: &str| -> Result<i64, OptimError> {
            d.get(&Key::Str(k.into()))
                .and_then(Value::as_i64)
                .ok_or_else(|| OptimError::State(format!("grad scaler state: missing int {k:?}")))
        };
        let loaded = GradScaler {
            growth_tracker: int("_growth_tracker")?,
            per_opt: Vec::new(),
            ..GradScaler::new(
                num("scale")?,
                num("growth_factor")?,
                num("backoff_factor")?,
                int("growth_interval")?,
            )?
        };
        *self = loaded;
        Ok(())
    }
}
