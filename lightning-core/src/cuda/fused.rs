//! Host side of the fused kernels: launch tables and the optimizer/AMP/clip entry points.

use super::{kernels, CudaError, Kernels, CHUNK, TSLOTS};
use crate::optim::{AdamConfig, AdamState, OptimError, SgdConfig};
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

impl From<CudaError> for OptimError {
    fn from(e: CudaError) -> Self {
        OptimError::Backend(e.to_string())
    }
}

/// One tensor of a multi-tensor launch: up to 5 device pointers, its length and a flag.
pub(crate) struct Entry {
    pub ptrs: [i64; 5],
    pub numel: i64,
    pub flag: i64,
}

fn ptr(t: &Tensor) -> i64 {
    t.data_ptr() as i64
}

/// The device copy of a launch table, cached by content (pointers rarely change between
/// steps, so the host-to-device upload, which synchronizes, happens once) and by the stream
/// it is used on: the caching allocator ties a block to the stream current when it was
/// allocated, so a table shared with kernels on another stream could be freed (evicted) and
/// handed out again while such a kernel still reads it.
fn device_table(host: Vec<i64>, device: Device, stream: usize) -> Result<Tensor, OptimError> {
    type Cache = Mutex<Vec<(Device, usize, Vec<i64>, Tensor)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pos) = c
        .iter()
        .position(|(d, s, h, _)| *d == device && *s == stream && *h == host)
    {
        let t = c[pos].3.shallow_clone();
        return Ok(t);
    }
    let t = Tensor::from_slice(&host)
        .f_to_device(device)
        .map_err(|e| OptimError::Backend(e.to_string()))?;
    if c.len() >= 64 {
        let _evicted = c.remove(0);
    }
    c.push((device, stream, host, t.shallow_clone()));
    Ok(t)
}

/// Builds the table (`TSLOTS` per tensor, then 2 per block) and launches `kernel` with
/// `(tensors, chunks, extra...)`.
fn launch(
    k: &Kernels,
    kernel: &str,
    device: Device,
    entries: &[Entry],
    extra: &mut [*mut c_void],
) -> Result<(), OptimError> {
    let mut host = Vec::with_capacity(entries.len() * TSLOTS);
    let mut chunks = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let aligned = e.ptrs.iter().all(|&p| p % 16 == 0);
        host.extend_from_slice(&e.ptrs);
        host.extend_from_slice(&[e.numel, aligned as i64, e.flag]);
        let mut s = 0;
        while s < e.numel {
            chunks.extend_from_slice(&[i as i64, s]);
            s += CHUNK;
        }
    }
    let blocks = chunks.len() / 2;
    if blocks == 0 {
        return Ok(());
    }
    let blocks = u32::try_from(blocks)
        .map_err(|_| OptimError::Backend(format!("too many blocks for one launch: {blocks}")))?;
    let ntab = host.len();
    host.extend(chunks);
    // libtorch's current stream: the table is cached for it and the kernel runs on it.
    let stream = k.stream();
    let table = device_table(host, device, stream as usize)?;
    let mut tp = table.data_ptr() as u64;
    let mut cp = tp + (ntab * 8) as u64;
    let mut args: Vec<*mut c_void> = vec![
        &mut tp as *mut u64 as *mut c_void,
        &mut cp as *mut u64 as *mut c_void,
    ];
    args.extend_from_slice(extra);
    // SAFETY: the table holds live device pointers of tensors the caller keeps alive for the
    // launch (stream-ordered: later frees wait for the kernel in the caching allocator's
    // stream order); args match the kernel signatures in kernels/*.cu.
    unsafe { k.launch(kernel, blocks, stream, &mut args) }?;
    Ok(())
}

fn suffix(kind: Kind) -> Result<&'static str, OptimError> {
    match kind {
        Kind::Float => Ok("f32"),
        Kind::Half => Ok("f16"),
        Kind::BFloat16 => Ok("bf16"),
        k => Err(OptimError::Backend(format!(
            "fused kernels do not support dtype {k:?}"
        ))),
    }
}

fn ordinal(d: Device) -> Result<usize, OptimError> {
    match d {
        Device::Cuda(i) => Ok(i),
        d => Err(OptimError::Backend(format!(
            "fused kernels need a CUDA tensor, got {d:?}"
        ))),
    }
}

#[repr(C)]
struct AdamArgs {
    decay: f32,
    wd: f32,
    w1: f32,
    beta2: f32,
    omb2: f32,
    neg_step: f32,
    bc2_sqrt: f32,
    eps: f32,
    flags: i32,
}

