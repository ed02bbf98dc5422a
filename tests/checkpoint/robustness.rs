//! Bad files and failing disks: the reader never panics and never allocates more than the file
//! justifies; a failed save removes its temporary file and leaves the old file intact.

use crate::common;

use lightning_core::checkpoint::zip_io::ZipWriter;
use lightning_core::checkpoint::{self, CheckpointError};
use lightning_core::{Dict, Key, Value};
use lightning_testkit::roles::failing_save::CHILD_ENV;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Counts this thread's live and peak heap bytes (Rust allocations; libtorch's tensor memory
/// is checked separately: a storage's size must equal its record's, which lies in the file).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| {
            c.set(c.get() + l.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(c.get())));
        });
        // SAFETY: forwarded as received; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get().saturating_sub(l.size())));
        // SAFETY: `p` came from `alloc` above, i.e. from `System`, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Loads `p` and returns the result with the peak extra heap bytes the load used.
fn load_measured(p: &Path) -> (Result<Value, CheckpointError>, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|c| c.set(base));
    let r = checkpoint::load(p);
    (r, PEAK.with(Cell::get) - base)
}

fn small_tree() -> Value {
    let base = Tensor::arange(20, (Kind::Float, Device::Cpu)).reshape([4, 5]);
    let mut sd = Dict::new();
    sd.insert("w".into(), base.shallow_clone().into());
    sd.insert("row".into(), base.get(1).into());
    sd.insert("b".into(), Tensor::from_slice(&[1i64, -2, 3]).into());
    sd.insert(
        "h".into(),
        Tensor::from_slice(&[0.5f32, 2.0])
            .to_kind(Kind::BFloat16)
            .into(),
    );
    sd.insert(
        "e".into(),
        Tensor::zeros([0], (Kind::Float, Device::Cpu)).into(),
    );
    let mut st = Dict::new();
    st.insert(Key::Int(0), Value::from(vec![1.5f64, 2.5]));
    let mut v = Value::dict();
    v.insert("epoch", 1i64);
    v.insert("global_step", 1i64 << 35);
    v.insert("state_dict", Value::OrderedDict(sd));
    v.insert("state", Value::Dict(st));
    v.insert("name", "ok");
    v.insert(
        "t",
        Value::Tuple(vec![Value::None, true.into(), 0.25.into()]),
    );
    v.insert("odd", odd_values());
    v
}

/// One of each value the allowlist added (issue 15), so mutations reach their opcodes and
/// rebuild functions: set, complex, bytes, bytearray, Size, Counter, a big int, `_v3` tensors
/// (float8, complex32, uint16 as raw bytes), sparse, quantized, meta and a layout.
fn odd_values() -> Value {
    use lightning_core::value::{BigInt, QTensor, RawTensor, TorchObject};
    let obj = |o| Value::Torch(Box::new(o));
    let mut cnt = Dict::new();
    cnt.insert("a".into(), 2i64.into());
    let raw = RawTensor {
        dtype: "uint16".into(),
        itemsize: 2,
        storage: Tensor::from_slice(&[1u8, 0, 0xFF, 0xFF]),
        offset: 0,
        size: vec![2],
        stride: vec![1],
        requires_grad: false,
    };
    let q = QTensor {
        dtype: "quint8".into(),
        int_repr: Tensor::from_slice(&[3u8, 5]),
        qscheme: "per_tensor_affine".into(),
        params: vec![0.5.into(), 1i64.into()],
        requires_grad: false,
    };
    let sparse = TorchObject::Sparse {
        layout: "sparse_coo".into(),
        data: vec![
            Tensor::from_slice(&[0i64, 1]).reshape([1, 2]).into(),
            Tensor::from_slice(&[1.5f32, -2.0]).into(),
            Value::Size(vec![3]),
            true.into(),
        ],
    };
    Value::List(vec![
        Value::Set(vec![1i64.into(), "x".into()]),
        Value::Complex(1.5, -2.0),
        Value::Bytes(vec![0, 0xFF, b'a']),
        Value::ByteArray(vec![7]),
        Value::Size(vec![2, 3]),
        Value::Counter(cnt),
        Value::BigInt(BigInt::from_le_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40])),
        Tensor::from_slice(&[0.5f32, -2.0])
            .to_kind(Kind::Float8e4m3fn)
            .into(),
        Tensor::from_slice(&[1.0f32, 2.0])
            .to_kind(Kind::ComplexHalf)
            .into(),
        obj(TorchObject::Raw(raw)),
        obj(TorchObject::Quantized(q)),
        obj(sparse),
        obj(TorchObject::Meta {
            dtype: "float32".into(),
            size: vec![2, 3],
            stride: vec![3, 1],
            requires_grad: false,
        }),
        obj(TorchObject::Layout("sparse_csr".into())),
        obj(TorchObject::Global("torch.bfloat16".into())),
        obj(TorchObject::Device("cuda:1".into())),
    ])
}

