//! [`Traverse`] for tch's layers with PyTorch's state_dict names, plus the layers whose tch
//! versions hide their tensors or lack PyTorch's state: [`BatchNorm`] (with
//! `num_batches_tracked`), [`Lstm`]/[`Gru`] (tch keeps their weights private) and a traversable
//! [`Sequential`].
//!
//! Which tch layers differ from PyTorch's:
//!
//! | tch layer | PyTorch's state | here |
//! |---|---|---|
//! | `nn::Linear`, `nn::Conv*`, `nn::ConvTranspose*`, `nn::LayerNorm`, `nn::GroupNorm`, `nn::Embedding` | same tensors | traversed as is |
//! | `nn::BatchNorm` (`nn::batch_norm1d/2d/3d`) | lacks the `num_batches_tracked` buffer | reports it as `0` and accepts (drops) it on load, so files load both ways strictly; use [`BatchNorm`] to count batches |
//! | `nn::LSTM`, `nn::GRU` | weights private | use [`Lstm`], [`Gru`] |
//! | `nn::Sequential`, `nn::SequentialT` | layers private | use [`Sequential`] |

use crate::traverse::{join_name, TensorKind, Traverse};
use std::cell::Cell;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

thread_local! {
    /// Whether [`BatchNorm`]s on this thread average their running statistics cumulatively
    /// (PyTorch's `momentum=None`).
    static CUMULATIVE_BATCH_NORM: Cell<bool> = const { Cell::new(false) };
}

/// Makes every [`BatchNorm`] on this thread update its running statistics as PyTorch's
/// `momentum=None` does (a cumulative average: factor `1 / num_batches_tracked`) while `on`,
/// and with its configured momentum again once `off`. Stochastic weight averaging turns it on
/// for its epoch that re-estimates the statistics of the averaged weights. tch's bare
/// `nn::BatchNorm` has no batch counter and keeps its momentum.
pub fn set_cumulative_batch_norm(on: bool) {
    CUMULATIVE_BATCH_NORM.with(|c| c.set(on));
}

thread_local! {
    /// The [`FsdpUnit`]s a traversal on this thread is inside (innermost last).
    static UNIT_STACK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

static NEXT_UNIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A unit of `strategy="fsdp"` (FSDP2's `fully_shard(layer)` on a submodule, Lightning's wrap
/// policy): under FSDP the layer's parameters are gathered only around its own forward (and,
/// with `FULL_SHARD`, again just before its backward), then sharded again, and its
/// gradients are reduce-scattered as soon as its backward is done. A step then holds one
/// unit's whole parameters at a time besides the module's other (root) parameters, instead
/// of the whole model. Outside FSDP it is the layer itself. Names are unchanged (the wrapper
/// adds no name component), so checkpoints are the same with or without units.
///
/// ```
/// use lightning_core::layers::FsdpUnit;
/// use tch::nn::{self, ModuleT};
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let block = FsdpUnit::new(nn::linear(vs.root() / "block", 4, 4, Default::default()));
/// let y = block.forward_t(&tch::Tensor::ones([2, 4], (tch::Kind::Float, tch::Device::Cpu)), true);
/// assert_eq!(y.size(), [2, 4]);
/// ```
#[derive(Debug)]
pub struct FsdpUnit<L> {
    /// The wrapped layer.
    pub inner: L,
    id: u64,
}

impl<L> FsdpUnit<L> {
    /// Makes `inner` one FSDP unit.
    pub fn new(inner: L) -> Self {
        FsdpUnit {
            inner,
            id: NEXT_UNIT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Runs any forward of the layer as the unit's (`block.call(|b| b.forward(&x, &mask))`):
    /// under FSDP its parameters are gathered around it, and the tensor it returns carries
    /// the hook that gathers them again for the backward.
    pub fn call(&self, forward: impl FnOnce(&L) -> Tensor) -> Tensor {
        crate::trainer::around_fsdp_unit(self.id, || forward(&self.inner))
    }

    /// `forward` of a [`nn::Module`] layer, as a unit.
    pub fn forward(&self, xs: &Tensor) -> Tensor
    where
        L: nn::Module,
    {
        crate::trainer::around_fsdp_unit(self.id, || self.inner.forward(xs))
    }
}

impl<L: Traverse> Traverse for FsdpUnit<L> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        UNIT_STACK.with(|s| s.borrow_mut().push(self.id));
        self.inner.visit(prefix, f);
        UNIT_STACK.with(|s| s.borrow_mut().pop());
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        UNIT_STACK.with(|s| s.borrow_mut().push(self.id));
        self.inner.visit_mut(prefix, f);
        UNIT_STACK.with(|s| s.borrow_mut().pop());
    }
}

impl<L: ModuleT> ModuleT for FsdpUnit<L> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        crate::trainer::around_fsdp_unit(self.id, || self.inner.forward_t(xs, train))
    }
}

