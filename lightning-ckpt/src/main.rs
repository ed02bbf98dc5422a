//! `lightning-ckpt`: inspect, convert and diff Lightning `.ckpt` and `.safetensors` files.
//!
//! ```text
//! lightning-ckpt inspect FILE [--json] [--values]
//! lightning-ckpt convert IN OUT        # by extension: .ckpt/.pt/.pth <-> .safetensors
//! lightning-ckpt diff A B [--atol X] [--ignore PATH]...   # exit 0 same, 1 different, 2 error
//! ```
//!
//! `inspect --json` prints one object (schema version 1):
//! `{"schema": 1, "file", "format": "ckpt"|"safetensors", "keys": [top-level keys],
//!   "epoch", "global_step", "pytorch_lightning_version", "hparams_name", "hyper_parameters"
//!   (JSON of the dict, or null), "tensors": [{"path", "dtype", "shape", "numel", "sum",
//!   "values"?}]}`. Paths join dict keys and list indices with dots
//! (`optimizer_states.0.state.0.exp_avg`); dtypes use torch's names (`float32`, `bfloat16`);
//! `sum` is computed in float64; non-finite numbers are the strings `"nan"`, `"inf"`, `"-inf"`;
//! `values` (with `--values`) is the row-major flattened tensor as float64. Complex tensors
//! give `sum` as `[real, imag]` and `values` as `[real, imag]` pairs; dtypes tch lacks
//! (`uint16`, `uint32`, `uint64`, `float8_e8m0fnu`) are read from their bytes (`sum` is null
//! for bit-packed dtypes). Sparse tensors add `"layout"` and `"nnz"` (`sum` over the stored
//! values; `indices`/`values` with `--values`), quantized ones `"qscheme"` and `"scale"`,
//! `"zero_point"` (per tensor) or `"scales"`, `"zero_points"`, `"axis"` (per channel), with
//! `sum` over the integers; meta tensors `"device": "meta"` and no sum or values.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lightning_core::checkpoint::{self, dcp, safetensors};
use lightning_core::value::{dtype_name as torch_dtype, TorchObject};
use lightning_core::{Key, Value};
use serde_json::{json, Value as J};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "lightning-ckpt",
    version,
    about = "Inspect, convert and diff Lightning checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show format, top-level keys, epoch/step, hyperparameters and every tensor.
    Inspect {
        /// A `.ckpt` (torch.save zip) or `.safetensors` file, or a sharded checkpoint
        /// directory (`torch.distributed.checkpoint`, Lightning's FSDP layout).
        file: PathBuf,
        /// Machine-readable JSON (schema in the crate docs and README).
        #[arg(long)]
        json: bool,
        /// Also print every tensor's values, flattened.
        #[arg(long)]
        values: bool,
    },
    /// Convert between `.ckpt` and `.safetensors` (chosen by the output's extension).
    Convert {
        /// Input file.
        input: PathBuf,
        /// Output file; `.safetensors` exports weights + hparams, anything else writes a `.ckpt`.
        output: PathBuf,
    },
    /// A sharded checkpoint directory as one `.ckpt` (Lightning's `consolidate_checkpoint`),
    /// written to `DIR.consolidated` unless an output is given.
    Consolidate {
        /// The directory (a DCP part, and Lightning's `meta.pt` if any).
        dir: PathBuf,
        /// Output file.
        output: Option<PathBuf>,
    },
    /// Compare two files: per-tensor max abs difference, values and keys only in one.
    Diff {
        /// First file.
        a: PathBuf,
        /// Second file.
        b: PathBuf,
        /// Largest absolute difference still counted as equal.
        #[arg(long, default_value_t = 0.0)]
        atol: f64,
        /// A key path to leave out of the comparison, with everything under it (repeatable),
        /// e.g. `--ignore lightning_rs.train_time_s` for the wall-clock time a resumed run
        /// and a straight run never share.
        #[arg(long, value_name = "PATH")]
        ignore: Vec<String>,
    },
}

fn is_safetensors(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "safetensors")
}

/// Loads either format into a checkpoint-shaped value tree.
fn load_any(p: &Path) -> Result<Value> {
    let v = if is_safetensors(p) {
        safetensors::import(p)?
    } else if dcp::lightning::is_sharded_checkpoint(p) {
        dcp::lightning::load(p)?
    } else {
        checkpoint::load(p)?
    };
    Ok(v)
}

/// torch's name for a dtype.
fn dtype_name(k: Kind) -> String {
    torch_dtype(k).to_owned()
}