fn valid_file(dir: &Path) -> (PathBuf, Vec<u8>, Value) {
    let p = dir.join("valid.ckpt");
    let v = small_tree();
    checkpoint::save(&p, &v).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    (p, bytes, v)
}

/// A file-level mutation of a valid checkpoint.
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    Huge(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..100_000).prop_map(Mutation::Truncate),
        prop::collection::vec((0usize..100_000, 0u8..8), 1..6).prop_map(Mutation::Flip),
        (
            0usize..100_000,
            prop_oneof![
                Just(u32::MAX),
                Just(0x7FFF_FFF0),
                Just(1 << 31),
                any::<u32>()
            ]
        )
            .prop_map(|(at, v)| Mutation::Huge(at, v)),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match m {
        Mutation::Truncate(n) => b.truncate(n % b.len()),
        Mutation::Flip(flips) => {
            for (at, bit) in flips {
                let i = at % b.len();
                b[i] ^= 1 << bit;
            }
        }
        Mutation::Huge(at, v) => {
            let i = at % (b.len() - 4);
            b[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// Heap a load may use: a few times the file, plus a constant.
fn alloc_bound(file_len: usize) -> usize {
    16 * file_len + (1 << 20)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Damaged files: an error, or (when the damage hit only padding or unused fields) exactly
    /// the original tree; never a panic, never a large allocation.
    #[test]
    fn mutated_files_error_or_load_exactly(m in mutation()) {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes, v) = valid_file(dir.path());
        let q = dir.path().join("mutated.ckpt");
        std::fs::write(&q, apply(&bytes, &m)).unwrap();
        let (r, peak) = load_measured(&q);
        prop_assert!(peak <= alloc_bound(bytes.len()), "{m:?}: {peak} bytes");
        let verified = checkpoint::verify(&q);
        prop_assert_eq!(r.is_ok(), verified.is_ok(), "load {:?} vs verify {:?}", r.as_ref().err(), verified);
        if let Ok(got) = r {
            prop_assert_eq!(got, v);
        }
    }

    /// Hostile pickles inside a well-formed zip (valid CRCs): truncated, bit-flipped, with
    /// huge lengths, with globals spliced in, or nested deeply. No panic, bounded memory.
    #[test]
    fn hostile_pickles_never_panic(
        m in mutation(),
        global in prop_oneof![Just("os\nsystem\n"), Just("builtins\neval\n"),
                              Just("torch\nload\n"), Just("collections\nOrderedDict\n")],
        depth in 0usize..400,
        nest in prop_oneof![Just(b']'), Just(b'}'), Just(b')'), Just(0x8fu8)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes, _) = valid_file(dir.path());
        let zip = checkpoint::zip_io::ZipReader::open(&dir.path().join("valid.ckpt")).unwrap();
        let pickle = zip.read_record("data.pkl", true).unwrap();
        let mut pk = apply(&pickle, &m);
        // Splice a GLOBAL and a nest of containers at the start, after PROTO.
        let mut prefix = b"\x80\x02".to_vec();
        prefix.extend(std::iter::repeat_n(nest, depth));
        if nest == b']' {
            prefix.extend(std::iter::repeat_n(b'a', depth.saturating_sub(1)));
            prefix.extend(std::iter::repeat_n(b'0', depth.min(1)));
        } else {
            prefix.extend(std::iter::repeat_n(b'0', depth));
        }
        prefix.push(b'c');
        prefix.extend_from_slice(global.as_bytes());
        prefix.push(b'0');
        pk.splice(0..2.min(pk.len()), prefix);
        let q = dir.path().join("hostile.ckpt");
        let mut z = ZipWriter::new(std::fs::File::create(&q).unwrap());
        z.add("archive/data.pkl", &[&pk]).unwrap();
        for e in zip.entries().iter().filter(|e| !e.name.ends_with("data.pkl")) {
            let rel = e.name.strip_prefix("archive/").unwrap();
            let data = zip.read_record(rel, true).unwrap();
            z.add(&e.name, &[&data]).unwrap();
        }
        z.finish().unwrap();
        let (r, peak) = load_measured(&q);
        prop_assert!(peak <= alloc_bound(bytes.len()), "{peak} bytes");
        if global != "collections\nOrderedDict\n" {
            let is_global_error = matches!(r, Err(CheckpointError::DisallowedGlobal { .. }));
            prop_assert!(is_global_error, "{r:?}");
        }
    }

    /// Random bytes, with or without a zip signature in front.
    #[test]
    fn random_bytes_are_rejected(body in prop::collection::vec(any::<u8>(), 0..4096), pk in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("random.ckpt");
        let mut b = if pk { b"PK\x03\x04".to_vec() } else { vec![] };
        b.extend(body);
        std::fs::write(&q, &b).unwrap();
        let (r, peak) = load_measured(&q);
        prop_assert!(r.is_err());
        prop_assert!(peak <= alloc_bound(b.len()), "{peak} bytes");
    }
}

#[test]
fn python_written_bad_files_give_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let script = r#"
import collections
d = sys.argv[1]
torch.save({"c": collections.defaultdict(int)}, d + "/defaultdict.ckpt")
torch.save({"w": torch.arange(1000, dtype=torch.float32)}, d + "/good.ckpt")
b = open(d + "/good.ckpt", "rb").read()
open(d + "/truncated.ckpt", "wb").write(b[: len(b) // 2])
i = b.index(b"\x00\x00\x80\x3f")  # 1.0f32 inside data/0
open(d + "/badcrc.ckpt", "wb").write(b[:i] + b"\x00\x00\x80\xbf" + b[i + 4:])
open(d + "/random.ckpt", "wb").write(bytes(range(256)) * 8)
print("ok")
"#;
    if common::python(script, &[d]).is_none() {
        return;
    }
    let p = |n: &str| dir.path().join(n);
    let e = checkpoint::load(&p("defaultdict.ckpt")).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::DisallowedGlobal { global, .. } if global == "collections.defaultdict"),
        "{e}"
    );
    assert_eq!(
        checkpoint::load(&p("good.ckpt"))
            .unwrap()
            .get("w")
            .unwrap()
            .as_tensor()
            .unwrap()
            .size(),
        [1000]
    );
    let e = checkpoint::load(&p("truncated.ckpt")).unwrap_err();
    assert!(matches!(e, CheckpointError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated.ckpt"), "{e}");
    let e = checkpoint::load(&p("badcrc.ckpt")).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::Crc { record, .. } if record.ends_with("data/0")),
        "{e}"
    );
    assert!(e.to_string().contains("is corrupt"), "{e}");
    let e = checkpoint::load(&p("random.ckpt")).unwrap_err();
    assert!(e.to_string().contains("not a zip archive"), "{e}");
}

/// Runs `test-child failing-save` (src/bin/test-child.rs; the role is lightning_testkit::roles::failing_save) with `CHILD_ENV=mode:dir`, under a
/// time limit.
fn run_child(mode: &str, dir: &Path) -> std::process::Output {
    lightning_testkit::Supervised::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_test-child"))
            .arg("failing-save")
            .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        std::time::Duration::from_secs(60),
    )
    .wait_with_output()
}

