//! Issue 15: the safe reader at parity with `torch.load(weights_only=True)`. Our allowlist is
//! torch's, name for name; files torch writes with every allowlisted family read here to the
//! values Python reads; and writing them back gives files Python reads to equal objects.

use crate::common;

use common::{assert_same, describe, python};
use lightning_core::checkpoint::{self, pickle_read, CheckpointError};

#[test]
fn allowlist_is_torch_weights_only_allowlist_name_for_name() {
    let Some(out) = python(
        "import torch._weights_only_unpickler as w\nprint(json.dumps(sorted(w._get_allowed_globals())))",
        &[],
    ) else {
        return;
    };
    let theirs: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    let mut ours = pickle_read::allowed_globals();
    ours.sort();
    assert_eq!(theirs.len(), 144, "torch 2.11's list");
    assert_eq!(ours, theirs);
    for g in &theirs {
        let (m, n) = g.rsplit_once('.').unwrap();
        assert!(pickle_read::is_allowed(m, n), "{g} refused");
    }
    // Aliases and neighbours that torch refuses are refused too.
    for g in [
        "builtins.frozenset",
        "torch.float",
        "torch.cfloat",
        "torch.sparse.BoolTensor",
        "torch.cuda.QInt8Storage",
        "torch._utils._rebuild_xla_tensor",
        "collections.defaultdict",
        "os.system",
    ] {
        let (m, n) = g.rsplit_once('.').unwrap();
        assert!(!pickle_read::is_allowed(m, n), "{g} accepted");
    }
}

/// One file per allowlisted family, written by torch.
const CORPUS: &str = r#"
import collections, warnings
warnings.filterwarnings("ignore")
d = sys.argv[1]
base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
files = {
    "hparams": {"hyper_parameters": {"s": {3, 1, 2}, "c": complex(1.5, -2), "size": torch.Size([2, 3]),
                "b": b"ab\xff\x00", "ba": bytearray(b"xy"), "cnt": collections.Counter(a=2, b=1),
                "big": 2**70, "neg": -(2**100), "dt": torch.float16,
                "dev": torch.device("cpu")}},
    "uint": {"u16": torch.tensor([1, 2, 65535]).to(torch.uint16),
             "u32": torch.tensor([[1, 4294967295], [7, 8]]).to(torch.uint32).t(),
             "u64": torch.tensor([2**40, 5]).to(torch.uint64)},
    "fp8": {n: torch.tensor([0.5, -2.0, 0.0]).to(getattr(torch, n)) for n in
            ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"]},
    "e8m0": {"x": torch.tensor([1.0, 4.0, 0.25]).to(torch.float8_e8m0fnu)},
    "complex": {"cf": torch.tensor([1 + 2j, -3.5j]), "cd": torch.tensor([[1 + 1j]], dtype=torch.complex128),
                "ch": torch.tensor([1 + 2j]).to(torch.complex32)},
    "sparse": {"coo": base.to_sparse(), "csr": base.to_sparse_csr()},
    "meta": {"m": torch.empty(2, 3, device="meta"), "mt": torch.empty(4, 2, device="meta", dtype=torch.int64).t()},
    "quantized": {"q": torch.quantize_per_tensor(torch.tensor([1.0, 2.0, 3.5]), 0.5, 1, torch.quint8),
                  "qi": torch.quantize_per_tensor(torch.tensor([-1.0, 2.0]), 0.25, 0, torch.qint8),
                  "qc": torch.quantize_per_channel(torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                        torch.tensor([0.5, 0.25]), torch.tensor([1, 2]), 0, torch.quint8)},
    "nested": {"n": torch.nested.nested_tensor([torch.ones(2), torch.arange(3.0)])},
    "layouts": {"l": torch.sparse_coo, "q": torch.per_channel_affine, "p": torch.nn.Parameter(base)},
}
out = {}
for name, obj in files.items():
    torch.save(obj, f"{d}/{name}.ckpt")
    out[name] = desc(torch.load(f"{d}/{name}.ckpt", weights_only=True))
print(json.dumps(out))
"#;

const RELOAD: &str = r#"
import warnings
warnings.filterwarnings("ignore")
out = {}
for p in sys.argv[1:]:
    out[p] = desc(torch.load(p, weights_only=True))
print(json.dumps(out))
"#;

#[test]
fn torch_files_of_every_family_read_like_python_and_write_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let Some(out) = python(CORPUS, &[d]) else {
        return;
    };
    let theirs: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let theirs = theirs.as_object().unwrap();
    let mut written = vec![];
    for (name, py) in theirs {
        let p = dir.path().join(format!("{name}.ckpt"));
        let v = checkpoint::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same(&describe(&v), py);
        let q = dir.path().join(format!("ours_{name}.ckpt"));
        checkpoint::save(&q, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            checkpoint::load(&q).unwrap() == v,
            "{name}: our file reads back different"
        );
        written.push((name.clone(), q.to_str().unwrap().to_owned()));
    }
    let args: Vec<&str> = written.iter().map(|(_, p)| p.as_str()).collect();
    let back = python(RELOAD, &args).expect("python ran above");
    let back: serde_json::Value = serde_json::from_str(back.trim()).unwrap();
    for (name, p) in &written {
        // Python reads our rewrite to the objects it read from its own file.
        assert_same(&back[p.as_str()], &theirs[name]);
    }
}

#[test]
fn a_global_outside_the_allowlist_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let script = r#"
import collections
torch.save({"d": collections.defaultdict(int)}, sys.argv[1] + "/dd.ckpt")
print("ok")
"#;
    if python(script, &[d]).is_none() {
        return;
    }
    let e = checkpoint::load(&dir.path().join("dd.ckpt")).unwrap_err();
    assert!(
        matches!(&e, CheckpointError::DisallowedGlobal { global, .. } if global == "collections.defaultdict"),
        "{e}"
    );
}
