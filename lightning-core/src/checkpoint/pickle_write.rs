//! Protocol-2 pickle emitter for [`Value`] trees, using only the opcodes and globals that
//! `torch.load(weights_only=True)` accepts (DESIGN §3), laid out as `torch.save` does.

use crate::value::TorchObject;
use crate::value::{Key, Value};
use std::collections::HashMap;
use tch::Tensor;

/// Deepest container nesting the writer emits (the reader accepts the same).
pub const MAX_DEPTH: usize = 100;

/// Where a tensor's data lives in the archive: the persistent id and the view's geometry.
#[derive(Clone, Debug)]
pub struct TensorRef {
    /// Storage class name: in module `torch` (`FloatStorage`, ...), or `UntypedStorage` (in
    /// `torch.storage`) when `v3_dtype` is set.
    pub storage_type: &'static str,
    /// The dtype, for tensors written through `_rebuild_tensor_v3` (no legacy storage class).
    pub v3_dtype: Option<&'static str>,
    /// Record key under `data/`.
    pub key: String,
    /// Elements in the whole storage.
    pub storage_numel: i64,
    /// Offset of the view in elements.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides in elements.
    pub stride: Vec<i64>,
}

// Opcodes (all accepted by torch's weights_only unpickler).
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const GLOBAL: u8 = b'c';
const REDUCE: u8 = b'R';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const EMPTY_TUPLE: u8 = b')';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const BINPERSID: u8 = b'Q';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';

/// Items per APPENDS/SETITEMS batch, as Python's pickler.
const BATCH: usize = 1000;

struct Emitter<'a> {
    out: Vec<u8>,
    memo: HashMap<String, u32>,
    tensor: &'a mut dyn FnMut(&Tensor) -> Result<TensorRef, String>,
}

/// Serializes `v` (with tensors described by `tensor`) into a protocol-2 pickle.
pub fn write_pickle(
    v: &Value,
    tensor: &mut dyn FnMut(&Tensor) -> Result<TensorRef, String>,
) -> Result<Vec<u8>, String> {
    let mut e = Emitter {
        out: vec![PROTO, 2],
        memo: HashMap::new(),
        tensor,
    };
    e.value(v, "", 0)?;
    e.out.push(STOP);
    Ok(e.out)
}