fn num(x: f64) -> J {
    serde_json::Number::from_f64(x).map_or_else(
        || {
            J::String(if x.is_nan() {
                "nan".into()
            } else if x > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            })
        },
        J::Number,
    )
}

/// JSON for any value, through [`Value`]'s serde impl after giving the report's forms to what
/// it has none for: tensors become `{"tensor": {"dtype", "shape"}}` and non-finite floats the
/// strings `"nan"`, `"inf"`, `"-inf"` (serde_json would write `null`).
fn to_json(v: &Value) -> J {
    let v = v.rewrite(&mut |x| match x {
        Value::Float(f) if !f.is_finite() => Some(Value::Str(num(*f).as_str()?.to_owned())),
        Value::BigInt(i) => Some(Value::Str(i.to_string())),
        Value::Complex(re, im) => {
            let part = |x: f64| match num(x) {
                J::String(s) => Value::Str(s),
                _ => Value::Float(x),
            };
            Some(Value::List(vec![part(*re), part(*im)]))
        }
        Value::Torch(o) => {
            let mut o2 = Value::dict();
            o2.insert("torch", o.describe());
            Some(o2)
        }
        Value::Tensor(t) => {
            let mut desc = Value::dict();
            desc.insert("dtype", dtype_name(t.kind()));
            desc.insert("shape", t.size());
            let mut o = Value::dict();
            o.insert("tensor", desc);
            Some(o)
        }
        _ => None,
    });
    // Cannot fail: no tensors are left and every key is a string or an int.
    serde_json::to_value(&v).unwrap_or(J::Null)
}

/// As float64; a complex tensor as its `[..., 2]` real view.
fn as_f64(t: &Tensor) -> Result<Tensor> {
    let t = if t.is_complex() {
        t.f_view_as_real()?
    } else {
        t.shallow_clone()
    };
    Ok(t.f_to_kind(Kind::Double)?)
}

/// The sum; a complex tensor's as `[real, imag]`.
fn tensor_sum(t: &Tensor) -> Result<J> {
    let d = as_f64(t)?;
    if t.is_complex() {
        let parts = d
            .f_view([-1, 2])?
            .f_sum_dim_intlist(0, false, Kind::Double)?;
        let v = Vec::<f64>::try_from(&parts)?;
        return Ok(J::Array(v.into_iter().map(num).collect()));
    }
    Ok(num(d.f_sum(Kind::Double)?.f_double_value(&[])?))
}

fn tensor_values(t: &Tensor) -> Result<J> {
    let flat = as_f64(t)?.f_contiguous()?.f_view([-1])?;
    let v = Vec::<f64>::try_from(&flat)?;
    Ok(if t.is_complex() {
        J::Array(
            v.chunks(2)
                .map(|p| J::Array(p.iter().map(|&x| num(x)).collect()))
                .collect(),
        )
    } else {
        J::Array(v.into_iter().map(num).collect())
    })
}

/// The report row of a dense tch tensor.
fn dense_row(path: &str, t: &Tensor, values: bool) -> Result<J> {
    let mut o = json!({
        "path": path,
        "dtype": dtype_name(t.kind()),
        "shape": t.size(),
        "numel": t.numel(),
        "sum": tensor_sum(t)?,
    });
    if values {
        o["values"] = tensor_values(t)?;
    }
    Ok(o)
}

