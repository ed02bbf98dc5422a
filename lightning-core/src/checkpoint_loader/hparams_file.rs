//! `load_from_checkpoint(hparams_file=...)`: the file formats Lightning reads
//! (`saving.load_hparams_from_yaml`, `saving.load_hparams_from_tags_csv`), chosen by extension
//! as Lightning chooses, plus JSON as our extra.

use super::error::LoaderError;
use crate::error::{Error, Result};
use crate::value::Value;
use std::path::Path;

/// Reads `path` as Lightning's `_load_from_checkpoint` does: `.yaml`/`.yml` as YAML, `.csv` as
/// a test_tube tags file (`key,value` rows after a header, each value converted as Python's
/// `ast.literal_eval` would, else kept as text), and, beyond Lightning, `.json` as JSON. Any
/// other extension is Lightning's error. Extensions match case-insensitively.
///
/// Lightning warns and uses `{}` for a missing file; here a missing file is an error (a
/// mistyped path would otherwise drop every saved hyperparameter silently).
pub fn read(path: &Path) -> Result<Value> {
    let ext = path
        .to_string_lossy()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let kind = match ext.as_str() {
        "csv" => Kind::TagsCsv,
        "yml" | "yaml" => Kind::Yaml,
        "json" => Kind::Json,
        _ => {
            return Err(LoaderError::HparamsFileExtension {
                path: path.to_owned(),
            }
            .into())
        }
    };
    let bytes = crate::storage::read(path).map_err(Error::Load)?;
    let bad = |reason: String| LoaderError::HparamsFile {
        path: path.to_owned(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
    let v = match kind {
        Kind::TagsCsv => Ok(tags_csv(&text)),
        Kind::Yaml if text.trim().is_empty() => Ok(Value::dict()),
        Kind::Yaml => crate::hparams::from_yaml(&text).map_err(|e| bad(e.to_string())),
        Kind::Json => crate::hparams::from_json(&text).map_err(|e| bad(e.to_string())),
    }?;
    match v {
        Value::Dict(_) | Value::OrderedDict(_) => Ok(v),
        other => Err(bad(format!(
            "expected a mapping of hyperparameters, found a {}",
            other.type_name()
        ))
        .into()),
    }
}

enum Kind {
    TagsCsv,
    Yaml,
    Json,
}

/// `load_hparams_from_tags_csv`: `{row[0]: convert(row[1]) for row in rows[1:]}`.
fn tags_csv(text: &str) -> Value {
    let mut out = Value::dict();
    for row in csv_rows(text).into_iter().skip(1) {
        if let [key, value, ..] = row.as_slice() {
            out.insert(key.as_str(), literal(value));
        }
    }
    out
}

/// Rows of Python's `csv.reader` (excel dialect): `,` separated, `"` quoted with `""` escapes,
/// quoted fields may span lines; blank lines give no row.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut started = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => {
                quoted = true;
                started = true;
            }
            ',' if !quoted => {
                row.push(std::mem::take(&mut field));
                started = true;
            }
            '\r' | '\n' if !quoted => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                if started || !field.is_empty() {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                started = false;
            }
            c => {
                field.push(c);
                started = true;
            }
        }
    }
    if started || !field.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// Lightning's `convert(val)`: `ast.literal_eval(val)`, or the text itself when that fails.
/// Covered here: `None`, `True`, `False`, ints, floats (not `inf`/`nan`, which Python keeps
/// as text), quoted strings, and lists/tuples of those; anything else stays text.
fn literal(s: &str) -> Value {
    parse_literal(s.trim()).unwrap_or_else(|| Value::Str(s.to_owned()))
}