/// Each parameter's name (in `named_parameters` order) with the [`FsdpUnit`] holding it
/// (`None`: the root), and whether any unit is inside another.
pub(crate) fn fsdp_units_of<T: Traverse + ?Sized>(m: &T) -> (Vec<(String, Option<u64>)>, bool) {
    let mut out = Vec::new();
    let mut nested = false;
    m.visit("", &mut |name, _, kind| {
        if kind == TensorKind::Parameter {
            let (top, depth) = UNIT_STACK.with(|s| {
                let s = s.borrow();
                (s.last().copied(), s.len())
            });
            nested |= depth > 1;
            out.push((name.to_owned(), top));
        }
    });
    (out, nested)
}

/// Whether [`set_cumulative_batch_norm`] is on for this thread.
pub fn cumulative_batch_norm() -> bool {
    CUMULATIVE_BATCH_NORM.with(Cell::get)
}

/// A tensor field is a parameter when it requires grad, else a persistent buffer
/// (mark non-persistent buffers with `#[state(buffer, persistent = false)]`).
impl Traverse for Tensor {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        let kind = if self.requires_grad() {
            TensorKind::Parameter
        } else {
            TensorKind::Buffer { persistent: true }
        };
        f(prefix, self, kind);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        let kind = if self.requires_grad() {
            TensorKind::Parameter
        } else {
            TensorKind::Buffer { persistent: true }
        };
        f(prefix, self, kind);
    }
    fn is_tensor(&self) -> bool {
        true
    }
}

/// Implements Traverse for a struct from a list of `"name" => field` entries; a field may
/// be `Option<Tensor>` (left out when `None`).
macro_rules! traverse_fields {
    ($ty:ty { $($name:literal => $field:tt),* $(,)? }) => {
        impl Traverse for $ty {
            fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
                $( self.$field.visit(&join_name(prefix, $name), f); )*
            }
            fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
                $( self.$field.visit_mut(&join_name(prefix, $name), f); )*
            }
        }
    };
}

traverse_fields!(nn::Linear { "weight" => ws, "bias" => bs });
traverse_fields!(nn::Conv1D { "weight" => ws, "bias" => bs });
traverse_fields!(nn::Conv2D { "weight" => ws, "bias" => bs });
traverse_fields!(nn::Conv3D { "weight" => ws, "bias" => bs });
traverse_fields!(nn::ConvTranspose1D { "weight" => ws, "bias" => bs });
traverse_fields!(nn::ConvTranspose2D { "weight" => ws, "bias" => bs });
traverse_fields!(nn::ConvTranspose3D { "weight" => ws, "bias" => bs });
traverse_fields!(nn::LayerNorm { "weight" => ws, "bias" => bs });
traverse_fields!(nn::GroupNorm { "weight" => ws, "bias" => bs });
traverse_fields!(nn::Embedding { "weight" => ws });
/// tch's bare BatchNorm has no `num_batches_tracked` counter. So that its files have
/// PyTorch's keys (and a PyTorch checkpoint loads into it strictly), it reports a
/// `num_batches_tracked` buffer that always reads `0` and drops what is loaded into it.
/// PyTorch reads the counter only when `momentum=None`; use [`BatchNorm`] to count batches.
impl Traverse for nn::BatchNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        visit_batch_norm(self, prefix, f);
        let untracked = untracked_count(&self.running_mean);
        untracked.visit(&join_name(prefix, "num_batches_tracked"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        visit_batch_norm_mut(self, prefix, f);
        // A fresh tensor: a loaded (or moved) value lands in it and is dropped.
        let mut untracked = untracked_count(&self.running_mean);
        untracked.visit_mut(&join_name(prefix, "num_batches_tracked"), f);
    }
}

/// The four tensors tch's BatchNorm holds, in PyTorch's order.
fn visit_batch_norm(
    bn: &nn::BatchNorm,
    prefix: &str,
    f: &mut dyn FnMut(&str, &Tensor, TensorKind),
) {
    bn.ws.visit(&join_name(prefix, "weight"), f);
    bn.bs.visit(&join_name(prefix, "bias"), f);
    bn.running_mean.visit(&join_name(prefix, "running_mean"), f);
    bn.running_var.visit(&join_name(prefix, "running_var"), f);
}

