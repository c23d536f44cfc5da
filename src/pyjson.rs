//! Python's `json.dumps` and `repr(float)`, byte for byte.
//!
//! tau-bench tools return `json.dumps(obj)` with the default separators (`", "`, `": "`),
//! `ensure_ascii=True` and keys in insertion order; the canonical database hash uses
//! `sort_keys=True`, compact separators and `ensure_ascii=False`. Both live here so that every
//! byte a tool or a hash produces goes through one formatter; chat templates' `tojson` (Python's
//! `json.dumps(x, ensure_ascii=False[, indent=n])` in Hugging Face's Jinja environment) uses it
//! too. It formats [`serde_json::Value`]s (built with `preserve_order`) and knows nothing else.

use serde_json::{Map, Number, Value};
use std::fmt::Write as _;

/// How to lay out the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// `", "` and `": "` when false; `","` and `":"` when true.
    pub compact: bool,
    /// Sort object keys (by code point, as Python does) instead of keeping insertion order.
    pub sort_keys: bool,
    /// Escape every character outside printable ASCII as `\uXXXX`.
    pub ensure_ascii: bool,
    /// Pretty-print with this many spaces per level (Python then separates items with `","`).
    pub indent: Option<usize>,
}

impl Style {
    /// `json.dumps(x)` with Python's defaults: what tau-bench tools return.
    pub const PYTHON: Style = Style {
        compact: false,
        sort_keys: false,
        ensure_ascii: true,
        indent: None,
    };
    /// `json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`: the hash input.
    pub const CANONICAL: Style = Style {
        compact: true,
        sort_keys: true,
        ensure_ascii: false,
        indent: None,
    };
    /// `json.dumps(x, ensure_ascii=False)`: what chat templates' `tojson` writes.
    pub const TOJSON: Style = Style {
        compact: false,
        sort_keys: false,
        ensure_ascii: false,
        indent: None,
    };
}

/// `json.dumps(value)` with Python's default settings.
pub fn dumps(value: &Value) -> String {
    to_string(value, Style::PYTHON)
}

/// Serialise `value` in the given style.
pub fn to_string(value: &Value, style: Style) -> String {
    let mut out = String::new();
    write_value(&mut out, value, style);
    out
}

/// Append the JSON text of `value` to `out`.
pub fn write_value(out: &mut String, value: &Value, style: Style) {
    write_level(out, value, style, 0)
}

fn item_separator(style: Style) -> &'static str {
    if style.compact || style.indent.is_some() {
        ","
    } else {
        ", "
    }
}

fn newline(out: &mut String, style: Style, level: usize) {
    if let Some(n) = style.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write_level(out: &mut String, value: &Value, style: Style, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s, style.ensure_ascii),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator(style));
                }
                newline(out, style, level + 1);
                write_level(out, item, style, level + 1);
            }
            newline(out, style, level);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => write_object(out, map, style, level),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, style: Style, level: usize) {
    out.push('{');
    let entry = |i: usize, k: &str, v: &Value, out: &mut String| {
        if i > 0 {
            out.push_str(item_separator(style));
        }
        newline(out, style, level + 1);
        write_str(out, k, style.ensure_ascii);
        out.push_str(if style.compact { ":" } else { ": " });
        write_level(out, v, style, level + 1);
    };
    if style.sort_keys {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (i, (k, v)) in entries.into_iter().enumerate() {
            entry(i, k, v, out);
        }
    } else {
        for (i, (k, v)) in map.iter().enumerate() {
            entry(i, k, v, out);
        }
    }
    newline(out, style, level);
    out.push('}');
}

/// Integers as integers, floats as Python's `float.__repr__` (`NaN`, `Infinity` as `json` does).
pub fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        if f.is_nan() {
            out.push_str("NaN");
        } else if f.is_infinite() {
            out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            write_float_repr(out, f);
        }
    }
}

