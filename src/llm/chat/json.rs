//! JSON written the way Python's `json.dumps` writes it (what chat templates' `tojson` produced
//! when the models were trained): `", "` and `": "` separators, non-ASCII kept, no HTML escaping.

use serde_json::Value;

/// One-line Python-style JSON.
pub fn python_json(v: &Value) -> String {
    let mut out = String::new();
    write(v, None, 0, &mut out);
    out
}

/// Python-style JSON with `indent` spaces per level.
pub fn python_json_indent(v: &Value, indent: usize) -> String {
    let mut out = String::new();
    write(v, Some(indent), 0, &mut out);
    out
}

fn newline(indent: Option<usize>, level: usize, out: &mut String) {
    if let Some(n) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write(v: &Value, indent: Option<usize>, level: usize, out: &mut String) {
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(indent, level + 1, out);
                write(x, indent, level + 1, out);
            }
            newline(indent, level, out);
            out.push(']');
        }
        Value::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(indent, level + 1, out);
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push_str(": ");
                write(x, indent, level + 1, out);
            }
            newline(indent, level, out);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_dumps() {
        let v = serde_json::json!({"a": [1, 2.5, "é"], "b": {}, "c": null, "d": {"x": true}});
        assert_eq!(python_json(&v), r#"{"a": [1, 2.5, "é"], "b": {}, "c": null, "d": {"x": true}}"#);
        assert_eq!(python_json_indent(&serde_json::json!({"a": [1]}), 2), "{\n  \"a\": [\n    1\n  ]\n}");
    }
}