/// Mutable counterpart of [`visit_batch_norm`].
fn visit_batch_norm_mut(
    bn: &mut nn::BatchNorm,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut Tensor, TensorKind),
) {
    bn.ws.visit_mut(&join_name(prefix, "weight"), f);
    bn.bs.visit_mut(&join_name(prefix, "bias"), f);
    bn.running_mean
        .visit_mut(&join_name(prefix, "running_mean"), f);
    bn.running_var
        .visit_mut(&join_name(prefix, "running_var"), f);
}

/// The `num_batches_tracked` of a tch BatchNorm: an int64 scalar 0 (a buffer) on its device.
fn untracked_count(like: &Tensor) -> Tensor {
    Tensor::zeros([], (Kind::Int64, like.device()))
}

impl<T: Traverse> Traverse for Option<T> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        if let Some(x) = self {
            x.visit(prefix, f);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        if let Some(x) = self {
            x.visit_mut(prefix, f);
        }
    }
    fn is_tensor(&self) -> bool {
        self.as_ref().is_some_and(|x| x.is_tensor())
    }
}

impl<T: Traverse + ?Sized> Traverse for Box<T> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        (**self).visit(prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        (**self).visit_mut(prefix, f);
    }
    fn is_tensor(&self) -> bool {
        (**self).is_tensor()
    }
}

/// Items are named by index, as `nn.ModuleList`: `blocks.0.weight`, `blocks.1.weight`.
impl<T: Traverse> Traverse for Vec<T> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        self.as_slice().visit(prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        self.as_mut_slice().visit_mut(prefix, f);
    }
}

/// Items are named by index, as `nn.ModuleList`.
impl<T: Traverse, const N: usize> Traverse for [T; N] {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        self.as_slice().visit(prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        self.as_mut_slice().visit_mut(prefix, f);
    }
}

/// Items are named by index.
impl<T: Traverse> Traverse for [T] {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (i, x) in self.iter().enumerate() {
            x.visit(&join_name(prefix, &i.to_string()), f);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        for (i, x) in self.iter_mut().enumerate() {
            x.visit_mut(&join_name(prefix, &i.to_string()), f);
        }
    }
}

/// Batch normalization with PyTorch's full state: `weight`, `bias`, `running_mean`,
/// `running_var` and the int64 scalar buffer `num_batches_tracked`, which every training
/// forward increments (as `nn.BatchNorm*d` does; it only matters there when `momentum=None`).
#[derive(Debug)]
pub struct BatchNorm {
    /// tch's layer, holding the affine parameters and running statistics.
    pub inner: nn::BatchNorm,
    /// Number of training batches seen (int64, shape `[]`).
    pub num_batches_tracked: Tensor,
    /// `eps` and `cudnn_enabled` of the layer's config (tch keeps its config private), for
    /// the cumulative updates of [`set_cumulative_batch_norm`].
    eps: f64,
    cudnn_enabled: bool,
}

impl BatchNorm {
    /// Creates the layer for `nd` spatial dims (1, 2 or 3) with `channels` features under `vs`.
    pub fn new(vs: &nn::Path, nd: usize, channels: i64, config: nn::BatchNormConfig) -> Self {
        let inner = match nd {
            1 => nn::batch_norm1d(vs, channels, config),
            3 => nn::batch_norm3d(vs, channels, config),
            _ => nn::batch_norm2d(vs, channels, config),
        };
        let num_batches_tracked = vs
            .zeros_no_train("num_batches_tracked", &[])
            .to_kind(Kind::Int64);
        BatchNorm {
            inner,
            num_batches_tracked,
            eps: config.eps,
            cudnn_enabled: config.cudnn_enabled,
        }
    }
}

impl Traverse for BatchNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        visit_batch_norm(&self.inner, prefix, f);
        self.num_batches_tracked
            .visit(&join_name(prefix, "num_batches_tracked"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        visit_batch_norm_mut(&mut self.inner, prefix, f);
        self.num_batches_tracked
            .visit_mut(&join_name(prefix, "num_batches_tracked"), f);
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            // Shares storage with the field, so the in-place add updates the buffer.
            let mut counter = self.num_batches_tracked.shallow_clone();
            tch::no_grad(|| {
                let _ = counter.g_add_scalar_(1);
            });
            if cumulative_batch_norm() {
                // PyTorch's momentum=None: exponential_average_factor = 1 / num_batches_tracked
                let n = self.num_batches_tracked.int64_value(&[]).max(1);
                let bn = &self.inner;
                return Tensor::batch_norm(
                    xs,
                    bn.ws.as_ref(),
                    bn.bs.as_ref(),
                    Some(&bn.running_mean),
                    Some(&bn.running_var),
                    true,
                    1.0 / n as f64,
                    self.eps,
                    self.cudnn_enabled,
                );
            }
        }
        self.inner.forward_t(xs, train)
    }
}

