//! JSON written the way Python's `json.dumps(x, ensure_ascii=False)` writes it — what chat
//! templates' `tojson` produced when the models were trained — through the crate's one
//! Python-exact formatter, [`crate::pyjson`].

use crate::pyjson::{self, Style};
use serde_json::Value;

/// One-line Python-style JSON.
pub fn python_json(v: &Value) -> String {
    pyjson::to_string(v, Style::TOJSON)
}

/// Python-style JSON with `indent` spaces per level.
pub fn python_json_indent(v: &Value, indent: usize) -> String {
    pyjson::to_string(
        v,
        Style {
            indent: Some(indent),
            ..Style::TOJSON
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_dumps() {
        let v = serde_json::json!({"a": [1, 2.5, "é"], "b": {}, "c": null, "d": {"x": true}, "e": 1e16});
        assert_eq!(
            python_json(&v),
            r#"{"a": [1, 2.5, "é"], "b": {}, "c": null, "d": {"x": true}, "e": 1e+16}"#
        );
        assert_eq!(
            python_json_indent(&serde_json::json!({"a": [1]}), 2),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
    }
}
