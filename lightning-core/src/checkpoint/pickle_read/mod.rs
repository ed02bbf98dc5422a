//! A pickle reader that never executes anything: a small VM over protocols 0-5's opcodes that
//! builds an arena of plain nodes, resolves globals against an allowlist (what
//! `torch.load(weights_only=True)` needs for checkpoints) and rejects every other global with
//! an error naming it. Memory is bounded by the pickle's length (one arena node per opcode),
//! nesting by [`MAX_DEPTH`], and copying (of shared, memoized containers into calls or into
//! the value tree) by a budget proportional to the pickle's length.

use super::error::CheckpointError;
use crate::value::{BigInt, TorchObject};
use crate::value::{Dict, Key, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Deepest container nesting accepted (real checkpoints nest fewer than 10 levels).
pub const MAX_DEPTH: usize = 100;
/// Most dimensions a tensor may have.
const MAX_DIMS: usize = 64;

mod dcp;
mod globals;
mod rebuild;

pub use dcp::{read_dcp_pickle, PyObj, DCP_GLOBALS};

pub use globals::{
    allowed_globals, is_allowed, qscheme_name, quantized_storage_name, storage_type_name,
};
use globals::{resolve_global, Glob, StorageClass};

type Id = usize;

#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(BigInt),
    Float(f64),
    Complex(f64, f64),
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    OrderedDict(Vec<(Id, Id)>),
    Counter(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Size(Vec<i64>),
    Global(Glob),
    Storage(&'static StorageClass, Tensor),
    Tensor(Tensor),
    Obj(TorchObject),
    /// An instance of one of `torch.distributed.checkpoint`'s metadata classes (only in
    /// [`read_dcp_pickle`]): its class, constructor arguments and `BUILD` state.
    Instance(&'static str, Vec<Id>, Option<Id>),
}

impl Node {
    fn type_name(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::Complex(..) => "complex",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::ByteArray(_) => "bytearray",
            Node::Counter(_) => "Counter",
            Node::Size(_) => "torch.Size",
            Node::Obj(_) => "torch object",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Dict(_) => "dict",
            Node::OrderedDict(_) => "OrderedDict",
            Node::Set(_) => "set",
            Node::Global(_) => "global",
            Node::Storage(..) => "storage",
            Node::Tensor(_) => "Tensor",
            Node::Instance(..) => "object",
        }
    }
}

/// Loads the storage `key` holding `numel` elements of `kind`, saved on `location` (torch's
/// location tag: `"cpu"`, `"cuda:0"`, ...).
pub type StorageFn<'a> = dyn FnMut(&str, Kind, i64, &str) -> Result<Tensor, CheckpointError> + 'a;

struct Vm<'a, 'b> {
    data: &'a [u8],
    pos: usize,
    path: PathBuf,
    arena: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    storages: HashMap<String, (&'static StorageClass, Tensor)>,
    /// Elements that may still be copied (memo references make copies cheap to request).
    budget: std::cell::Cell<usize>,
    load: &'a mut StorageFn<'b>,
    /// Whether DCP's metadata classes ([`DCP_GLOBALS`]) are allowed too.
    dcp: bool,
}

/// Runs the pickle `data` (from `path`, for error messages) and converts its result to a
/// [`Value`]; persistent ids name storages that `load` reads.
pub fn read_pickle(
    data: &[u8],
    path: &Path,
    load: &mut StorageFn<'_>,
) -> Result<Value, CheckpointError> {
    let mut vm = Vm::new(data, path, load, false);
    let root = vm.run()?;
    let mut budget = vm.budget.get();
    vm.convert(root, 0, &mut budget)
}

impl<'a, 'b> Vm<'a, 'b> {
    /// A VM over `data` (from `path`), reading storages with `load`; `dcp` also allows DCP's
    /// metadata classes.
    fn new(data: &'a [u8], path: &Path, load: &'a mut StorageFn<'b>, dcp: bool) -> Self {
        Vm {
            data,
            pos: 0,
            path: path.to_owned(),
            arena: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: HashMap::new(),
            budget: std::cell::Cell::new(data.len().saturating_mul(4).max(1 << 20)),
            load,
            dcp,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Format {
            path: self.path.clone(),
            msg: format!("data.pkl byte {}: {msg}", self.pos),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CheckpointError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(CheckpointError::Truncated {
                path: self.path.clone(),
                what: format!("pickle operand at byte {} of data.pkl", self.pos),
                needed: (self.pos as u64).saturating_add(n as u64),
                len: self.data.len() as u64,
            }),
        }
    }

    fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CheckpointError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<String, CheckpointError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated text operand"))?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| self.err("text operand is not UTF-8"))?
            .to_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: u64) -> Result<String, CheckpointError> {
        let n = usize::try_from(n).map_err(|_| self.err("string length overflow"))?;
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }

    fn push(&mut self, n: Node) {
        self.arena.push(n);
        self.stack.push(self.arena.len() - 1);
    }
    fn pop(&mut self) -> Result<Id, CheckpointError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&self) -> Result<Id, CheckpointError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Id>, CheckpointError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(m))
    }
    fn int_of(&self, id: Id, what: &str) -> Result<i64, CheckpointError> {
        match &self.arena[id] {
            Node::Int(i) => Ok(*i),
            Node::Bool(b) => Ok(*b as i64),
            n => Err(self.err(format!("{what}: expected int, found {}", n.type_name()))),
        }
    }
    /// Spends `n` of the copy budget.
    fn charge(&self, n: usize) -> Result<(), CheckpointError> {
        let left = self
            .budget
            .get()
            .checked_sub(n)
            .ok_or_else(|| CheckpointError::Limit {
                path: self.path.clone(),
                what: "the pickle copies shared containers too often (memory bomb)".into(),
            })?;
        self.budget.set(left);
        Ok(())
    }

    fn len_of(&self, id: Id) -> usize {
        match &self.arena[id] {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) => v.len(),
            Node::Dict(v) | Node::OrderedDict(v) | Node::Counter(v) => v.len(),
            _ => 0,
        }
    }

    fn ints_of(&self, id: Id, what: &str) -> Result<Vec<i64>, CheckpointError> {
        self.charge(self.len_of(id))?;
        match &self.arena[id] {
            Node::Tuple(v) | Node::List(v) => v.iter().map(|&i| self.int_of(i, what)).collect(),
            n => Err(self.err(format!("{what}: expected tuple, found {}", n.type_name()))),
        }
    }
    fn tuple_items(&self, id: Id, what: &str) -> Result<Vec<Id>, CheckpointError> {
        self.charge(self.len_of(id))?;
        match &self.arena[id] {
            Node::Tuple(v) => Ok(v.clone()),
            n => Err(self.err(format!("{what}: expected tuple, found {}", n.type_name()))),
        }
    }

    fn memo_put(&mut self, k: u64) -> Result<(), CheckpointError> {
        let t = self.top()?;
        self.memo.insert(k, t);
        Ok(())
    }
    fn memo_get(&mut self, k: u64) -> Result<(), CheckpointError> {
        let id = *self
            .memo
            .get(&k)
            .ok_or_else(|| self.err(format!("memo key {k} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), CheckpointError> {
        let dcp = || {
            DCP_GLOBALS
                .iter()
                .find(|g| g.strip_suffix(name).and_then(|m| m.strip_suffix('.')) == Some(module))
                .map(|g| Glob::Dcp(g))
        };
        match resolve_global(module, name).or_else(|| if self.dcp { dcp() } else { None }) {
            Some(g) => {
                self.push(Node::Global(g));
                Ok(())
            }
            None => Err(CheckpointError::DisallowedGlobal {
                path: self.path.clone(),
                global: format!("{module}.{name}"),
            }),
        }
    }

    fn extend(&mut self, target: Id, items: Vec<Id>) -> Result<(), CheckpointError> {
        match &mut self.arena[target] {
            Node::List(v) | Node::Set(v) => {
                v.extend(items);
                Ok(())
            }
            n => {
                let t = n.type_name();
                Err(self.err(format!("APPEND/ADDITEMS to a {t}")))
            }
        }
    }

    fn set_items(&mut self, target: Id, items: Vec<Id>) -> Result<(), CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let pairs = items.chunks(2).map(|p| (p[0], p[1]));
        match &mut self.arena[target] {
            Node::Dict(v) | Node::OrderedDict(v) | Node::Counter(v) => {
                v.extend(pairs);
                Ok(())
            }
            n => {
                let t = n.type_name();
                Err(self.err(format!("SETITEM(S) on a {t}")))
            }
        }
    }

    fn run(&mut self) -> Result<Id, CheckpointError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Node::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let big = BigInt::from_le_bytes(self.take(n)?);
                    match big.to_i128().and_then(|v| i64::try_from(v).ok()) {
                        Some(v) => self.push(Node::Int(v)),
                        None => self.push(Node::BigInt(big)),
                    }
                }
                b'I' | b'L' => {
                    let s = self.line()?;
                    let s = s.trim_end_matches('L');
                    let node = match s {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => Node::Int(s.parse().map_err(|_| self.err(format!("bad int {s:?}")))?),
                    };
                    self.push(node);
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Node::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s
                        .parse()
                        .map_err(|_| self.err(format!("bad float {s:?}")))?;
                    self.push(Node::Float(v));
                }
                b'X' => {
                    let n = self.u32()?;
                    let s = self.utf8(n.into())?;
                    self.push(Node::Str(s));
                }
                0x8c => {
                    let n = self.u8()?;
                    let s = self.utf8(n.into())?;
                    self.push(Node::Str(s));
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.utf8(n)?;
                    self.push(Node::Str(s));
                }
                b'T' | b'U' => {
                    // Python 2 str: bytes read as latin-1 text.
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let s = self.take(n)?.iter().map(|&c| c as char).collect();
                    self.push(Node::Str(s));
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = usize::try_from(n).map_err(|_| self.err("bytes length overflow"))?;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                b')' => self.push(Node::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(items));
                }
                b']' => self.push(Node::List(vec![])),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.extend(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.extend(l, items)?;
                }
                b'}' => self.push(Node::Dict(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Dict(vec![]));
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                0x8f => self.push(Node::Set(vec![])),
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.arena[module], &self.arena[name]) {
                        (Node::Str(m), Node::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?;
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let n = self.call(f, args)?;
                    self.push(n);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let f = self.pop()?;
                    if !matches!(&self.arena[kwargs], Node::Dict(v) if v.is_empty()) {
                        return Err(self.err("NEWOBJ_EX with keyword arguments"));
                    }
                    let n = self.call(f, args)?;
                    self.push(n);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    self.build(obj, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let n = self.persistent(pid)?;
                    self.push(n);
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(k.into())?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k.into())?;
                }
                b'g' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| self.err("bad GET key"))?;
                    self.memo_get(k)?;
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(k.into())?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k.into())?;
                }
                b'p' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| self.err("bad PUT key"))?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                _ => {
                    self.pos = at;
                    return Err(self.err(format!(
                        "unsupported pickle opcode 0x{op:02x} (not allowed by weights_only loading)"
                    )));
                }
            }
        }
    }
}