/// The weights of a multi-layer (bi)directional RNN, in PyTorch's order and names:
/// per layer, per direction: `weight_ih_l{k}{_reverse}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
/// `bias_hh_l{k}` (the same order as tch's and cuDNN's flat weights).
#[derive(Debug)]
pub struct RnnWeights {
    /// `(name, tensor)` in flat-weights order.
    pub weights: Vec<(String, Tensor)>,
    /// The configuration the weights were created with.
    pub config: nn::RNNConfig,
    /// Hidden size.
    pub hidden: i64,
}

impl RnnWeights {
    fn new(vs: &nn::Path, input: i64, hidden: i64, gates: i64, c: nn::RNNConfig) -> Self {
        let dirs = if c.bidirectional { 2 } else { 1 };
        let mut weights = Vec::new();
        for layer in 0..c.num_layers {
            for dir in 0..dirs {
                let in_dim = if layer == 0 { input } else { hidden * dirs };
                let sfx = if dir == 1 { "_reverse" } else { "" };
                let mut add = |name: String, shape: &[i64], init| {
                    let t = vs.var(&name, shape, init);
                    weights.push((name, t));
                };
                add(
                    format!("weight_ih_l{layer}{sfx}"),
                    &[gates * hidden, in_dim],
                    c.w_ih_init,
                );
                add(
                    format!("weight_hh_l{layer}{sfx}"),
                    &[gates * hidden, hidden],
                    c.w_hh_init,
                );
                if c.has_biases {
                    let b_ih = c.b_ih_init.unwrap_or(nn::Init::Const(0.));
                    let b_hh = c.b_hh_init.unwrap_or(nn::Init::Const(0.));
                    add(format!("bias_ih_l{layer}{sfx}"), &[gates * hidden], b_ih);
                    add(format!("bias_hh_l{layer}{sfx}"), &[gates * hidden], b_hh);
                }
            }
        }
        RnnWeights {
            weights,
            config: c,
            hidden,
        }
    }

    fn flat(&self) -> Vec<&Tensor> {
        self.weights.iter().map(|(_, t)| t).collect()
    }

    fn zeros(&self, batch: i64) -> Tensor {
        let dirs = if self.config.bidirectional { 2 } else { 1 };
        let (kind, device) = self
            .weights
            .first()
            .map_or((Kind::Float, tch::Device::Cpu), |(_, t)| {
                (t.kind(), t.device())
            });
        Tensor::zeros(
            [self.config.num_layers * dirs, batch, self.hidden],
            (kind, device),
        )
    }
}

impl Traverse for RnnWeights {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        for (n, t) in &self.weights {
            t.visit(&join_name(prefix, n), f);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        for (n, t) in &mut self.weights {
            t.visit_mut(&join_name(prefix, n), f);
        }
    }
}

/// An LSTM whose weights are traversable with PyTorch's names (tch's `nn::LSTM` keeps them
/// private). Same math as `torch.nn.LSTM`; `batch_first` follows the config (tch's default
/// is `true`, PyTorch's `false`), and inter-layer dropout applies when `config.train` is set
/// (tch's `RNN` trait has no training flag).
#[derive(Debug)]
pub struct Lstm(pub RnnWeights);

impl Lstm {
    /// Creates the layer's weights under `vs`.
    pub fn new(vs: &nn::Path, input: i64, hidden: i64, config: nn::RNNConfig) -> Self {
        Lstm(RnnWeights::new(vs, input, hidden, 4, config))
    }
}

impl nn::RNN for Lstm {
    type State = nn::LSTMState;
    fn zero_state(&self, batch_dim: i64) -> nn::LSTMState {
        let z = self.0.zeros(batch_dim);
        nn::LSTMState((z.shallow_clone(), z))
    }
    fn step(&self, input: &Tensor, state: &nn::LSTMState) -> nn::LSTMState {
        self.seq_init(&input.unsqueeze(1), state).1
    }
    fn seq_init(&self, input: &Tensor, state: &nn::LSTMState) -> (Tensor, nn::LSTMState) {
        let nn::LSTMState((h, c)) = state;
        let c_ = &self.0.config;
        let (out, h, c) = input.lstm(
            &[h, c],
            &self.0.flat(),
            c_.has_biases,
            c_.num_layers,
            c_.dropout,
            c_.train,
            c_.bidirectional,
            c_.batch_first,
        );
        (out, nn::LSTMState((h, c)))
    }
}

