//! The dynamic value tree shared by hyperparameters, `hparams.yaml` and checkpoint files.
//!
//! A Lightning checkpoint is a pickled Python dict; [`Value`] is the subset of Python values
//! that `torch.load(weights_only=True)` accepts: `None`, bools, ints (of any size), floats,
//! complex numbers, strings, bytes, bytearrays, lists, tuples, sets, dicts (string or int keys,
//! insertion-ordered), `OrderedDict`s, `Counter`s, `torch.Size`s, tensors, and the torch
//! objects tch has no type for ([`TorchObject`]).
//!
//! - `tree.rs`: [`Value`], [`Key`], [`Dict`], and the torch objects inside a tree
//!   ([`TorchObject`], [`QTensor`]);
//! - `torch.rs`: what tch has no type for ([`BigInt`], [`RawTensor`]) and torch's dtype names;
//! - `serde.rs`: the serde data model (YAML, JSON).

mod serde;
mod torch;
mod tree;

pub use torch::{dtype_entry, dtype_name, BigInt, RawTensor, DTYPES};
pub use tree::{tensor_placeholder, tensors_equal, Dict, Key, QTensor, TorchObject, Value};
