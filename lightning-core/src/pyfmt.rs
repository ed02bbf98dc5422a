//! Python's string formatting, as far as Lightning's checkpoint names, callback state keys and
//! logs need it (crate-private: the one place that knows how Python prints a value).
//!
//! The CSV logger writes `metrics.csv` cells as Python's `str(float)` ([`repr_float`]).
//! `ModelCheckpoint` renders filenames with Python's `str.format` applied to a dict of metric
//! tensors (`'{epoch:02d}-{val_loss:.2f}'`), and names its state with `repr()` of a dict. To give
//! byte-identical names, this module implements the format-spec mini-language for ints and
//! floats (`[[fill]align][sign][z][#][0][width][grouping][.precision][type]`), `repr` of floats,
//! strings and `timedelta`, and Lightning's template rewriting (`_format_checkpoint_name`).

use indexmap::IndexMap;
use std::fmt::Write as _;
use std::time::Duration;

/// A metric value as Python sees it when formatting: `Tensor.__format__` formats `.item()`,
/// an `int` for integer tensors (`epoch`, `step`, missing keys) and a `float` otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricValue {
    /// A Python `int` (an integer tensor's item).
    Int(i64),
    /// A Python `float` (a floating tensor's item).
    Float(f64),
}

impl MetricValue {
    /// The value as f64.
    pub fn as_f64(self) -> f64 {
        match self {
            MetricValue::Int(i) => i as f64,
            MetricValue::Float(x) => x,
        }
    }
}

/// Metrics by name, in Python dict order.
pub type Metrics = IndexMap<String, MetricValue>;