fn parse_literal(s: &str) -> Option<Value> {
    match s {
        "None" => return Some(Value::None),
        "True" => return Some(Value::Bool(true)),
        "False" => return Some(Value::Bool(false)),
        _ => {}
    }
    let number = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E' | '_'))
        && s.chars().any(|c| c.is_ascii_digit())
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__");
    if number {
        let plain = s.replace('_', "");
        let is_float = plain.contains(['.', 'e', 'E']);
        if !is_float {
            let digits = plain.trim_start_matches(['+', '-']);
            // Python rejects leading zeros in a non-zero int literal (`007`)
            if digits.len() > 1 && digits.starts_with('0') && digits.bytes().any(|b| b != b'0') {
                return None;
            }
            return plain.parse::<i64>().ok().map(Value::Int);
        }
        return plain.parse::<f64>().ok().map(Value::Float);
    }
    if s.len() >= 2 {
        let (first, last) = (s.as_bytes()[0], s.as_bytes()[s.len() - 1]);
        if (first == b'\'' || first == b'"') && last == first {
            let inner = &s[1..s.len() - 1];
            if inner.contains(first as char) || inner.contains('\\') {
                return None; // escapes: keep the text rather than guess
            }
            return Some(Value::Str(inner.to_owned()));
        }
        if (first, last) == (b'[', b']') || (first, last) == (b'(', b')') {
            let inner = s[1..s.len() - 1].trim();
            let items: Option<Vec<Value>> = if inner.is_empty() {
                Some(vec![])
            } else {
                let parts: Vec<&str> = inner.split(',').collect();
                // a trailing comma (`(1,)`) leaves an empty last part
                let parts = match parts.split_last() {
                    Some((l, rest)) if l.trim().is_empty() && !rest.is_empty() => rest,
                    _ => &parts[..],
                };
                parts.iter().map(|p| parse_literal(p.trim())).collect()
            };
            let items = items?;
            return Some(if first == b'[' {
                Value::List(items)
            } else {
                Value::Tuple(items)
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_follow_ast_literal_eval() {
        assert_eq!(literal("3"), Value::Int(3));
        assert_eq!(literal("-3"), Value::Int(-3));
        assert_eq!(literal("1_000"), Value::Int(1000));
        assert_eq!(literal("0.5"), Value::Float(0.5));
        assert_eq!(literal("1e-3"), Value::Float(1e-3));
        assert_eq!(literal("True"), Value::Bool(true));
        assert_eq!(literal("None"), Value::None);
        assert_eq!(literal("'adam'"), Value::Str("adam".into()));
        assert_eq!(literal("adam"), Value::Str("adam".into()));
        assert_eq!(literal("inf"), Value::Str("inf".into()));
        assert_eq!(literal("007"), Value::Str("007".into()));
        assert_eq!(literal("true"), Value::Str("true".into()));
        assert_eq!(
            literal("[1, 2.5]"),
            Value::List(vec![Value::Int(1), Value::Float(2.5)])
        );
        assert_eq!(literal("(1,)"), Value::Tuple(vec![Value::Int(1)]));
    }

    #[test]
    fn tags_csv_skips_the_header_and_reads_quoted_fields() {
        let v = tags_csv("key,value\r\nlr,0.1\r\nname,\"a,b\"\r\n\r\nlayers,3\r\n");
        assert_eq!(v.get("lr"), Some(&Value::Float(0.1)));
        assert_eq!(v.get("name"), Some(&Value::Str("a,b".into())));
        assert_eq!(v.get("layers"), Some(&Value::Int(3)));
        assert_eq!(v.get("key"), None);
    }

    #[test]
    fn extension_decides_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.YML");
        std::fs::write(&p, "lr: 0.5\n").unwrap();
        assert_eq!(read(&p).unwrap().get("lr"), Some(&Value::Float(0.5)));
        let p = dir.path().join("h.txt");
        std::fs::write(&p, "lr: 0.5\n").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains(".csv, .yml or .yaml is required"), "{e}");
        let e = read(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(e.to_string().contains("missing.yaml"), "{e}");
        let p = dir.path().join("list.yaml");
        std::fs::write(&p, "- 1\n").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("mapping"));
    }
}