fn old_file(dir: &Path) -> Vec<u8> {
    let p = dir.join("old.ckpt");
    checkpoint::save(&p, &small_tree()).unwrap();
    std::fs::read(p).unwrap()
}

fn assert_old_intact(dir: &Path, before: &[u8]) {
    assert_eq!(
        std::fs::read(dir.join("old.ckpt")).unwrap(),
        before,
        "old file changed"
    );
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["old.ckpt"], "temporary file left behind");
    assert_eq!(
        checkpoint::load(&dir.join("old.ckpt")).unwrap(),
        small_tree()
    );
}

#[test]
fn file_size_limit_reports_bytes_needed_and_keeps_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let before = old_file(dir.path());
    let out = run_child("fsize", dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("not enough space"), "{text}");
    assert!(text.contains("old.ckpt"), "{text}");
    let needed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("CHILD-NEEDED "))
        .expect("a NoSpace error")
        .trim()
        .parse()
        .unwrap();
    assert!(needed >= 1 << 20, "{needed}");
    assert_old_intact(dir.path(), &before);
}

#[test]
fn read_only_directory_names_the_path_and_keeps_old_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let before = old_file(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Non-root: make it read-only for us; root: the child drops to `nobody`.
    let ro = unsafe { libc::geteuid() } != 0;
    if ro {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let out = run_child("readonly", dir.path());
    if ro {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("CHILD-ERROR"), "{text}");
    assert!(
        text.contains(&dir.path().join("old.ckpt").display().to_string()),
        "{text}"
    );
    assert!(text.contains("ermission denied"), "{text}");
    assert_old_intact(dir.path(), &before);
}
