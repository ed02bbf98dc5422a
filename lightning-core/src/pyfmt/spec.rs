//! Python's format-spec mini-language for ints and floats
//! (`[[fill]align][sign][z][#][0][width][grouping][.precision][type]`).

use super::*;

/// The largest width or precision accepted (file names are at most 255 bytes anyway).
const MAX_FIELD: usize = 1024;

/// A parsed format spec.
#[derive(Debug, Default)]
pub(super) struct Spec {
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

pub(super) fn parse_spec(spec: &str) -> Result<Spec, String> {
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
pub(super) fn group_digits(int_digits: &str, sep: char, every: usize, min_len: usize) -> String {
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
pub(super) fn fmt_exp(x: f64, prec: usize, upper: bool, alt: bool) -> String {
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
pub(super) fn fmt_general(x: f64, prec: usize, upper: bool, alt: bool, add_dot_0: bool) -> String {
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
pub(super) fn pad(spec: &Spec, sign: &str, body: &str, default_align: char) -> String {
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

pub(super) fn sign_str(spec: &Spec, negative: bool) -> &'static str {
    match (negative, spec.sign) {
        (true, _) => "-",
        (false, Some('+')) => "+",
        (false, Some(' ')) => " ",
        _ => "",
    }
}

/// Applies grouping (and sign-aware zero fill with grouping) to a number's digits.
pub(super) fn finish_number(spec: &Spec, negative: bool, int_part: &str, rest: &str) -> String {
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

pub(super) fn format_float(x: f64, spec: &Spec) -> Result<String, String> {
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
