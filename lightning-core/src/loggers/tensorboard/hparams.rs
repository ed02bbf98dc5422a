//! Hyperparameters for TensorBoard's hparams plugin, as Lightning's
//! `TensorBoardLogger.log_hyperparams` prepares them (`_flatten_dict`, `_sanitize_params`)
//! and `torch.utils.tensorboard.summary.hparams` writes them: three summaries,
//! `_hparams_/experiment`, `_hparams_/session_start_info`, `_hparams_/session_end_info`.

use super::proto::{
    DataType, Experiment, HParamInfo, HParamsData, HParamsPluginData, HparamsEntry, Kind,
    MetricInfo, MetricName, PluginData, ProtoValue, SessionEndInfo, SessionStartInfo, Status,
    Summary, SummaryMetadata, SummaryValue,
};
use crate::pyfmt::{repr_float, repr_str};
use crate::value::{Key, Value};
use indexmap::IndexMap;
use prost::Message;

/// A hyperparameter as the hparams plugin stores it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum HpValue {
    /// A Python `bool`, `int` or `float` (torch writes bools as numbers too: `bool` is an
    /// `int` in Python, so its `isinstance(v, (int, float))` branch takes them).
    Number(f64),
    /// A `str`, or `str(v)` of anything else (`None` -> `"None"`, lists, tuples).
    Str(String),
}

/// Lightning's `_flatten_dict` then `_sanitize_params`: nested dicts become `a/b` keys, a
/// list of only dicts becomes `a/0/b` keys (an empty list, having only dicts, vanishes), and
/// what is not a bool, int, float, str or tensor becomes its Python `str()`.
pub(crate) fn flatten(params: &Value) -> IndexMap<String, HpValue> {
    let mut out = IndexMap::new();
    if let Some(d) = params.as_dict() {
        flatten_into(d.iter(), "", &mut out);
    }
    out
}

fn flatten_into<'a>(
    items: impl Iterator<Item = (&'a Key, &'a Value)>,
    parent: &str,
    out: &mut IndexMap<String, HpValue>,
) {
    for (k, v) in items {
        let key = match parent {
            "" => k.to_string(),
            p => format!("{p}/{k}"),
        };
        if let Some(d) = v.as_dict() {
            flatten_into(d.iter(), &key, out);
        } else if let Value::List(items) = v {
            if items.iter().all(|i| i.as_dict().is_some()) {
                for (i, item) in items.iter().enumerate() {
                    if let Some(d) = item.as_dict() {
                        flatten_into(d.iter(), &format!("{key}/{i}"), out);
                    }
                }
            } else {
                out.insert(key, sanitize(v));
            }
        } else {
            out.insert(key, sanitize(v));
        }
    }
}

fn sanitize(v: &Value) -> HpValue {
    match v {
        Value::Bool(b) => HpValue::Number(f64::from(u8::from(*b))),
        Value::Int(i) => HpValue::Number(*i as f64),
        Value::Float(x) => HpValue::Number(*x),
        Value::Str(s) => HpValue::Str(s.clone()),
        // a tensor of at most one dimension: its first element (torch's `make_np(v)[0]`)
        Value::Tensor(t) if t.dim() <= 1 && t.numel() > 0 => {
            HpValue::Number(t.flatten(0, -1).double_value(&[0]))
        }
        other => HpValue::Str(py_str(other)),
    }
}