/// A GRU whose weights are traversable with PyTorch's names.
#[derive(Debug)]
pub struct Gru(pub RnnWeights);

impl Gru {
    /// Creates the layer's weights under `vs`.
    pub fn new(vs: &nn::Path, input: i64, hidden: i64, config: nn::RNNConfig) -> Self {
        Gru(RnnWeights::new(vs, input, hidden, 3, config))
    }
}

impl nn::RNN for Gru {
    type State = nn::GRUState;
    fn zero_state(&self, batch_dim: i64) -> nn::GRUState {
        nn::GRUState(self.0.zeros(batch_dim))
    }
    fn step(&self, input: &Tensor, state: &nn::GRUState) -> nn::GRUState {
        self.seq_init(&input.unsqueeze(1), state).1
    }
    fn seq_init(&self, input: &Tensor, state: &nn::GRUState) -> (Tensor, nn::GRUState) {
        let c = &self.0.config;
        let (out, h) = input.gru(
            &state.0,
            &self.0.flat(),
            c.has_biases,
            c.num_layers,
            c.dropout,
            c.train,
            c.bidirectional,
            c.batch_first,
        );
        (out, nn::GRUState(h))
    }
}

traverse_fields!(Lstm { "" => 0 });
traverse_fields!(Gru { "" => 0 });

/// A layer a [`Sequential`] can hold: a forward pass and its tensors.
pub trait Layer: ModuleT + Traverse {}
impl<T: ModuleT + Traverse> Layer for T {}

/// A parameter-free step of a [`Sequential`] (an activation, a reshape).
pub struct FnLayer(Box<LayerFn>);

/// The function a [`FnLayer`] applies: `(input, train) -> output`.
pub type LayerFn = dyn Fn(&Tensor, bool) -> Tensor + Send;

impl std::fmt::Debug for FnLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnLayer")
    }
}

impl ModuleT for FnLayer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        (self.0)(xs, train)
    }
}

impl Traverse for FnLayer {
    fn visit(&self, _: &str, _: &mut dyn FnMut(&str, &Tensor, TensorKind)) {}
    fn visit_mut(&mut self, _: &str, _: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {}
}

/// `nn.Sequential` with its children visible: they are named `"0"`, `"1"`, ... by position,
/// functions included, so `[Linear, ReLU, Linear]` gives `0.weight`, `2.weight` as in PyTorch.
///
/// ```
/// use lightning_core::layers::Sequential;
/// use lightning_core::Traverse;
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let root = vs.root();
/// let seq = Sequential::new()
///     .add(tch::nn::linear(&root / 0, 4, 8, Default::default()))
///     .add_fn(|x| x.relu())
///     .add(tch::nn::linear(&root / 2, 8, 2, Default::default()));
/// let keys: Vec<String> = seq.state_dict().keys().cloned().collect();
/// assert_eq!(keys, ["0.weight", "0.bias", "2.weight", "2.bias"]);
/// ```
#[derive(Debug, Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
}

impl Sequential {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a layer (named as tch's `Sequential::add`).
    #[allow(clippy::should_implement_trait)]
    pub fn add<L: Layer + 'static>(mut self, layer: L) -> Self {
        self.layers.push(Box::new(layer));
        self
    }
    /// Appends a parameter-free function.
    pub fn add_fn(self, f: impl Fn(&Tensor) -> Tensor + Send + 'static) -> Self {
        self.add(FnLayer(Box::new(move |x, _| f(x))))
    }
    /// Appends a parameter-free function that depends on training mode (dropout).
    pub fn add_fn_t(self, f: impl Fn(&Tensor, bool) -> Tensor + Send + 'static) -> Self {
        self.add(FnLayer(Box::new(f)))
    }
    /// The number of children.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// Whether there are no children.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl ModuleT for Sequential {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut it = self.layers.iter();
        let Some(first) = it.next() else {
            return xs.shallow_clone();
        };
        it.fold(first.forward_t(xs, train), |x, l| l.forward_t(&x, train))
    }
}

impl Traverse for Sequential {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor, TensorKind)) {
        self.layers.visit(prefix, f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor, TensorKind)) {
        self.layers.visit_mut(prefix, f);
    }
}