/// The report row of a tensor tch has no dense form for.
fn object_row(path: &str, o: &TorchObject, values: bool) -> Result<Option<J>> {
    let part = |v: &Value| -> Result<J> {
        match v {
            Value::Tensor(t) => dense_row(path, t, values),
            other => Ok(to_json(other)),
        }
    };
    let row = match o {
        TorchObject::Raw(r) => {
            let numel: i64 = r.size.iter().product();
            let vals = r.to_f64()?;
            let mut row = json!({
                "path": path, "dtype": r.dtype, "shape": r.size, "numel": numel,
                "sum": vals.as_ref().map_or(J::Null, |v| num(v.iter().sum())),
            });
            if values {
                row["values"] =
                    vals.map_or(J::Null, |v| J::Array(v.into_iter().map(num).collect()));
            }
            row
        }
        TorchObject::Sparse { layout, data } => {
            let (idx, vals, size) = if layout == "sparse_coo" {
                (data.get(..1).unwrap_or(&[]), data.get(1), data.get(2))
            } else {
                (data.get(..2).unwrap_or(&[]), data.get(2), data.get(3))
            };
            let vt = vals.and_then(Value::as_tensor);
            let mut row = json!({
                "path": path, "layout": layout,
                "dtype": vt.map(|t| dtype_name(t.kind())),
                "shape": size.map_or(J::Null, to_json),
                "nnz": vt.map(|t| t.size().first().copied().unwrap_or(0)),
                "sum": match vt { Some(t) => tensor_sum(t)?, None => J::Null },
            });
            if values {
                row["indices"] = J::Array(idx.iter().map(part).collect::<Result<_>>()?);
                row["values"] = vals.map(part).transpose()?.unwrap_or(J::Null);
            }
            row
        }
        TorchObject::Quantized(q) => {
            let t = &q.int_repr;
            let mut row = json!({
                "path": path, "dtype": q.dtype, "qscheme": q.qscheme, "shape": t.size(),
                "numel": t.numel(), "sum": tensor_sum(t)?,
            });
            let names: &[&str] = if q.qscheme.starts_with("per_tensor") {
                &["scale", "zero_point"]
            } else {
                &["scales", "zero_points", "axis"]
            };
            for (n, p) in names.iter().zip(&q.params) {
                row[*n] = match p {
                    Value::Tensor(t) => tensor_values(t)?,
                    other => to_json(other),
                };
            }
            if values {
                row["values"] = tensor_values(t)?;
            }
            row
        }
        TorchObject::Meta {
            dtype,
            size,
            stride,
            ..
        } => json!({
            "path": path, "device": "meta", "dtype": dtype, "shape": size, "stride": stride,
            "numel": size.iter().product::<i64>(),
        }),
        TorchObject::Nested { parts } => {
            let buf = parts.first().and_then(Value::as_tensor);
            let sizes = parts.get(1).and_then(Value::as_tensor);
            let mut row = json!({
                "path": path, "layout": "nested",
                "dtype": buf.map(|t| dtype_name(t.kind())),
                "tensors": sizes.map(|t| t.size().first().copied().unwrap_or(0)),
                "sum": match buf { Some(t) => tensor_sum(t)?, None => J::Null },
            });
            if values {
                row["parts"] = J::Array(parts.iter().map(part).collect::<Result<_>>()?);
            }
            row
        }
        TorchObject::Layout(_) | TorchObject::Global(_) | TorchObject::Device(_) => {
            return Ok(None)
        }
    };
    Ok(Some(row))
}

