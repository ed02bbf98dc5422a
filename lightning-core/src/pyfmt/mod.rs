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

mod spec;
mod template;
#[cfg(test)]
mod tests;

pub(crate) use spec::format_value;
pub(crate) use template::format_checkpoint_template;

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