/// Fused Adam/AdamW over the params at global indices `idx` (`params[i - base]`), whose
/// `state[i]` exists and whose `step` was already incremented. One launch per distinct
/// (step, dtype, device).
pub(crate) fn adam_step(
    params: &[Tensor],
    base: usize,
    idx: &[usize],
    state: &mut [Option<AdamState>],
    c: &AdamConfig,
) -> Result<(), OptimError> {
    let mut batches: Vec<((u64, Kind, Device), Vec<Entry>)> = Vec::new();
    for &i in idx {
        let p = &params[i - base];
        let g = p.grad();
        let st = state[i]
            .as_ref()
            .ok_or_else(|| OptimError::Backend(format!("no Adam state for param {i}")))?;
        let key = (st.step.to_bits(), p.kind(), p.device());
        let e = Entry {
            ptrs: [
                ptr(p),
                ptr(&g),
                ptr(&st.exp_avg),
                ptr(&st.exp_avg_sq),
                st.max_exp_avg_sq.as_ref().map(ptr).unwrap_or(0),
            ],
            numel: p.numel() as i64,
            flag: 0,
        };
        match batches.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(e),
            None => batches.push((key, vec![e])),
        }
    }
    for ((step_bits, kind, device), entries) in batches {
        let step = f64::from_bits(step_bits);
        let k = kernels(ordinal(device)?)?;
        let (beta1, beta2) = c.betas;
        let bc1 = 1.0 - beta1.powf(step);
        let bc2 = 1.0 - beta2.powf(step);
        let mut a = AdamArgs {
            decay: if c.decoupled_weight_decay {
                (1.0 - c.lr * c.weight_decay) as f32
            } else {
                1.0
            },
            wd: if c.decoupled_weight_decay {
                0.0
            } else {
                c.weight_decay as f32
            },
            w1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            omb2: (1.0 - beta2) as f32,
            neg_step: (-(c.lr / bc1)) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            eps: c.eps as f32,
            flags: (c.amsgrad as i32) | ((c.maximize as i32) << 1),
        };
        let name = format!("adam_{}", suffix(kind)?);
        launch(
            &k,
            &name,
            device,
            &entries,
            &mut [&mut a as *mut AdamArgs as *mut c_void],
        )?;
    }
    Ok(())
}

#[repr(C)]
struct SgdArgs {
    lr: f32,
    wd: f32,
    momentum: f32,
    omd: f32,
    flags: i32,
}

/// Fused SGD over the params at global indices `idx`; creates momentum buffers on first use.
pub(crate) fn sgd_step(
    params: &[Tensor],
    base: usize,
    idx: &[usize],
    bufs: &mut [Option<Tensor>],
    c: &SgdConfig,
) -> Result<(), OptimError> {
    let has_m = c.momentum != 0.0;
    let mut batches: Vec<((Kind, Device), Vec<Entry>)> = Vec::new();
    for &i in idx {
        let p = &params[i - base];
        let g = p.grad();
        let mut first = 0;
        let b = if has_m {
            if bufs[i].is_none() {
                first = 1;
                bufs[i] = Some(p.zeros_like());
            }
            bufs[i].as_ref().map(ptr).unwrap_or(0)
        } else {
            0
        };
        let key = (p.kind(), p.device());
        let e = Entry {
            ptrs: [ptr(p), ptr(&g), b, 0, 0],
            numel: p.numel() as i64,
            flag: first,
        };
        match batches.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(e),
            None => batches.push((key, vec![e])),
        }
    }
    for ((kind, device), entries) in batches {
        let k = kernels(ordinal(device)?)?;
        let mut a = SgdArgs {
            lr: c.lr as f32,
            wd: c.weight_decay as f32,
            momentum: c.momentum as f32,
            omd: (1.0 - c.dampening) as f32,
            flags: (c.maximize as i32) | ((c.nesterov as i32) << 1) | ((has_m as i32) << 2),
        };
        let name = format!("sgd_{}", suffix(kind)?);
        launch(
            &k,
            &name,
            device,
            &entries,
            &mut [&mut a as *mut SgdArgs as *mut c_void],
        )?;
    }
    Ok(())
}

fn single_entries(ts: &[Tensor]) -> Vec<Entry> {
    ts.iter()
        .map(|t| Entry {
            ptrs: [ptr(t), 0, 0, 0, 0],
            numel: t.numel() as i64,
            flag: 0,
        })
        .collect()
}

/// Fused `_amp_foreach_non_finite_check_and_unscale_`: `grads *= inv_scale`, and
/// `found_inf = 1` when any gradient held an inf/NaN. `inv_scale`, `found_inf`: 1-element f32
/// tensors on the grads' device. Grads must pass [`super::fused_grads_supported`].
pub(crate) fn unscale(
    grads: &[Tensor],
    inv_scale: &Tensor,
    found_inf: &Tensor,
) -> Result<(), OptimError> {
    let Some(first) = grads.first() else {
        return Ok(());
    };
    let device = first.device();
    let k = kernels(ordinal(device)?)?;
    let mut inv = inv_scale.data_ptr() as u64;
    let mut found = found_inf.data_ptr() as u64;
    let name = format!("unscale_{}", suffix(first.kind())?);
    launch(
        &k,
        &name,
        device,
        &single_entries(grads),
        &mut [
            &mut inv as *mut u64 as *mut c_void,
            &mut found as *mut u64 as *mut c_void,
        ],
    )
}

/// Fused global 2-norm + clip (two launches, no host sync); returns the total norm (0-dim f32
/// on the device).
pub(crate) fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<Tensor, OptimError> {
    let Some(first) = grads.first() else {
        return Ok(Tensor::from(0.0f32));
    };
    let device = first.device();
    let k = kernels(ordinal(device)?)?;
    let sfx = suffix(first.kind())?;
    let entries = single_entries(grads);
    let acc = Tensor::zeros([], (Kind::Double, device));
    let out = Tensor::zeros([], (Kind::Float, device));
    let mut accp = acc.data_ptr() as u64;
    launch(
        &k,
        &format!("sumsq_{sfx}"),
        device,
        &entries,
        &mut [&mut accp as *mut u64 as *mut c_void],
    )?;
    let mut m = max_norm as f32;
    let mut outp = out.data_ptr() as u64;
    launch(
        &k,
        &format!("clip_{sfx}"),
        device,
        &entries,
        &mut [
            &mut accp as *mut u64 as *mut c_void,
            &mut m as *mut f32 as *mut c_void,
            &mut outp as *mut u64 as *mut c_void,
        ],
    )?;
    // `acc` must outlive the kernels: the caching allocator reuses its memory only for work
    // queued after this point on the same stream.
    drop(acc);
    Ok(out)
}