/// Python's `str(v)` for the values a hyperparameter holds (containers print their items'
/// `repr`). Tensors and torch objects print as tch's debug form, not torch's `repr`.
pub(crate) fn py_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(v: &Value) -> String {
    let join = |items: &[Value]| items.iter().map(py_repr).collect::<Vec<_>>().join(", ");
    let dict = |d: &crate::value::Dict| {
        let items: Vec<String> = d
            .iter()
            .map(|(k, v)| format!("{}: {}", key_repr(k), py_repr(v)))
            .collect();
        format!("{{{}}}", items.join(", "))
    };
    match v {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(b) => b.to_string(),
        Value::Float(x) => repr_float(*x),
        Value::Complex(re, im) => complex_repr(*re, *im),
        Value::Str(s) => repr_str(s),
        Value::Bytes(b) => bytes_repr(b),
        Value::ByteArray(b) => format!("bytearray({})", bytes_repr(b)),
        Value::List(items) => format!("[{}]", join(items)),
        Value::Tuple(items) if items.len() == 1 => format!("({},)", py_repr(&items[0])),
        Value::Tuple(items) => format!("({})", join(items)),
        Value::Set(items) if items.is_empty() => "set()".into(),
        Value::Set(items) => format!("{{{}}}", join(items)),
        Value::Size(dims) => format!(
            "torch.Size([{}])",
            dims.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Dict(d) => dict(d),
        // Python 3.11's reprs
        Value::OrderedDict(d) if d.is_empty() => "OrderedDict()".into(),
        Value::OrderedDict(d) => {
            let items: Vec<String> = d
                .iter()
                .map(|(k, v)| format!("({}, {})", key_repr(k), py_repr(v)))
                .collect();
            format!("OrderedDict([{}])", items.join(", "))
        }
        Value::Counter(d) if d.is_empty() => "Counter()".into(),
        Value::Counter(d) => format!("Counter({})", dict(d)),
        Value::Tensor(t) => format!("{t:?}"),
        Value::Torch(o) => format!("{o:?}"),
    }
}

fn key_repr(k: &Key) -> String {
    match k {
        Key::Str(s) => repr_str(s),
        Key::Int(i) => i.to_string(),
    }
}

/// Python's `repr(complex)`: `1j`, `(1+2j)`, `(-0-1j)`; parts without a trailing `.0`.
fn complex_repr(re: f64, im: f64) -> String {
    let part = |x: f64| {
        let s = repr_float(x);
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    };
    let imag = part(im);
    if re == 0.0 && re.is_sign_positive() {
        return format!("{imag}j");
    }
    let sign = if imag.starts_with('-') { "" } else { "+" };
    format!("({}{sign}{imag}j)", part(re))
}

/// Python's `repr(bytes)`.
fn bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut s = String::from("b");
    s.push(quote);
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            c if char::from(c) == quote => {
                s.push('\\');
                s.push(quote);
            }
            0x20..=0x7e => s.push(char::from(c)),
            c => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push(quote);
    s
}

/// The hparams plugin's name and data version (`tensorboard.plugins.hparams.metadata`).
const PLUGIN_NAME: &str = "hparams";
const PLUGIN_DATA_VERSION: i32 = 0;

fn plugin_summary(tag: &str, data: HParamsData) -> Summary {
    let content = HParamsPluginData {
        version: PLUGIN_DATA_VERSION,
        data: Some(data),
    }
    .encode_to_vec();
    Summary {
        value: vec![SummaryValue {
            tag: tag.into(),
            simple_value: None,
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: PLUGIN_NAME.into(),
                    content,
                }),
            }),
        }],
    }
}

/// torch's `hparams(hparam_dict, metric_dict)`: the experiment, session-start and
/// session-end summaries, in that order.
pub(crate) fn summaries(
    hparams: &IndexMap<String, HpValue>,
    metric_names: &[String],
) -> [Summary; 3] {
    let mut infos = Vec::new();
    let mut entries = Vec::new();
    for (k, v) in hparams {
        let (kind, ty) = match v {
            HpValue::Number(x) => (Kind::Number(*x), DataType::Float64),
            HpValue::Str(s) => (Kind::String(s.clone()), DataType::String),
        };
        infos.push(HParamInfo {
            name: k.clone(),
            r#type: ty as i32,
        });
        entries.push(HparamsEntry {
            key: k.clone(),
            value: Some(ProtoValue { kind: Some(kind) }),
        });
    }
    let experiment = Experiment {
        hparam_infos: infos,
        metric_infos: metric_names
            .iter()
            .map(|m| MetricInfo {
                name: Some(MetricName {
                    group: String::new(),
                    tag: m.clone(),
                }),
            })
            .collect(),
    };
    [
        plugin_summary("_hparams_/experiment", HParamsData::Experiment(experiment)),
        plugin_summary(
            "_hparams_/session_start_info",
            HParamsData::SessionStartInfo(SessionStartInfo { hparams: entries }),
        ),
        plugin_summary(
            "_hparams_/session_end_info",
            HParamsData::SessionEndInfo(SessionEndInfo {
                status: Status::Success as i32,
            }),
        ),
    ]
}