/// Python's `repr(str)`: single quotes unless the text holds a `'` and no `"`.
pub(crate) fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(datetime.timedelta)`: `datetime.timedelta(days=1, seconds=5)`, or
/// `datetime.timedelta(0)` for zero. Sub-microsecond parts round half to even, as Python does.
pub(crate) fn repr_timedelta(d: Duration) -> String {
    let micros_total = {
        let whole = d.as_micros();
        let rem_ns = d.subsec_nanos() % 1000;
        if rem_ns > 500 || (rem_ns == 500 && whole % 2 == 1) {
            whole + 1
        } else {
            whole
        }
    };
    let days = micros_total / 86_400_000_000;
    let seconds = (micros_total / 1_000_000) % 86_400;
    let micros = micros_total % 1_000_000;
    let mut parts = vec![];
    if days != 0 {
        parts.push(format!("days={days}"));
    }
    if seconds != 0 {
        parts.push(format!("seconds={seconds}"));
    }
    if micros != 0 {
        parts.push(format!("microseconds={micros}"));
    }
    if parts.is_empty() {
        "datetime.timedelta(0)".to_owned()
    } else {
        format!("datetime.timedelta({})", parts.join(", "))
    }
}

/// Shortest round-trip digits of a finite, non-negative `x`: (digits, decimal point position),
/// meaning `0.<digits> * 10^decpt`.
fn shortest_digits(x: f64) -> (String, i32) {
    let s = format!("{x:e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    (digits.to_owned(), exp + 1)
}

/// Python's `repr(float)` (also `str(float)`): shortest round-trip digits, scientific notation
/// when the exponent is < -4 or >= 16, and `.0` on integral values.
pub(crate) fn repr_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    let (digits, decpt) = shortest_digits(x.abs());
    let body = if decpt <= -4 || decpt > 16 {
        let exp = decpt - 1;
        let mant = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
    } else if decpt as usize >= digits.len() {
        format!("{}{}.0", digits, "0".repeat(decpt as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..decpt as usize],
            &digits[decpt as usize..]
        )
    };
    format!("{sign}{body}")
}

/// The largest width or precision accepted (file names are at most 255 bytes anyway).
const MAX_FIELD: usize = 1024;

/// A parsed format spec.
#[derive(Debug, Default)]
struct Spec {
    fill: Option<char>,
    align: Option<char>,
    sign: Option<char>,
    z: bool,
    alt: bool,
    width: usize,
    grouping: Option<char>,
    precision: Option<usize>,
    ty: Option<char>,
}

fn parse_spec(spec: &str) -> Result<Spec, String> {
    let chars: Vec<char> = spec.chars().collect();
    let mut s = Spec::default();
    let mut i = 0;
    let is_align = |c: char| matches!(c, '<' | '>' | '=' | '^');
    if chars.len() >= 2 && is_align(chars[1]) {
        s.fill = Some(chars[0]);
        s.align = Some(chars[1]);
        i = 2;
    } else if !chars.is_empty() && is_align(chars[0]) {
        s.align = Some(chars[0]);
        i = 1;
    }
    if i < chars.len() && matches!(chars[i], '+' | '-' | ' ') {
        s.sign = Some(chars[i]);
        i += 1;
    }
    if i < chars.len() && chars[i] == 'z' {
        s.z = true;
        i += 1;
    }
    if i < chars.len() && chars[i] == '#' {
        s.alt = true;
        i += 1;
    }
    if i < chars.len() && chars[i] == '0' {
        if s.fill.is_none() {
            s.fill = Some('0');
        }
        if s.align.is_none() {
            s.align = Some('=');
        }
        i += 1;
    }
    let start = i;
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        let w: String = chars[start..i].iter().collect();
        s.width = w
            .parse()
            .map_err(|_| "Too many decimal digits in format string")?;
    }
    if i < chars.len() && matches!(chars[i], ',' | '_') {
        s.grouping = Some(chars[i]);
        i += 1;
    }
    if i < chars.len() && chars[i] == '.' {
        i += 1;
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err("Format specifier missing precision".into());
        }
        let p: String = chars[start..i].iter().collect();
        s.precision = Some(
            p.parse()
                .map_err(|_| "Too many decimal digits in format string")?,
        );
    }
    if i < chars.len() {
        s.ty = Some(chars[i]);
        i += 1;
    }
    if i < chars.len() {
        return Err("Invalid format specifier".into());
    }
    // Python would build such strings; no file name can hold them
    if s.width > MAX_FIELD || s.precision.is_some_and(|p| p > MAX_FIELD) {
        return Err(format!(
            "width or precision above {MAX_FIELD} in a file name template"
        ));
    }
    Ok(s)
}

/// Inserts `sep` every three digits of `int_digits`, zero-padding to at least `min_len` chars.
fn group_digits(int_digits: &str, sep: char, every: usize, min_len: usize) -> String {
    let mut n = int_digits.len();
    while n + (n.saturating_sub(1)) / every < min_len {
        n += 1;
    }
    let padded = format!("{}{}", "0".repeat(n - int_digits.len()), int_digits);
    let mut out = String::new();
    for (i, c) in padded.chars().enumerate() {
        if i > 0 && matches!((n - i) % every, 0) {
            out.push(sep);
        }
        out.push(c);
    }
    out
}

/// Python's exponent notation: `1.500000e+03`.
fn fmt_exp(x: f64, prec: usize, upper: bool, alt: bool) -> String {
    let s = format!("{x:.prec$e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let dot = if alt && prec == 0 { "." } else { "" };
    let e = if upper { 'E' } else { 'e' };
    format!(
        "{mant}{dot}{e}{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

/// Formats a non-negative finite float for type `g`/`G`/none-with-precision.
fn fmt_general(x: f64, prec: usize, upper: bool, alt: bool, add_dot_0: bool) -> String {
    let p = prec.max(1);
    let exp = if x == 0.0 {
        0
    } else {
        let s = format!("{:.*e}", p - 1, x);
        s.split_once('e')
            .and_then(|(_, e)| e.parse::<i32>().ok())
            .unwrap_or(0)
    };
    // 'g' switches to exponent when exp >= p; the no-type variant (add_dot_0) at exp >= p - 1
    let limit = if add_dot_0 { p as i32 - 1 } else { p as i32 };
    let use_exp = exp < -4 || exp >= limit;
    let mut out = if use_exp {
        fmt_exp(x, p - 1, upper, alt)
    } else {
        let frac = (p as i32 - 1 - exp).max(0) as usize;
        format!("{x:.frac$}")
    };
    if !alt {
        // strip trailing zeros of the mantissa, then a bare point
        let (mant, rest) = match out.find(['e', 'E']) {
            Some(i) => (out[..i].to_owned(), out[i..].to_owned()),
            None => (out.clone(), String::new()),
        };
        let mant = if mant.contains('.') {
            mant.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            mant
        };
        out = format!("{mant}{rest}");
    }
    if add_dot_0 && !out.contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
    out
}

/// Pads `body` (digits, no sign) with the sign `sign` according to `spec`.
fn pad(spec: &Spec, sign: &str, body: &str, default_align: char) -> String {
    let len = sign.chars().count() + body.chars().count();
    if len >= spec.width {
        return format!("{sign}{body}");
    }
    let fill = spec.fill.unwrap_or(' ');
    let n = spec.width - len;
    let fills = |k: usize| std::iter::repeat_n(fill, k).collect::<String>();
    match spec.align.unwrap_or(default_align) {
        '<' => format!("{sign}{body}{}", fills(n)),
        '^' => format!("{}{sign}{body}{}", fills(n / 2), fills(n - n / 2)),
        '=' => format!("{sign}{}{body}", fills(n)),
        _ => format!("{}{sign}{body}", fills(n)),
    }
}

fn sign_str(spec: &Spec, negative: bool) -> &'static str {
    match (negative, spec.sign) {
        (true, _) => "-",
        (false, Some('+')) => "+",
        (false, Some(' ')) => " ",
        _ => "",
    }
}

/// Applies grouping (and sign-aware zero fill with grouping) to a number's digits.
fn finish_number(spec: &Spec, negative: bool, int_part: &str, rest: &str) -> String {
    let sign = sign_str(spec, negative);
    let zero_group = spec.grouping.is_some()
        && spec.align == Some('=')
        && spec.fill == Some('0')
        && int_part.chars().all(|c| c.is_ascii_digit());
    let int_part = match spec.grouping {
        Some(sep) if int_part.chars().all(|c| c.is_ascii_digit()) => {
            let min_len = if zero_group {
                spec.width.saturating_sub(sign.len() + rest.chars().count())
            } else {
                0
            };
            group_digits(int_part, sep, 3, min_len)
        }
        _ => int_part.to_owned(),
    };
    pad(spec, sign, &format!("{int_part}{rest}"), '>')
}

/// Python's `format(value, spec)` for an `int` or a `float`.
pub(crate) fn format_value(v: MetricValue, spec_text: &str) -> Result<String, String> {
    let spec = parse_spec(spec_text)?;
    match v {
        MetricValue::Int(i) => match spec.ty {
            None | Some('d') | Some('n') | Some('b') | Some('o') | Some('x') | Some('X') => {
                if spec.precision.is_some() {
                    return Err("Precision not allowed in integer format specifier".into());
                }
                if spec.z {
                    return Err(
                        "Negative zero coercion (z) not allowed in integer format specifier".into(),
                    );
                }
                let mag = i.unsigned_abs();
                let (prefix, digits) = match spec.ty {
                    Some('b') => ("0b", format!("{mag:b}")),
                    Some('o') => ("0o", format!("{mag:o}")),
                    Some('x') => ("0x", format!("{mag:x}")),
                    Some('X') => ("0X", format!("{mag:X}")),
                    _ => ("", mag.to_string()),
                };
                let prefix = if spec.alt { prefix } else { "" };
                let sign = sign_str(&spec, i < 0);
                let every = if prefix.is_empty() && spec.ty.is_none_or(|t| t == 'd' || t == 'n') {
                    3
                } else {
                    4
                };
                let digits = match spec.grouping {
                    Some(sep) => {
                        let min_len = if spec.align == Some('=') && spec.fill == Some('0') {
                            spec.width.saturating_sub(sign.len() + prefix.len())
                        } else {
                            0
                        };
                        group_digits(&digits, sep, every, min_len)
                    }
                    None => digits,
                };
                Ok(pad(&spec, &format!("{sign}{prefix}"), &digits, '>'))
            }
            Some('c') => {
                if spec.precision.is_some()
                    || spec.sign.is_some()
                    || spec.alt
                    || spec.grouping.is_some()
                {
                    return Err("option not allowed with integer format specifier 'c'".into());
                }
                let c = u32::try_from(i)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or("%c arg not in range(0x110000)")?;
                Ok(pad(&spec, "", &c.to_string(), '>'))
            }
            Some('e' | 'E' | 'f' | 'F' | 'g' | 'G' | '%') => format_float(i as f64, &spec),
            Some(c) => Err(format!(
                "Unknown format code '{c}' for object of type 'int'"
            )),
        },
        MetricValue::Float(x) => match spec.ty {
            None | Some('e' | 'E' | 'f' | 'F' | 'g' | 'G' | '%' | 'n') => format_float(x, &spec),
            Some(c) => Err(format!(
                "Unknown format code '{c}' for object of type 'float'"
            )),
        },
    }
}

fn format_float(x: f64, spec: &Spec) -> Result<String, String> {
    let upper = matches!(spec.ty, Some('E' | 'F' | 'G'));
    let mut negative = x.is_sign_negative() && !x.is_nan();
    let a = x.abs();
    if !x.is_finite() {
        let mut body = if x.is_nan() { "nan" } else { "inf" }.to_owned();
        if upper {
            body = body.to_uppercase();
        }
        if spec.ty == Some('%') {
            body.push('%');
        }
        let sign = sign_str(spec, negative);
        // zero padding does not apply to inf/nan in Python: the fill is kept as given
        return Ok(pad(spec, sign, &body, '>'));
    }
    let body = match spec.ty {
        Some('f' | 'F') => {
            let p = spec.precision.unwrap_or(6);
            let mut s = format!("{a:.p$}");
            if spec.alt && p == 0 {
                s.push('.');
            }
            s
        }
        Some('%') => {
            let p = spec.precision.unwrap_or(6);
            let mut s = format!("{:.p$}", a * 100.0);
            if spec.alt && p == 0 {
                s.push('.');
            }
            s.push('%');
            s
        }
        Some('e' | 'E') => fmt_exp(a, spec.precision.unwrap_or(6), upper, spec.alt),
        Some('g' | 'G' | 'n') => {
            fmt_general(a, spec.precision.unwrap_or(6), upper, spec.alt, false)
        }
        _ => match spec.precision {
            // no type, no precision: repr()
            None => repr_float(a),
            // no type with precision: 'g' that keeps ".0" and switches to exponent one digit
            // earlier (CPython's Py_DTSF_ADD_DOT_0)
            Some(p) => fmt_general(a, p, false, spec.alt, true),
        },
    };
    if spec.z && body.chars().all(|c| !c.is_ascii_digit() || c == '0') {
        negative = false;
    }
    let split = body
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len());
    Ok(finish_number(
        spec,
        negative,
        &body[..split],
        &body[split..],
    ))
}

/// Python's `str.format` of `template` with a single positional argument, a dict of metrics
/// (`'{0[epoch]:02d}'.format(metrics)`). Supports what Lightning's rewritten templates use:
/// `{0[key]}` fields with a format spec, and `{{`/`}}` escapes.
pub(crate) fn format_with_metrics(template: &str, metrics: &Metrics) -> Result<String, String> {
    let chars: Vec<char> = template.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '}' {
            if chars.get(i + 1) == Some(&'}') {
                out.push('}');
                i += 2;
                continue;
            }
            return Err("Single '}' encountered in format string".into());
        }
        if c != '{' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            out.push('{');
            i += 2;
            continue;
        }
        // a replacement field: find its end, skipping [...] in the field name
        let start = i + 1;
        let mut j = start;
        let mut depth = 1;
        let mut in_name = true;
        while j < chars.len() {
            match chars[j] {
                '[' if in_name => {
                    while j < chars.len() && chars[j] != ']' {
                        j += 1;
                    }
                }
                ':' | '!' if in_name => in_name = false,
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        if j >= chars.len() {
            return Err("Single '{' encountered in format string".into());
        }
        let field: String = chars[start..j].iter().collect();
        out.push_str(&render_field(&field, metrics)?);
        i = j + 1;
    }
    Ok(out)
}

/// Renders one `{...}` field body: `0[key]!conv:spec`.
fn render_field(field: &str, metrics: &Metrics) -> Result<String, String> {
    // split the field name from conversion/spec, honouring brackets
    let mut name_end = field.len();
    let mut in_bracket = false;
    for (k, c) in field.char_indices() {
        match c {
            '[' => in_bracket = true,
            ']' => in_bracket = false,
            ':' | '!' if !in_bracket => {
                name_end = k;
                break;
            }
            _ => {}
        }
    }
    let name = &field[..name_end];
    let rest = &field[name_end..];
    let spec = if let Some(conv) = rest.strip_prefix('!') {
        return Err(format!(
            "conversion '!{}' is not supported in checkpoint filenames",
            conv.split(':').next().unwrap_or("")
        ));
    } else {
        rest.strip_prefix(':').unwrap_or("")
    };
    if spec.contains(['{', '}']) {
        return Err("nested replacement fields in a format spec are not supported".into());
    }
    let arg_end = name.find(['[', '.']).unwrap_or(name.len());
    let arg = &name[..arg_end];
    if !(arg.is_empty() || arg == "0") {
        return Err(format!(
            "Replacement index {arg} out of range for positional args tuple"
        ));
    }
    let accessor = &name[arg_end..];
    let Some(key) = accessor.strip_prefix('[').and_then(|a| a.strip_suffix(']')) else {
        return Err(format!(
            "field '{{{name}}}' does not name one metric (expected `{{0[metric]}}`)"
        ));
    };
    if key.contains(']') {
        return Err("Only '.' or '[' may follow ']' in format field specifier".into());
    }
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("KeyError: {key}"));
    }
    let v = metrics
        .get(key)
        .ok_or_else(|| format!("KeyError: {}", repr_str(key)))?;
    format_value(*v, spec)
}

/// Lightning's `ModelCheckpoint._format_checkpoint_name`: rewrites `{name...}` groups to
/// `name={0[name]...}` (with `auto_insert_metric_name`) or `{0[name]...}`, fills missing names
/// with `0`, formats, and prepends `prefix` joined with `join_char`.
pub(crate) fn format_checkpoint_template(
    filename: Option<&str>,
    metrics: &Metrics,
    prefix: Option<&str>,
    auto_insert_metric_name: bool,
    join_char: &str,
    equals_char: &str,
) -> Result<String, String> {
    let mut filename = match filename {
        Some(f) if !f.is_empty() => f.to_owned(),
        _ => format!("{{epoch}}{join_char}{{step}}"),
    };
    let mut groups = find_groups(&filename);
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut metrics = metrics.clone();
    for group in groups {
        let name = &group[1..];
        if auto_insert_metric_name {
            filename = filename.replace(&group, &format!("{name}{equals_char}{{{name}"));
        }
        filename = filename.replace(&group, &format!("{{0[{name}]"));
        metrics
            .entry(name.to_owned())
            .or_insert(MetricValue::Int(0));
    }
    let mut filename = format_with_metrics(&filename, &metrics)?;
    if let Some(p) = prefix {
        filename = format!("{p}{join_char}{filename}");
    }
    Ok(filename)
}

/// `re.findall(r"(\{.*?)[:\}]", s)`: each `{` up to (not including) the next `:` or `}` on the
/// same line.
fn find_groups(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut groups = vec![];
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '{' {
            let mut j = i + 1;
            while j < chars.len() && !matches!(chars[j], ':' | '}' | '\n') {
                j += 1;
            }
            if j < chars.len() && chars[j] != '\n' {
                groups.push(chars[i..j].iter().collect());
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, MetricValue)]) -> Metrics {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }
    use MetricValue::{Float as F, Int as I};

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (1.5e300, "1.5e+300"),
            (f64::from(0.1f32), "0.10000000149011612"),
            (-0.0, "-0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(repr_float(x), want, "repr({x})");
        }
    }

    #[test]
    fn format_specs_match_python() {
        // expected values printed by CPython 3.11
        let cases: &[(MetricValue, &str, &str)] = &[
            (I(5), "<05", "50000"),
            (I(5), "05", "00005"),
            (F(-0.001), "+.2f", "-0.00"),
            (F(1234.5678), "+.2f", "+1234.57"),
            (I(5), "010.3e", "05.000e+00"),
            (F(1234.5678), "010.3e", "01.235e+03"),
            (F(1234.5678), ".3", "1.23e+03"),
            (F(-0.04), ".3", "-0.04"),
            (F(-0.001), ".0f", "-0"),
            (I(5), "#.0f", "5."),
            (F(1234.5678), ",", "1,234.5678"),
            (F(1234.5678), "_.2f", "1_234.57"),
            (I(5), "08,.2f", "0,005.00"),
            (F(-0.001), "08,.2f", "-0,000.00"),
            (F(-0.04), "z.1f", "0.0"),
            (F(1234.5678), "e", "1.234568e+03"),
            (F(1234.5678), "g", "1234.57"),
            (F(-0.001), ".2%", "-0.10%"),
            (F(-0.001), "^9.2f", "  -0.00  "),
            (I(5), "*>8d", "*******5"),
            (I(5), "#b", "0b101"),
        ];
        for (v, spec, want) in cases {
            assert_eq!(
                format_value(*v, spec).as_deref(),
                Ok(*want),
                "format({v:?}, {spec:?})"
            );
        }
        assert_eq!(
            format_value(I(5), ".3").unwrap_err(),
            "Precision not allowed in integer format specifier"
        );
        assert_eq!(
            format_value(F(0.5), "d").unwrap_err(),
            "Unknown format code 'd' for object of type 'float'"
        );
    }

    #[test]
    fn lightning_format_checkpoint_name_cases() {
        let f = |t: Option<&str>, ms: &[(&str, MetricValue)], prefix, auto| {
            format_checkpoint_template(t, &m(ms), prefix, auto, "-", "=").unwrap()
        };
        // from Lightning's tests/tests_pytorch/checkpointing/test_model_checkpoint.py
        assert_eq!(
            f(Some(""), &[("epoch", I(3)), ("step", I(2))], None, true),
            "epoch=3-step=2"
        );
        assert_eq!(
            f(None, &[("epoch", I(3)), ("step", I(2))], Some("test"), true),
            "test-epoch=3-step=2"
        );
        assert_eq!(f(Some("ckpt"), &[], Some("test"), true), "test-ckpt");
        assert_eq!(
            f(
                Some("{epoch:03d}-{acc}"),
                &[("epoch", I(3)), ("acc", F(0.03))],
                None,
                true
            ),
            "epoch=003-acc=0.03"
        );
        assert_eq!(
            f(
                Some("{epoch:03d}-{epoch_test:03d}"),
                &[("epoch", I(3)), ("epoch_test", I(3))],
                None,
                true
            ),
            "epoch=003-epoch_test=003"
        );
        assert_eq!(
            format_checkpoint_template(
                Some("{epoch},{acc:.5f}"),
                &m(&[("epoch", I(3)), ("acc", F(0.03))]),
                Some("test"),
                true,
                "@",
                "="
            )
            .unwrap(),
            "test@epoch=3,acc=0.03000"
        );
        assert_eq!(
            format_checkpoint_template(
                Some("{epoch:03d}-{acc}"),
                &m(&[("epoch", I(3)), ("acc", F(0.03))]),
                None,
                true,
                "-",
                ":"
            )
            .unwrap(),
            "epoch:003-acc:0.03"
        );
        assert_eq!(
            f(
                Some("{epoch}_{val/loss:.5f}"),
                &[("epoch", I(4)), ("val/loss", F(0.03))],
                None,
                true
            ),
            "epoch=4_val/loss=0.03000"
        );
        assert_eq!(
            f(
                Some("epoch={epoch:03d}-val_acc={val/acc}"),
                &[("epoch", I(3)), ("val/acc", F(0.03))],
                None,
                false
            ),
            "epoch=003-val_acc=0.03"
        );
        assert_eq!(
            f(
                Some("mAP@0.50={val/mAP@0.50:.4f}"),
                &[("val/mAP@0.50", F(0.2))],
                None,
                false
            ),
            "mAP@0.50=0.2000"
        );
        // docstring cases
        assert_eq!(f(Some("{missing:d}"), &[], None, true), "missing=0");
        assert_eq!(
            f(
                Some("{epoch}-{val_loss:.2f}"),
                &[("epoch", I(2)), ("val_loss", F(0.123456))],
                None,
                true
            ),
            "epoch=2-val_loss=0.12"
        );
    }

    #[test]
    fn bad_templates_are_errors_not_panics() {
        for t in ["{epoch", "a}b", "{epoch:{w}}", "{0}", "{epoch:d.2}"] {
            assert!(
                format_checkpoint_template(Some(t), &m(&[("epoch", I(1))]), None, true, "-", "=")
                    .is_err(),
                "{t}"
            );
        }
    }

    proptest::proptest! {
        /// Any template and metric values give a name or an error, never a panic.
        #[test]
        fn arbitrary_templates_never_panic(
            tpl in "[{}:!.\\[\\]0-9a-z/%=,_<>^+ #-]{0,24}",
            x in proptest::num::f64::ANY,
            i in proptest::num::i64::ANY,
        ) {
            let ms = m(&[("a", F(x)), ("b", I(i)), ("epoch", I(i))]);
            let _ = format_checkpoint_template(Some(&tpl), &ms, None, true, "-", "=");
            let _ = format_checkpoint_template(Some(&tpl), &ms, Some("p"), false, "-", "=");
            let _ = format_value(F(x), &tpl);
            let _ = format_value(I(i), &tpl);
        }
    }

    #[test]
    fn reprs() {
        assert_eq!(repr_str("val_loss"), "'val_loss'");
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(
            repr_timedelta(Duration::from_secs(60)),
            "datetime.timedelta(seconds=60)"
        );
        assert_eq!(repr_timedelta(Duration::ZERO), "datetime.timedelta(0)");
        assert_eq!(
            repr_timedelta(Duration::from_secs(2 * 86400) + Duration::from_micros(5)),
            "datetime.timedelta(days=2, microseconds=5)"
        );
    }

    /// Runs `script` with one JSON argument in the project's venv (`LIGHTNING_RS_PYTHON`, set
    /// by `.cargo/config.toml`) and parses its JSON output; `None` without the venv.
    fn venv_python(script: &str, arg: &serde_json::Value) -> Option<serde_json::Value> {
        let py = std::env::var_os("LIGHTNING_RS_PYTHON").map(std::path::PathBuf::from);
        let Some(py) = py.filter(|p| p.exists()) else {
            eprintln!("skipping: no Python venv (run scripts/setup.sh)");
            return None;
        };
        let out = std::process::Command::new(py)
            .arg("-c")
            .arg(script)
            .arg(arg.to_string())
            .output()
            .expect("start python");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(serde_json::from_slice(&out.stdout).expect("python printed JSON"))
    }

    /// Every value x spec pair formats as Python's `format(x, spec)`, or fails where it raises
    /// (checked against the venv's CPython, 848 cases).
    #[test]
    fn format_specs_match_the_venvs_python() {
        use serde_json::json;
        let values = [
            I(0),
            I(7),
            I(-1234567),
            F(0.0),
            F(-0.0),
            F(0.5),
            F(2.5),
            F(-0.001),
            F(1234.5678),
            F(f64::from(0.1f32)),
            F(1e-7),
            F(9.9999),
            F(123456789.0),
            F(1e22),
            F(f64::NAN),
            F(f64::NEG_INFINITY),
        ];
        let specs = [
            "", "d", "02d", "03d", "5", "<5", "^7", ">+8", "=+8", "*^9", "05", "<05", " ", "+",
            ",", "_", "08,", "x", "#x", "#o", "#b", "X", "f", ".0f", ".1f", ".2f", ".4f", "#.0f",
            "+.3f", "010.2f", "z.1f", "e", ".2e", "E", "010.3e", "g", ".3g", ".1g", "#.3g", "G",
            "%", ".1%", ".3", ".1", "12.4", "08,.2f", ",.2f", "n", "c", "<3c", "s", ".2d", "q",
        ];
        let mut ours = vec![];
        let mut args = vec![];
        for v in values {
            for spec in specs {
                ours.push(match format_value(v, spec) {
                    Ok(s) => json!({ "ok": s }),
                    Err(_) => json!({ "err": true }),
                });
                let (ty, text) = match v {
                    I(i) => ("int", i.to_string()),
                    F(x) => ("float", format!("{x:e}")),
                };
                args.push(json!({ "t": ty, "v": text, "spec": spec }));
            }
        }
        let script = r#"
import json, sys
out = []
for c in json.loads(sys.argv[1]):
    x = int(c["v"]) if c["t"] == "int" else float(c["v"])
    try:
        out.append({"ok": format(x, c["spec"])})
    except Exception:
        out.append({"err": True})
print(json.dumps(out))
"#;
        let Some(theirs) = venv_python(script, &serde_json::Value::Array(args.clone())) else {
            return;
        };
        let theirs = theirs.as_array().expect("a list");
        assert_eq!(ours.len(), theirs.len());
        let bad: Vec<String> = ours
            .iter()
            .zip(theirs)
            .zip(&args)
            .filter(|((o, t), _)| o != t)
            .map(|((o, t), a)| format!("{a}: ours {o} python {t}"))
            .collect();
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}