fn inspect(file: &Path, as_json: bool, values: bool) -> Result<()> {
    let v = load_any(file)?;
    let format = if is_safetensors(file) {
        "safetensors"
    } else if dcp::lightning::is_sharded_checkpoint(file) {
        "sharded"
    } else {
        "ckpt"
    };
    let mut all = vec![];
    leaves(&v, String::new(), &mut all);
    let mut tensors = Vec::new();
    for (path, x) in &all {
        let row = match x {
            Value::Tensor(t) => Some(dense_row(path, t, values)),
            Value::Torch(o) => object_row(path, o, values).transpose(),
            _ => None,
        };
        if let Some(row) = row {
            tensors.push(row.with_context(|| format!("tensor {path}"))?);
        }
    }
    let keys: Vec<String> = v
        .as_dict()
        .map(|d| d.keys().map(Key::to_string).collect())
        .unwrap_or_default();
    let get = |k: &str| v.get(k).map_or(J::Null, to_json);
    let report = json!({
        "schema": 1,
        "file": file.display().to_string(),
        "format": format,
        "keys": keys,
        "epoch": get("epoch"),
        "global_step": get("global_step"),
        "pytorch_lightning_version": get("pytorch-lightning_version"),
        "hparams_name": get("hparams_name"),
        "hyper_parameters": get("hyper_parameters"),
        "tensors": tensors,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("file: {}", file.display());
    println!("format: {format}");
    println!("keys: {}", keys.join(", "));
    for k in [
        "epoch",
        "global_step",
        "pytorch_lightning_version",
        "hparams_name",
    ] {
        if !report[k].is_null() {
            println!("{k}: {}", report[k]);
        }
    }
    if !report["hyper_parameters"].is_null() {
        println!("hyper_parameters: {}", report["hyper_parameters"]);
    }
    println!("tensors ({}):", tensors.len());
    for t in &tensors {
        println!(
            "  {}  {}  {}  sum={}",
            t["path"].as_str().unwrap_or_default(),
            t["dtype"].as_str().unwrap_or_default(),
            t["shape"],
            t["sum"]
        );
        if let Some(vals) = t.get("values") {
            println!("    values={vals}");
        }
    }
    Ok(())
}

fn convert(input: &Path, output: &Path) -> Result<()> {
    let v = load_any(input)?;
    if is_safetensors(output) {
        safetensors::export(output, &v)?;
    } else {
        checkpoint::save(output, &v)?;
    }
    let mut n = 0;
    v.visit_tensors("", &mut |_, _| n += 1);
    let mut all = vec![];
    leaves(&v, String::new(), &mut all);
    n += all
        .iter()
        .filter(|(_, x)| matches!(x, Value::Torch(o) if !matches!(**o, TorchObject::Layout(_) | TorchObject::Global(_) | TorchObject::Device(_))))
        .count();
    println!("wrote {} ({n} tensors)", output.display());
    Ok(())
}

/// Every leaf of the tree (tensors and scalars) by dotted path.
fn leaves<'a>(v: &'a Value, prefix: String, out: &mut Vec<(String, &'a Value)>) {
    let join = |k: String| {
        if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            for (i, x) in items.iter().enumerate() {
                leaves(x, join(i.to_string()), out);
            }
        }
        Value::Dict(d) | Value::OrderedDict(d) | Value::Counter(d) => {
            for (k, x) in d {
                leaves(x, join(k.to_string()), out);
            }
        }
        _ => out.push((prefix, v)),
    }
}

/// Prints the differences; returns whether the files differ.
fn diff(a: &Path, b: &Path, atol: f64, ignore: &[String]) -> Result<bool> {
    let (va, vb) = (load_any(a)?, load_any(b)?);
    let (mut la, mut lb) = (vec![], vec![]);
    leaves(&va, String::new(), &mut la);
    leaves(&vb, String::new(), &mut lb);
    // `x` leaves out `x` and `x.*`, not `xy`.
    let ignored = |path: &str| {
        ignore.iter().any(|i| {
            path.strip_prefix(i.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    };
    la.retain(|(p, _)| !ignored(p));
    lb.retain(|(p, _)| !ignored(p));
    let mb: std::collections::HashMap<_, _> = lb.iter().cloned().collect();
    let ma: std::collections::HashMap<_, _> = la.iter().cloned().collect();
    let mut differ = false;
    for (path, x) in &la {
        let Some(y) = mb.get(path) else {
            println!("only in {}: {path}", a.display());
            differ = true;
            continue;
        };
        match (x, y) {
            (Value::Tensor(s), Value::Tensor(t)) => {
                if s.kind() != t.kind() || s.size() != t.size() {
                    println!(
                        "{path}: {} {:?} vs {} {:?}",
                        dtype_name(s.kind()),
                        s.size(),
                        dtype_name(t.kind()),
                        t.size()
                    );
                    differ = true;
                    continue;
                }
                let (s, t) = (as_f64(s)?, as_f64(t)?);
                let both_nan = s.f_isnan()?.f_logical_and(&t.f_isnan()?)?;
                let d = (&s - &t).f_abs()?.f_masked_fill(&both_nan, 0.0)?;
                let max = if d.numel() == 0 {
                    0.0
                } else {
                    d.f_nan_to_num(f64::INFINITY, None, None)?
                        .f_max()?
                        .f_double_value(&[])?
                };
                if max > atol {
                    println!("{path}: max abs diff {max:e}");
                    differ = true;
                }
            }
            _ if x != y => {
                println!("{path}: {} vs {}", to_json(x), to_json(y));
                differ = true;
            }
            _ => {}
        }
    }
    for (path, _) in &lb {
        if !ma.contains_key(path) {
            println!("only in {}: {path}", b.display());
            differ = true;
        }
    }
    if !differ {
        println!("no differences");
    }
    Ok(differ)
}

/// `lightning-ckpt: what: cause: cause`, each cause once (a checkpoint error's text already
/// ends with the OS error it carries as its source).
fn error_text(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.ends_with(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

fn main() {
    // Output piped into `head` ends quietly, as other command-line tools do.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Inspect { file, json, values } => {
            inspect(file, *json, *values).with_context(|| format!("inspect {}", file.display()))
        }
        Cmd::Convert { input, output } => convert(input, output)
            .with_context(|| format!("convert {} -> {}", input.display(), output.display())),
        Cmd::Consolidate { dir, output } => {
            let out = output.clone().unwrap_or_else(|| {
                let mut s = dir.as_os_str().to_owned();
                s.push(".consolidated");
                PathBuf::from(s)
            });
            convert(dir, &out)
                .with_context(|| format!("consolidate {} -> {}", dir.display(), out.display()))
        }
        Cmd::Diff { a, b, atol, ignore } => match diff(a, b, *atol, ignore) {
            Ok(true) => std::process::exit(1),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("lightning-ckpt: {}", error_text(&e));
        std::process::exit(2);
    }
}