impl Emitter<'_> {
    fn put(&mut self, id: u32) {
        if id < 256 {
            self.out.extend_from_slice(&[BINPUT, id as u8]);
        } else {
            self.out.push(LONG_BINPUT);
            self.out.extend_from_slice(&id.to_le_bytes());
        }
    }

    /// A global (or a memoized string) emitted once, fetched with BINGET afterwards.
    fn memoized(&mut self, tag: &str, emit: impl FnOnce(&mut Vec<u8>)) {
        if let Some(&id) = self.memo.get(tag) {
            if id < 256 {
                self.out.extend_from_slice(&[BINGET, id as u8]);
            } else {
                self.out.push(LONG_BINGET);
                self.out.extend_from_slice(&id.to_le_bytes());
            }
            return;
        }
        emit(&mut self.out);
        let id = self.memo.len() as u32;
        self.memo.insert(tag.to_owned(), id);
        self.put(id);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.memoized(&format!("g:{module} {name}"), |out| {
            out.push(GLOBAL);
            out.extend_from_slice(module.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
        });
    }

    fn int(&mut self, i: i64) {
        if (0..256).contains(&i) {
            self.out.extend_from_slice(&[BININT1, i as u8]);
        } else if (0..65536).contains(&i) {
            self.out.push(BININT2);
            self.out.extend_from_slice(&(i as u16).to_le_bytes());
        } else if let Ok(i32v) = i32::try_from(i) {
            self.out.push(BININT);
            self.out.extend_from_slice(&i32v.to_le_bytes());
        } else {
            // Minimal two's-complement little-endian bytes.
            let bytes = i.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let last = bytes[n - 1];
                let prev_sign = bytes[n - 2] & 0x80;
                if (last == 0 && prev_sign == 0) || (last == 0xFF && prev_sign != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.out.extend_from_slice(&[LONG1, n as u8]);
            self.out.extend_from_slice(&bytes[..n]);
        }
    }

    fn str(&mut self, s: &str) -> Result<(), String> {
        let len = u32::try_from(s.len()).map_err(|_| "string longer than 4 GiB".to_owned())?;
        self.out.push(BINUNICODE);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn tuple_of_ints(&mut self, v: &[i64]) {
        match v.len() {
            0 => self.out.push(EMPTY_TUPLE),
            1..=3 => {
                for &x in v {
                    self.int(x);
                }
                self.out.push([TUPLE1, TUPLE2, TUPLE3][v.len() - 1]);
            }
            _ => {
                self.out.push(MARK);
                for &x in v {
                    self.int(x);
                }
                self.out.push(TUPLE);
            }
        }
    }

    fn ordered_dict_new(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[EMPTY_TUPLE, REDUCE]);
    }

    fn key(&mut self, k: &Key) -> Result<(), String> {
        match k {
            Key::Str(s) => self.str(s),
            Key::Int(i) => {
                self.int(*i);
                Ok(())
            }
        }
    }

    fn value(&mut self, v: &Value, at: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{at}: nested deeper than {MAX_DEPTH} levels"));
        }
        let child = |k: &dyn std::fmt::Display| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        match v {
            Value::None => self.out.push(NONE),
            Value::Bool(b) => self.out.push(if *b { NEWTRUE } else { NEWFALSE }),
            Value::Int(i) => self.int(*i),
            Value::Float(x) => {
                self.out.push(BINFLOAT);
                self.out.extend_from_slice(&x.to_be_bytes());
            }
            Value::Str(s) => self.str(s).map_err(|e| format!("{at}: {e}"))?,
            Value::Tuple(items) => {
                if items.is_empty() {
                    self.out.push(EMPTY_TUPLE);
                } else {
                    self.out.push(MARK);
                    for (i, x) in items.iter().enumerate() {
                        self.value(x, &child(&i), depth + 1)?;
                    }
                    self.out.push(TUPLE);
                }
            }
            Value::List(items) => {
                self.out.push(EMPTY_LIST);
                for (b, batch) in items.chunks(BATCH).enumerate() {
                    self.out.push(MARK);
                    for (i, x) in batch.iter().enumerate() {
                        self.value(x, &child(&(b * BATCH + i)), depth + 1)?;
                    }
                    self.out.push(APPENDS);
                }
            }
            Value::Dict(d) | Value::OrderedDict(d) => {
                if matches!(v, Value::OrderedDict(_)) {
                    self.ordered_dict_new();
                } else {
                    self.out.push(EMPTY_DICT);
                }
                let items: Vec<_> = d.iter().collect();
                for batch in items.chunks(BATCH) {
                    self.out.push(MARK);
                    for (k, x) in batch {
                        self.key(k)?;
                        self.value(x, &child(k), depth + 1)?;
                    }
                    self.out.push(SETITEMS);
                }
            }
            Value::Tensor(t) => {
                let r = (self.tensor)(t).map_err(|e| format!("{at}: {e}"))?;
                let v3 = r.v3_dtype;
                let f = if v3.is_some() {
                    "_rebuild_tensor_v3"
                } else {
                    "_rebuild_tensor_v2"
                };
                self.global("torch._utils", f);
                self.out.push(MARK);
                self.persistent_id(&r)?;
                self.int(r.offset);
                self.tuple_of_ints(&r.size);
                self.tuple_of_ints(&r.stride);
                self.out.push(NEWFALSE);
                self.ordered_dict_new();
                if let Some(d) = v3 {
                    self.global("torch", d);
                }
                self.out.extend_from_slice(&[TUPLE, REDUCE]);
            }
            Value::BigInt(i) => {
                let b = i.le_bytes();
                let n = u8::try_from(b.len()).map_err(|_| {
                    format!(
                        "{at}: an int of {} bytes (torch reads at most 255)",
                        b.len()
                    )
                })?;
                self.out.extend_from_slice(&[LONG1, n]);
                self.out.extend_from_slice(b);
            }
            Value::Complex(re, im) => {
                self.global("__builtin__", "complex");
                for x in [re, im] {
                    self.out.push(BINFLOAT);
                    self.out.extend_from_slice(&x.to_be_bytes());
                }
                self.out.extend_from_slice(&[TUPLE2, REDUCE]);
            }
            Value::Bytes(b) => self.bytes(b)?,
            Value::ByteArray(b) => {
                self.global("__builtin__", "bytearray");
                self.bytes(b)?;
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            Value::Size(dims) => {
                self.global("torch", "Size");
                self.tuple_of_ints(dims);
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            Value::Set(items) => {
                self.global("__builtin__", "set");
                self.value(&Value::List(items.clone()), at, depth)?;
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            Value::Counter(d) => {
                self.global("collections", "Counter");
                self.value(&Value::Dict(d.clone()), at, depth)?;
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            Value::Torch(o) => self.torch_object(o, at, depth)?,
        }
        Ok(())
    }

    /// `_codecs.encode(text, "latin1")`: how protocol 2 pickles `bytes`.
    fn bytes(&mut self, b: &[u8]) -> Result<(), String> {
        self.global("_codecs", "encode");
        let text: String = b.iter().map(|&c| char::from(c)).collect();
        self.str(&text)?;
        self.str("latin1")?;
        self.out.extend_from_slice(&[TUPLE2, REDUCE]);
        Ok(())
    }

    /// `('storage', <storage class>, key, 'cpu', numel)` BINPERSID.
    fn persistent_id(&mut self, r: &TensorRef) -> Result<(), String> {
        self.out.push(MARK);
        self.memoized("s:storage", |out| {
            out.push(BINUNICODE);
            out.extend_from_slice(&7u32.to_le_bytes());
            out.extend_from_slice(b"storage");
        });
        if r.v3_dtype.is_some() {
            self.global("torch.storage", "UntypedStorage");
        } else {
            self.global("torch", r.storage_type);
        }
        self.str(&r.key)?;
        self.memoized("s:cpu", |out| {
            out.push(BINUNICODE);
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(b"cpu");
        });
        self.int(r.storage_numel);
        self.out.extend_from_slice(&[TUPLE, BINPERSID]);
        Ok(())
    }

    fn bool(&mut self, b: bool) {
        self.out.push(if b { NEWTRUE } else { NEWFALSE });
    }

    /// `f(*args)` with `f` a `torch._utils` rebuild function.
    fn call_rebuild(
        &mut self,
        f: &str,
        args: &[&Value],
        at: &str,
        depth: usize,
    ) -> Result<(), String> {
        self.global("torch._utils", f);
        self.out.push(MARK);
        for a in args {
            self.value(a, at, depth + 1)?;
        }
        self.out.extend_from_slice(&[TUPLE, REDUCE]);
        Ok(())
    }

    fn layout(&mut self, name: &str) -> Result<(), String> {
        self.global("torch.serialization", "_get_layout");
        self.str(&format!("torch.{name}"))?;
        self.out.extend_from_slice(&[TUPLE1, REDUCE]);
        Ok(())
    }

    fn torch_object(&mut self, o: &TorchObject, at: &str, depth: usize) -> Result<(), String> {
        match o {
            TorchObject::Raw(raw) => {
                let mut r = (self.tensor)(&raw.storage).map_err(|e| format!("{at}: {e}"))?;
                let w = raw.itemsize as i64;
                if r.offset % w != 0 || r.storage_numel % w != 0 {
                    return Err(format!(
                        "{at}: {} storage is not element-aligned",
                        raw.dtype
                    ));
                }
                self.global("torch._utils", "_rebuild_tensor_v3");
                self.out.push(MARK);
                r.v3_dtype = Some("uint8");
                self.persistent_id(&r)?;
                self.int(raw.offset + r.offset / w);
                self.tuple_of_ints(&raw.size);
                self.tuple_of_ints(&raw.stride);
                self.bool(raw.requires_grad);
                self.ordered_dict_new();
                self.dtype(&raw.dtype, at)?;
                self.out.extend_from_slice(&[TUPLE, REDUCE]);
            }
            TorchObject::Quantized(q) => {
                let mut r = (self.tensor)(&q.int_repr).map_err(|e| format!("{at}: {e}"))?;
                r.storage_type = crate::checkpoint::pickle_read::quantized_storage_name(&q.dtype)
                    .ok_or_else(|| {
                    format!("{at}: quantized dtype {} has no storage", q.dtype)
                })?;
                self.global("torch._utils", "_rebuild_qtensor");
                self.out.push(MARK);
                self.persistent_id(&r)?;
                self.int(r.offset);
                self.tuple_of_ints(&r.size);
                self.tuple_of_ints(&r.stride);
                self.out.push(MARK);
                let scheme = crate::checkpoint::pickle_read::qscheme_name(&q.qscheme)
                    .ok_or_else(|| format!("{at}: unknown qscheme {}", q.qscheme))?;
                self.global("torch", scheme);
                for p in &q.params {
                    self.value(p, at, depth + 1)?;
                }
                self.out.push(TUPLE);
                self.bool(q.requires_grad);
                self.ordered_dict_new();
                self.out.extend_from_slice(&[TUPLE, REDUCE]);
            }
            TorchObject::Sparse { layout, data } => {
                self.global("torch._utils", "_rebuild_sparse_tensor");
                self.layout(layout)?;
                self.value(&Value::Tuple(data.clone()), at, depth + 1)?;
                self.out.extend_from_slice(&[TUPLE2, REDUCE]);
            }
            TorchObject::Meta {
                dtype,
                size,
                stride,
                requires_grad,
            } => {
                self.global("torch._utils", "_rebuild_meta_tensor_no_storage");
                self.out.push(MARK);
                self.dtype(dtype, at)?;
                self.tuple_of_ints(size);
                self.tuple_of_ints(stride);
                self.bool(*requires_grad);
                self.out.extend_from_slice(&[TUPLE, REDUCE]);
            }
            TorchObject::Nested { parts } => {
                let args: Vec<&Value> = parts.iter().collect();
                self.call_rebuild("_rebuild_nested_tensor", &args, at, depth)?;
            }
            TorchObject::Layout(l) => self.layout(l)?,
            TorchObject::Device(d) => {
                // torch.device("cuda:0"): what torch.device.__reduce__ rebuilds.
                self.global("torch", "device");
                self.str(d)?;
                self.out.extend_from_slice(&[TUPLE1, REDUCE]);
            }
            TorchObject::Global(g) => {
                let (m, n) = g
                    .rsplit_once('.')
                    .filter(|(m, n)| crate::checkpoint::pickle_read::is_allowed(m, n))
                    .ok_or_else(|| format!("{at}: global {g} is not allowlisted"))?;
                self.global(m, n);
            }
        }
        Ok(())
    }

    /// A dtype global (`torch.uint16`), checked against the allowlist.
    fn dtype(&mut self, name: &str, at: &str) -> Result<(), String> {
        if !crate::checkpoint::pickle_read::is_allowed("torch", name) {
            return Err(format!("{at}: unknown dtype {name}"));
        }
        self.global("torch", name);
        Ok(())
    }
}
