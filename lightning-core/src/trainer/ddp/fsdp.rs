//! `strategy="fsdp"`: fully sharded data parallel on c10d, FSDP2's layout. Every parameter of
//! one or more dimensions is split on dim 0 as `torch.chunk` splits it (rank r holds rows
//! `[r*c, (r+1)*c)` clipped to the size, `c = ceil(n / W)`); at rest a rank holds only its
//! rows of the parameters, their gradients and (so) the optimizer state. The whole model is
//! one FSDP unit: before a forward the parameters are all-gathered (one collective per
//! dtype), after the backward the gradients are reduce-scattered (averaged) to the shards and
//! the full parameters dropped. Between, peak memory is a replica's parameters and gradients.
//!
//! Checkpoints: `state_dict_type="full"` gathers the state and global rank 0 writes one
//! ordinary `.ckpt`; `"sharded"` writes Lightning's sharded layout (a DCP directory plus
//! `meta.pt`), each rank its own file, in a staging directory that appears complete or not at
//! all. A resume reads either kind written by any number of ranks and keeps this rank's rows.

use super::World;
use crate::checkpoint::dcp::{self, LocalItem, PathPart};
use crate::checkpoint::CheckpointError;
use crate::error::{Error, Result};
use crate::trainer::saver::{host_copy, snapshot, Saver};
use crate::trainer::strategy::{FsdpOptions, ShardingStrategy, StateDictType};
use crate::value::{Key, Value};
use lightning_dist::ReduceOp;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Bytes of a tensor's elements.
fn bytes(t: &Tensor) -> i64 {
    t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
}

fn dist_err(what: &str) -> impl Fn(lightning_dist::DistError) -> Error + '_ {
    move |e| Error::Config(format!("fsdp {what}: {e}"))
}

/// One parameter under FSDP.
struct Param {
    name: String,
    /// A handle of the module's variable (its data is swapped between shard and full).
    var: Tensor,
    /// The whole parameter's size.
    full: Vec<i64>,
    /// This rank's rows `[lo, hi)` and the rows per rank `c`; `None`: kept whole (0-dim, or
    /// `NO_SHARD`).
    rows: Option<(i64, i64, i64)>,
    /// The shard while the full parameter is gathered.
    shard: Option<Tensor>,
    /// The gradient shard accumulated over micro-batches, while the full one is computed.
    grad: Option<Tensor>,
}

impl Param {
    /// Elements in one row.
    fn inner(&self) -> i64 {
        self.full[1..].iter().product()
    }

    /// The shape of `rows` rows.
    fn shape_of_rows(&self, rows: i64) -> Vec<i64> {
        let mut s = vec![rows];
        s.extend_from_slice(&self.full[1..]);
        s
    }

    /// `shard` (this rank's rows) flattened and zero-padded to `c` rows: the block this rank
    /// sends to an all-gather.
    fn padded(&self, shard: &Tensor) -> Tensor {
        let (lo, hi, c) = self.rows.unwrap_or((0, 0, 0));
        let inner = self.inner();
        let padded = Tensor::zeros([c * inner], (shard.kind(), shard.device()));
        padded
            .narrow(0, 0, (hi - lo) * inner)
            .copy_(&shard.reshape([-1]));
        padded
    }

    /// The whole tensor from every rank's padded block (`blocks`: `[world, c * inner]`).
    fn whole_of_blocks(&self, blocks: &Tensor, world: i64) -> Tensor {
        let (_, _, c) = self.rows.unwrap_or((0, 0, 0));
        blocks
            .reshape(self.shape_of_rows(world * c).as_slice())
            .narrow(0, 0, self.full[0])
            .contiguous()
    }
}

/// FSDP around one module for one `fit`.
pub(crate) struct Fsdp {
    pub world: Arc<World>,
    pub opts: FsdpOptions,
    params: Vec<Param>,
    /// Per optimizer, the parameter names in its order.
    names: Vec<Vec<String>>,
    saves: AtomicU64,
    /// The parameters outside every `FsdpUnit` (all of them without units): gathered for the
    /// whole step.
    root: Vec<usize>,
    /// Per `FsdpUnit` (its id), its parameters.
    units: Vec<(u64, Vec<usize>)>,
    /// Each parameter's unit (index into `units`).
    unit_of: Vec<Option<usize>>,
    /// Per unit, the gradients its backward has still to accumulate before its reduce-scatter.
    remaining: Vec<usize>,
    /// Parameters whose gradients this step already reduced (in a unit's backward).
    reduced: Vec<bool>,
    /// Bytes of whole (gathered) parameters held now beyond their shards, and the most held
    /// at once so far.
    gathered: i64,
    peak_gathered: i64,
    /// The first error of an `FsdpUnit` forward or of a backward hook, for the step to return.
    unit_error: Option<Error>,
}