/// Python's `repr(f)` for a float: the shortest digits that round-trip, in fixed notation when
/// the decimal exponent is in `-4..16`, otherwise scientific with a signed, two-digit exponent.
pub fn float_repr(f: f64) -> String {
    let mut s = String::new();
    write_float_repr(&mut s, f);
    s
}

/// Append `repr(f)` to `out` (`nan`, `inf`, `-inf` for non-finite values, as Python prints them).
pub fn write_float_repr(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "-1.2345e3", "5e-324", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// A JSON string literal, escaped as Python's `json` module escapes it.
pub fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    // Copy runs of characters that need no escaping in one go.
    let needs_escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\' || (ensure_ascii && b >= 0x7f);
    let bytes = s.as_bytes();
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !needs_escape(bytes[i]) {
            i += 1;
            continue;
        }
        out.push_str(&s[run_start..i]);
        let c = s[i..].chars().next().expect("char boundary");
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
        i += c.len_utf8();
        run_start = i;
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

/// Python's `round(x, ndigits)` for floats: the exact binary value rounded to `ndigits` decimals
/// (ties, which only exact halves can be, go to even), read back as the nearest float.
pub fn round_float(x: f64, ndigits: i32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    if ndigits > 330 {
        return x;
    }
    if ndigits >= 0 {
        // `{:.N}` rounds the exact binary value correctly, ties to even.
        let text = format!("{:.*}", ndigits as usize, x);
        let y: f64 = text.parse().unwrap_or(x);
        if y == 0.0 { 0.0_f64.copysign(x) } else { y }
    } else {
        let pow = 10f64.powi(-ndigits);
        if !pow.is_finite() {
            return 0.0_f64.copysign(x);
        }
        let y = x / pow;
        let r = y.round();
        let r = if (y - y.trunc()).abs() == 0.5 {
            2.0 * (y / 2.0).round()
        } else {
            r
        };
        let z = r * pow;
        if z.is_finite() { z } else { x }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        // Expected strings are what CPython 3.11 prints for repr(x).
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (54.04, "54.04"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456789.0, "123456789.0"),
            (1e22, "1e+22"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn dumps_matches_python_defaults() {
        let v = json!({"b": [1, 2.5, null, true], "a": "é\"\n\u{7f}", "emoji": "😀", "n": 1.0});
        assert_eq!(
            dumps(&v),
            r#"{"b": [1, 2.5, null, true], "a": "\u00e9\"\n\u007f", "emoji": "\ud83d\ude00", "n": 1.0}"#
        );
        assert_eq!(
            to_string(&v, Style::CANONICAL),
            "{\"a\":\"é\\\"\\n\u{7f}\",\"b\":[1,2.5,null,true],\"emoji\":\"😀\",\"n\":1.0}"
        );
    }

    #[test]
    fn indent_matches_python() {
        // json.dumps({"a": [1, {}], "b": "é"}, ensure_ascii=False, indent=2)
        let v = json!({"a": [1, {}], "b": "é", "c": []});
        let style = Style {
            indent: Some(2),
            ..Style::TOJSON
        };
        assert_eq!(
            to_string(&v, style),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": \"é\",\n  \"c\": []\n}"
        );
        assert_eq!(
            to_string(&v, Style::TOJSON),
            "{\"a\": [1, {}], \"b\": \"é\", \"c\": []}"
        );
    }

    #[test]
    fn round_matches_python() {
        // CPython: round(2.675, 2) == 2.67 (2.675 is below the half), round(0.125, 2) == 0.12.
        assert_eq!(round_float(2.675, 2), 2.67);
        assert_eq!(round_float(0.125, 2), 0.12);
        assert_eq!(round_float(0.375, 2), 0.38);
        assert_eq!(round_float(1234.5678, 2), 1234.57);
        assert_eq!(round_float(-0.004, 2).to_string(), "-0");
        assert_eq!(round_float(2.5, 0), 2.0);
        assert_eq!(round_float(3.5, 0), 4.0);
        assert_eq!(round_float(1250.0, -2), 1200.0);
        assert_eq!(round_float(1350.0, -2), 1400.0);
    }
}