thread_local! {
    /// The FSDP of the step running on this thread (while a forward or backward runs).
    static ACTIVE: std::cell::Cell<*mut Fsdp> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// While alive, `FsdpUnit` forwards and the autograd hooks on this thread act on this FSDP.
pub(crate) struct ActiveFsdp<'a> {
    prev: *mut Fsdp,
    _fsdp: std::marker::PhantomData<&'a mut Fsdp>,
}

impl Drop for ActiveFsdp<'_> {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.prev));
    }
}

/// Runs `act` on this thread's active FSDP, if any, recording its error and catching a
/// panic (the hooks are called from C++).
fn with_active(act: impl FnOnce(&mut Fsdp) -> Result<()>) {
    let ptr = ACTIVE.with(std::cell::Cell::get);
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` was set by `Fsdp::activate` from a `&mut Fsdp` that the guard keeps
    // borrowed; the trainer does not touch that FSDP while the forward and backward run, and
    // everything here runs on this thread, one call at a time.
    let f = unsafe { &mut *ptr };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| act(&mut *f)));
    let e = match r {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => Error::Config("fsdp: a unit's hook panicked".into()),
    };
    f.unit_error.get_or_insert(e);
}

/// `FsdpUnit::forward_t` under FSDP (see `super::around_fsdp_unit`).
pub(crate) fn around_unit(id: u64, forward: impl FnOnce() -> Tensor) -> Tensor {
    let mut unit = None;
    with_active(|f| {
        unit = f.units.iter().position(|(u, _)| *u == id);
        match unit {
            Some(u) => f.gather_unit(u),
            None => Ok(()),
        }
    });
    let out = forward();
    if let Some(u) = unit {
        let training = out.requires_grad();
        with_active(|f| f.after_unit_forward(u, &out, training));
    }
    out
}

extern "C" fn unit_before_backward(tag: u64) {
    with_active(|f| f.gather_unit(tag as usize));
}

extern "C" fn param_after_accumulate(tag: u64) {
    with_active(|f| f.param_grad_ready(tag as usize));
}

impl Fsdp {
    /// Broadcasts rank 0's parameters and buffers, then keeps this rank's rows of every
    /// parameter (the module's variables now hold their shards).
    pub fn shard(
        world: Arc<World>,
        opts: &FsdpOptions,
        named: Vec<(String, Tensor)>,
        buffers: &[Tensor],
        unit_ids: &[Option<u64>],
    ) -> Result<Fsdp> {
        let all: Vec<Tensor> = named
            .iter()
            .map(|(_, p)| p.shallow_clone())
            .chain(buffers.iter().map(Tensor::shallow_clone))
            .collect();
        if !all.is_empty() {
            world
                .pg
                .broadcast_coalesced(&all, 0)
                .map_err(dist_err("broadcast of rank 0's weights"))?;
        }
        let (rank, w) = (world.env.rank, world.env.world_size);
        let shard_all = opts.sharding_strategy != ShardingStrategy::NoShard;
        let _guard = tch::no_grad_guard();
        let mut params = Vec::with_capacity(named.len());
        for (name, var) in named {
            let full = var.size();
            let rows = (shard_all && !full.is_empty()).then(|| {
                let (lo, hi) = dcp::shard_rows(full[0], rank, w);
                (lo, hi, (full[0] + w as i64 - 1) / w as i64)
            });
            let mut p = Param {
                name,
                var,
                full,
                rows,
                shard: None,
                grad: None,
            };
            if let Some((lo, hi, _)) = p.rows {
                let local = p.var.narrow(0, lo, hi - lo).contiguous().copy();
                p.var.set_data(&local);
            }
            params.push(p);
        }
        let mut units: Vec<(u64, Vec<usize>)> = Vec::new();
        let mut unit_of = vec![None; params.len()];
        let mut root = Vec::new();
        for (i, id) in unit_ids.iter().enumerate().take(params.len()) {
            match id {
                Some(id) => {
                    let u = match units.iter().position(|(x, _)| x == id) {
                        Some(u) => u,
                        None => {
                            units.push((*id, Vec::new()));
                            units.len() - 1
                        }
                    };
                    units[u].1.push(i);
                    unit_of[i] = Some(u);
                }
                None => root.push(i),
            }
        }
        root.extend(unit_ids.len()..params.len());
        // A unit's parameters tell it (from the backward) that their gradients are in.
        for (i, p) in params.iter().enumerate() {
            if unit_of[i].is_some() && p.rows.is_some() && p.var.requires_grad() {
                lightning_sys::ops::set_post_accumulate_grad_hook(
                    &p.var,
                    Some(param_after_accumulate),
                    i as u64,
                )
                .map_err(|e| Error::Config(format!("fsdp: {e}")))?;
            }
        }
        let n = params.len();
        Ok(Fsdp {
            world,
            opts: opts.clone(),
            remaining: vec![0; units.len()],
            root,
            units,
            unit_of,
            reduced: vec![false; n],
            gathered: 0,
            peak_gathered: 0,
            unit_error: None,
            params,
            names: Vec::new(),
            saves: AtomicU64::new(0),
        })
    }

    /// Makes this FSDP the one `FsdpUnit` forwards and the backward's hooks on this thread
    /// act on, until the guard drops.
    pub fn activate(&mut self) -> ActiveFsdp<'_> {
        let ptr: *mut Fsdp = self;
        let prev = ACTIVE.with(|a| a.replace(ptr));
        ActiveFsdp {
            prev,
            _fsdp: std::marker::PhantomData,
        }
    }

    /// The error an `FsdpUnit` forward or a hook met, if any.
    pub fn take_unit_error(&mut self) -> Result<()> {
        match self.unit_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The most bytes of whole parameters held at once (beyond their shards) so far.
    pub fn peak_gathered_bytes(&self) -> i64 {
        self.peak_gathered
    }

    /// Gathers unit `u` (before its forward, or before its backward).
    fn gather_unit(&mut self, u: usize) -> Result<()> {
        let idx = self.units[u].1.clone();
        self.gather_params(&idx)
    }

    /// After unit `u`'s forward: in training, FULL_SHARD shards it again at once and gathers
    /// it back just before its backward (a hook on its output's gradient); its gradients
    /// are counted in by their hooks. In evaluation it is sharded again, gradients restored.
    fn after_unit_forward(&mut self, u: usize, out: &Tensor, training: bool) -> Result<()> {
        let idx = self.units[u].1.clone();
        if !training {
            self.release(&idx, true);
            return Ok(());
        }
        self.remaining[u] = idx
            .iter()
            .filter(|&&i| self.params[i].rows.is_some() && self.params[i].var.requires_grad())
            .count();
        if self.opts.sharding_strategy == ShardingStrategy::FullShard {
            self.release(&idx, false);
            lightning_sys::ops::register_grad_hook(out, unit_before_backward, u as u64)
                .map_err(|e| Error::Config(format!("fsdp: {e}")))?;
        }
        Ok(())
    }

    /// A gradient of parameter `i` is in; the last one of its unit reduce-scatters the
    /// unit's gradients and shards it again.
    fn param_grad_ready(&mut self, i: usize) -> Result<()> {
        let Some(u) = self.unit_of[i] else {
            return Ok(());
        };
        if self.remaining[u] == 0 {
            return Ok(());
        }
        self.remaining[u] -= 1;
        if self.remaining[u] == 0 {
            let idx = self.units[u].1.clone();
            self.reduce(&idx)?;
        }
        Ok(())
    }

    /// Puts the shards of `idx` back in place of their gathered parameters (`restore_grads`:
    /// their gradient shards too, as after an evaluation forward; else those stay aside for
    /// the step's reduce).
    fn release(&mut self, idx: &[usize], restore_grads: bool) {
        for &i in idx {
            let p = &mut self.params[i];
            if let Some(s) = p.shard.take() {
                self.gathered -= bytes(&p.var) - bytes(&s);
                p.var.set_data(&s);
                if restore_grads && let Some(g) = p.grad.take() {
                    // Same size as the shard it was taken from: cannot fail.
                    let _ = lightning_sys::ops::set_grad(&p.var, &g);
                }
            }
        }
    }

    /// Records each optimizer's parameter order by name (the same variables as the module's).
    pub fn bind(&mut self, optimizers: &[Vec<Tensor>]) -> Result<()> {
        self.names = optimizers
            .iter()
            .map(|ps| {
                ps.iter()
                    .map(|t| {
                        self.params
                            .iter()
                            .find(|p| lightning_sys::ops::same_variable(&p.var, t))
                            .map(|p| p.name.clone())
                            .ok_or_else(|| {
                                Error::Config(
                                    "strategy=\"fsdp\": an optimizer holds a tensor that is not \
                                     one of the module's parameters; build optimizers from \
                                     `self.parameters()` in `configure_optimizers`"
                                        .into(),
                                )
                            })
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Before a step's (or an evaluation's) forward: gathers the root's sharded parameters
    /// whole (every parameter when the module has no `FsdpUnit`); the shards and gradient
    /// shards are kept aside. Units gather around their own forward.
    pub fn unshard(&mut self) -> Result<()> {
        if let Some(e) = self.unit_error.take() {
            return Err(e);
        }
        self.reduced.iter_mut().for_each(|r| *r = false);
        let root = self.root.clone();
        self.gather_params(&root)
    }

    /// Gathers the sharded parameters of `idx` that are not gathered yet (one all-gather per
    /// dtype).
    fn gather_params(&mut self, idx: &[usize]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let w = self.world.env.world_size as i64;
        for kind in self.kinds() {
            let idx: Vec<usize> = self
                .sharded_in(idx, kind)
                .into_iter()
                .filter(|&i| self.params[i].shard.is_none())
                .collect();
            if idx.is_empty() {
                continue;
            }
            let mut flat_parts = Vec::with_capacity(idx.len());
            let mut total = 0i64;
            for &i in &idx {
                let p = &mut self.params[i];
                let padded = p.padded(&p.var.detach());
                total += padded.numel() as i64;
                flat_parts.push(padded);
                let g = p.var.grad();
                if g.defined() {
                    p.grad = Some(g.detach());
                    lightning_sys::ops::set_grad_to_none(&p.var)
                        .map_err(|e| Error::Config(format!("fsdp: {e}")))?;
                }
                p.shard = Some(p.var.detach());
            }
            let input = Tensor::cat(&flat_parts, 0);
            let mut out = Tensor::empty([w * total], (kind, input.device()));
            self.world
                .pg
                .all_gather_into(&mut out, &input)
                .map_err(dist_err("all_gather of parameters"))?;
            let out = out.reshape([w, total]);
            let mut at = 0;
            for (&i, part) in idx.iter().zip(&flat_parts) {
                let n = part.numel() as i64;
                let p = &mut self.params[i];
                let full = p.whole_of_blocks(&out.narrow(1, at, n), w);
                self.gathered += bytes(&full) - bytes(&p.var);
                p.var.set_data(&full);
                at += n;
            }
            self.peak_gathered = self.peak_gathered.max(self.gathered);
        }
        Ok(())
    }

    /// After a backward: averages the gradients over the ranks into each rank's shard
    /// (reduce-scatter; a whole parameter's by all-reduce), adds the shard accumulated over
    /// earlier micro-batches, and puts the shards back in place of the full parameters.
    pub fn reduce_grads(&mut self) -> Result<()> {
        if let Some(e) = self.unit_error.take() {
            return Err(e);
        }
        // what the units' backward hooks did not reduce already
        let idx: Vec<usize> = (0..self.params.len())
            .filter(|&i| !self.reduced[i])
            .collect();
        self.reduce(&idx)?;
        // Whole parameters: DDP's all-reduce.
        let mut whole: Vec<Tensor> = self
            .params
            .iter()
            .filter(|p| p.rows.is_none())
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .collect();
        if !whole.is_empty() {
            self.world
                .pg
                .all_reduce(&mut whole, ReduceOp::Avg)
                .map_err(dist_err("all_reduce of gradients"))?;
        }
        Ok(())
    }

    /// Reduce-scatters the gradients of the sharded parameters of `idx` (one collective per
    /// dtype), adds the shards accumulated over earlier micro-batches, and puts the shards
    /// back in place of the full parameters.
    fn reduce(&mut self, idx: &[usize]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let w = self.world.env.world_size as i64;
        for kind in self.kinds() {
            let idx = self.sharded_in(idx, kind);
            if idx.is_empty() {
                continue;
            }
            let mut blocks: Vec<Vec<Tensor>> = (0..w).map(|_| Vec::new()).collect();
            let mut total = 0i64;
            let mut any = false;
            for &i in &idx {
                let p = &self.params[i];
                let (_, _, c) = p.rows.unwrap_or((0, 0, 0));
                let inner = p.inner();
                let g = p.var.grad();
                let g = if g.defined() {
                    any = true;
                    g.detach().reshape([-1])
                } else {
                    Tensor::zeros([p.full[0] * inner], (kind, p.var.device()))
                };
                let padded = Tensor::zeros([w * c * inner], (kind, g.device()));
                padded.narrow(0, 0, g.numel() as i64).copy_(&g);
                for (r, b) in blocks.iter_mut().enumerate() {
                    b.push(padded.narrow(0, r as i64 * c * inner, c * inner));
                }
                total += c * inner;
            }
            let reduced = if any && total > 0 {
                let flat: Vec<Tensor> = blocks.into_iter().flatten().collect();
                let input = Tensor::cat(&flat, 0);
                let mut out = Tensor::empty([total], (kind, input.device()));
                self.world
                    .pg
                    .reduce_scatter_into(&mut out, &input, ReduceOp::Avg)
                    .map_err(dist_err("reduce_scatter of gradients"))?;
                Some(out)
            } else {
                None
            };
            let mut at = 0;
            for &i in &idx {
                let p = &mut self.params[i];
                let (lo, hi, c) = p.rows.unwrap_or((0, 0, 0));
                let inner = p.inner();
                let shard = match p.shard.take() {
                    Some(s) => {
                        self.gathered -= bytes(&p.var) - bytes(&s);
                        s
                    }
                    None => p.var.detach(),
                };
                self.reduced[i] = true;
                let had_grad = p.var.grad().defined();
                lightning_sys::ops::set_grad_to_none(&p.var)
                    .map_err(|e| Error::Config(format!("fsdp: {e}")))?;
                p.var.set_data(&shard);
                let new = match (&reduced, had_grad) {
                    (Some(r), true) => Some(
                        r.narrow(0, at, (hi - lo) * inner)
                            .reshape(p.shape_of_rows(hi - lo).as_slice()),
                    ),
                    _ => None,
                };
                let g = match (new, p.grad.take()) {
                    (Some(n), Some(old)) => Some(old + n),
                    (Some(n), None) => Some(n.contiguous()),
                    (None, old) => old,
                };
                if let Some(g) = g {
                    lightning_sys::ops::set_grad(&p.var, &g)
                        .map_err(|e| Error::Config(format!("fsdp: {e}")))?;
                }
                at += c * inner;
            }
        }
        Ok(())
    }

    /// Puts the shards back, and the gradient shards set aside, after a forward that no
    /// backward follows (evaluation, or an epoch without optimization).
    pub fn reshard(&mut self) {
        for p in &mut self.params {
            if let Some(s) = p.shard.take() {
                self.gathered -= bytes(&p.var) - bytes(&s);
                let _ = lightning_sys::ops::set_grad_to_none(&p.var);
                p.var.set_data(&s);
            }
            // also a unit's, released after a training forward no backward followed (an
            // epoch without optimization)
            if let Some(g) = p.grad.take() {
                // Same size as the shard it was taken from: cannot fail.
                let _ = lightning_sys::ops::set_grad(&p.var, &g);
            }
        }
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = Vec::new();
        for p in self.params.iter().filter(|p| p.rows.is_some()) {
            let k = p.var.kind();
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        kinds
    }

    /// The sharded parameters of `kind` among `idx` (in `idx`'s order: ascending, as every
    /// caller's, so the flat buffers of a collective list parameters in the module's order).
    fn sharded_in(&self, idx: &[usize], kind: Kind) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|&i| self.params[i].rows.is_some() && self.params[i].var.kind() == kind)
            .collect()
    }

    /// The 2-norm of all gradients over the ranks, then each scaled by
    /// `max_norm / (norm + 1e-6)` when that is below 1 (torch's `clip_grad_norm_` on the
    /// sharded gradients).
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut sq = 0.0;
        for p in &self.params {
            let g = p.var.grad();
            if g.defined() {
                let s = g
                    .to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
                // A whole parameter's gradient is on every rank: count it once.
                sq += if p.rows.is_some() || self.world.env.rank == 0 {
                    s
                } else {
                    0.0
                };
            }
        }
        let mut v = [sq];
        self.world.sum(&mut v)?;
        let coef = max_norm / (v[0].sqrt() + 1e-6);
        if coef < 1.0 {
            for p in &self.params {
                let mut g = p.var.grad();
                if g.defined() {
                    let _ = g
                        .f_mul_(&Tensor::from(coef).to_kind(g.kind()))
                        .map_err(|e| Error::Config(format!("fsdp clip: {e}")))?;
                }
            }
        }
        Ok(())
    }

    fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// A shard `t` of parameter `p`'s size gathered whole (every rank must call this for the
    /// same tensors in the same order).
    fn gather(&self, p: &Param, t: &Tensor) -> Result<Tensor> {
        if p.rows.is_none() {
            return Ok(t.shallow_clone());
        }
        let w = self.world.env.world_size as i64;
        let padded = p.padded(t);
        let mut out = Tensor::empty([w * padded.numel() as i64], (t.kind(), t.device()));
        self.world
            .pg
            .all_gather_into(&mut out, &padded)
            .map_err(dist_err("all_gather of the state"))?;
        Ok(p.whole_of_blocks(&out, w))
    }

    /// Whether `t` is this rank's shard of `p` (a state tensor that follows the parameter).
    fn is_shard_of(p: &Param, t: &Tensor) -> bool {
        match p.rows {
            Some((lo, hi, _)) => t.size() == p.shape_of_rows(hi - lo),
            None => false,
        }
    }

    /// Applies `f` to every sharded tensor of a checkpoint in Lightning's single-file layout
    /// (`state_dict` entries of sharded parameters, and the optimizers' per-parameter state
    /// tensors that follow them), in a fixed order.
    fn each_sharded(
        &self,
        ckpt: &mut Value,
        mut f: impl FnMut(&Param, &Tensor) -> Result<Option<Tensor>>,
    ) -> Result<()> {
        if let Some(Value::Dict(sd) | Value::OrderedDict(sd)) = ckpt.get_mut("state_dict") {
            for (k, v) in sd.iter_mut() {
                if let (Some(p), Value::Tensor(t)) = (self.param(&k.to_string()), &*v)
                    && let Some(new) = f(p, t)?
                {
                    *v = Value::Tensor(new);
                }
            }
        }
        if let Some(Value::List(opts)) = ckpt.get_mut("optimizer_states") {
            for (i, o) in opts.iter_mut().enumerate() {
                let Some(names) = self.names.get(i) else {
                    continue;
                };
                let Some(Value::Dict(st) | Value::OrderedDict(st)) = o.get_mut("state") else {
                    continue;
                };
                for (k, s) in st.iter_mut() {
                    let Key::Int(j) = k else { continue };
                    let Some(p) = names.get(*j as usize).and_then(|n| self.param(n)) else {
                        continue;
                    };
                    if let Value::Dict(fields) | Value::OrderedDict(fields) = s {
                        for (_, x) in fields.iter_mut() {
                            if let Value::Tensor(t) = &*x
                                && let Some(new) = f(p, t)?
                            {
                                *x = Value::Tensor(new);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The checkpoint with every shard gathered whole (a collective).
    pub fn gather_checkpoint(&self, mut ckpt: Value) -> Result<Value> {
        self.each_sharded(&mut ckpt, |p, t| {
            if Self::is_shard_of(p, t) {
                self.gather(p, t).map(Some)
            } else {
                Ok(None)
            }
        })?;
        Ok(ckpt)
    }

    /// A whole checkpoint (from a `.ckpt` or a sharded directory of any world size) cut to
    /// this rank's rows, so the module and optimizers (holding shards) load it.
    pub fn localize(&self, ckpt: &mut Value) -> Result<()> {
        // Optimizer state saved by parameter name (a sharded directory) follows our order.
        if let Some(Value::List(opts)) = ckpt.get_mut("optimizer_states") {
            for (i, (o, names)) in opts.iter_mut().zip(&self.names).enumerate() {
                dcp::lightning::reorder_optimizer_state(o, names)
                    .map_err(|e| Error::Config(format!("optimizer {i}'s saved state: {e}")))?;
            }
        }
        self.each_sharded(ckpt, |p, t| match p.rows {
            Some((lo, hi, _)) if t.size() == p.full => {
                Ok(Some(t.narrow(0, lo, hi - lo).contiguous()))
            }
            _ => Ok(None),
        })
    }

    /// Saves the checkpoint of this rank (shards in it) as `opts.state_dict_type` says,
    /// through `saver` (in the background when it is async; `wait`: until durable). Every
    /// rank calls it.
    pub fn save(&self, path: &Path, ckpt: Value, saver: &mut Saver, wait: bool) -> Result<()> {
        match self.opts.state_dict_type {
            StateDictType::Full => {
                let full = self.gather_checkpoint(ckpt)?;
                if self.world.env.is_global_zero() {
                    saver.save(path, full)?;
                    if wait {
                        saver.wait()?;
                    }
                }
                self.world.barrier("fsdp save_checkpoint")
            }
            StateDictType::Sharded => {
                self.save_sharded(path, ckpt, saver)?;
                if wait {
                    saver.wait()?;
                }
                Ok(())
            }
        }
    }

    /// Lightning's sharded layout: every rank writes its rows into its own `.distcp` file of
    /// a staging directory, rank 0 writes `.metadata` and `meta.pt` and moves the directory
    /// into place (atomically: the old checkpoint stays until the new one is complete). The
    /// training thread only cuts and snapshots this rank's items; the files are written by
    /// the saver (on its thread when async), which meets the other ranks through the store.
    fn save_sharded(&self, path: &Path, ckpt: Value, saver: &mut Saver) -> Result<()> {
        let n = self.saves.fetch_add(1, Ordering::Relaxed);
        let rank = self.world.env.rank;
        let key = format!("lightning_rs/fsdp_save/{n}");
        let (state, meta) = dcp::lightning::split(&ckpt, &self.names)
            .map_err(|e| Error::Config(format!("fsdp save: {e}")))?;
        // A background write needs host copies; a synchronous one writes the shards as they are.
        let copy = saver.is_async();
        let snap = |t: &Tensor| {
            if copy {
                host_copy(t)
            } else {
                t.shallow_clone()
            }
        };
        let mut items = Vec::new();
        for (k, path_parts, v) in dcp::flatten(&state) {
            let name = dcp::lightning::param_of_key(&k);
            let p = name.and_then(|n| self.param(n));
            let item = match (v, p) {
                (Value::Tensor(t), Some(p)) if Self::is_shard_of(p, t) => {
                    let (lo, _, _) = p.rows.unwrap_or((0, 0, 0));
                    let mut offsets = vec![0; p.full.len()];
                    offsets[0] = lo;
                    LocalItem::Block {
                        global_size: p.full.clone(),
                        offsets,
                        tensor: snap(t),
                    }
                }
                // Replicated values and tensors: written once, by rank 0.
                _ if rank != 0 => continue,
                (Value::Tensor(t), _) => LocalItem::Block {
                    global_size: t.size(),
                    offsets: vec![0; t.dim()],
                    tensor: snap(t),
                },
                (other, _) => LocalItem::Bytes(if copy { snapshot(other) } else { other.clone() }),
            };
            items.push((k, path_parts, item));
        }
        let meta = snapshot(&meta);
        let world = self.world.clone();
        let target = path.to_owned();
        saver.run(path, move || {
            write_sharded(&world, &key, &target, items, meta)
        })
    }
}

/// Where a sharded save's files go: a staging directory published as a whole (a local or
/// shared file system), or straight under an object-storage prefix, each rank's file under
/// a name of this save (`__{rank}_0-{token}.distcp`) with `.metadata` written last.
enum ShardTarget {
    Staging(PathBuf),
    Prefix { token: String },
}

impl ShardTarget {
    /// What rank 0 tells the others through the store.
    fn encode(&self) -> String {
        match self {
            ShardTarget::Staging(p) => format!("dir:{}", p.to_string_lossy()),
            ShardTarget::Prefix { token } => format!("url:{token}"),
        }
    }

    fn decode(b: &[u8]) -> Result<ShardTarget, String> {
        let s = String::from_utf8_lossy(b);
        if let Some(p) = s.strip_prefix("dir:") {
            return Ok(ShardTarget::Staging(PathBuf::from(p)));
        }
        if let Some(t) = s.strip_prefix("url:") {
            return Ok(ShardTarget::Prefix {
                token: t.to_owned(),
            });
        }
        Err(s.strip_prefix("error: ").unwrap_or(&s).to_owned())
    }

    /// The folder the rank files and `.metadata` are written into.
    fn dir<'a>(&'a self, path: &'a Path) -> &'a Path {
        match self {
            ShardTarget::Staging(p) => p,
            ShardTarget::Prefix { .. } => path,
        }
    }

    fn file_name(&self, rank: usize) -> String {
        match self {
            ShardTarget::Staging(_) => dcp::rank_file_name(rank),
            ShardTarget::Prefix { token } => format!("__{rank}_0-{token}.distcp"),
        }
    }
}

/// One rank's part of a sharded save (see `Fsdp::save_sharded`); runs on the saver's
/// thread when saves are async. Rank 0 makes the staging directory (or picks this save's
/// file names on object storage) and names it to the others through the store (or the
/// error that stopped it, so nobody waits); each rank writes its file and posts what it
/// wrote; rank 0 completes the checkpoint (`meta.pt`, then `.metadata`), publishes the
/// directory, and posts the outcome, which every rank waits for.
fn write_sharded(
    world: &World,
    key: &str,
    path: &Path,
    items: Vec<(String, Vec<PathPart>, LocalItem)>,
    mut meta: Value,
) -> Result<(), CheckpointError> {
    let rank = world.env.rank;
    let store = &world.store;
    let remote = |e: lightning_dist::DistError| CheckpointError::Remote {
        path: path.to_owned(),
        what: "the sharded save's rendezvous".into(),
        source: Box::new(e),
    };
    let bad = |msg: String| CheckpointError::Format {
        path: path.to_owned(),
        msg,
    };
    let target = if rank == 0 {
        let t = match crate::storage::is_url(path) {
            true => Ok(ShardTarget::Prefix {
                token: dcp::new_save_id()[..8].to_owned(),
            }),
            false => crate::storage::local::staging_dir(path).map(ShardTarget::Staging),
        };
        let posted = match &t {
            Ok(t) => t.encode(),
            Err(e) => format!("error: {e}"),
        };
        store
            .set(&format!("{key}/dir"), posted.as_bytes())
            .map_err(remote)?;
        t?
    } else {
        let b = store.get(&format!("{key}/dir")).map_err(remote)?;
        ShardTarget::decode(&b).map_err(|e| bad(format!("rank 0 could not start the save: {e}")))?
    };
    let dir = target.dir(path);
    let written = dcp::write_items_file(dir, &target.file_name(rank), &items, true);
    // Post the outcome either way, so rank 0 never waits for a rank that failed.
    let posted = match &written {
        Ok(w) => serde_json::Value::Array(w.iter().map(|x| x.to_json()).collect()).to_string(),
        Err(e) => format!("error: {e}"),
    };
    store
        .set(&format!("{key}/rank{rank}"), posted.as_bytes())
        .map_err(remote)?;
    written?;
    if rank == 0 {
        let published = (|| {
            let mut all = Vec::new();
            for r in 0..world.env.world_size {
                let b = store.get(&format!("{key}/rank{r}")).map_err(remote)?;
                if let Some(e) = b.strip_prefix(b"error: ") {
                    return Err(bad(format!(
                        "rank {r} could not write its shard: {}",
                        String::from_utf8_lossy(e)
                    )));
                }
                let v: serde_json::Value = serde_json::from_slice(&b)
                    .map_err(|e| bad(format!("rank {r}'s list of items: {e}")))?;
                for x in v.as_array().into_iter().flatten() {
                    all.push(
                        dcp::WrittenItem::from_json(x)
                            .map_err(|e| bad(format!("rank {r}: {e}")))?,
                    );
                }
            }
            let save_id = dcp::new_save_id();
            dcp::lightning::stamp_save_id(&mut meta, &save_id);
            crate::checkpoint::save(&dir.join(dcp::lightning::META_FILE), &meta)?;
            dcp::write_metadata(dir, &all, &save_id, true)?;
            match &target {
                ShardTarget::Staging(staging) => crate::storage::local::publish_dir(staging, path),
                ShardTarget::Prefix { token } => {
                    dcp::lightning::remove_other_saves_files(path, token);
                    Ok(())
                }
            }
        })();
        if let (Err(_), ShardTarget::Staging(staging)) = (&published, &target) {
            let _ = std::fs::remove_dir_all(staging);
        }
        let outcome: &[u8] = if published.is_ok() { b"ok" } else { b"failed" };
        store.set(&format!("{key}/done"), outcome).map_err(remote)?;
        published
    } else {
        let done = store.get(&format!("{key}/done")).map_err(remote)?;
        if done != b"ok" {
            return Err(bad(
                "rank 0 could not complete the sharded checkpoint".into()
            ));
        }
        Ok(())
    }
}
