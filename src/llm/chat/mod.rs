//! Chat templates: rendering a conversation (messages, tools) into the model's own prompt
//! format with minijinja, from the checkpoint's Jinja template or an override in
//! `models/templates/`.

use crate::llm::error::{LlmError, Result};

/// Override templates shipped in `models/templates/`: (file name, text).
const TEMPLATES: &[(&str, &str)] = &[];

/// The template text a profile's `chat_template` setting names, when it names a file rather than
/// the checkpoint's own (`gguf`, `tokenizer_config`). Files are looked up among the shipped
/// templates, then in `$APIGEN_MT_PROFILES/templates/`.
pub fn template_override(spec: &str) -> Result<Option<String>> {
    if matches!(spec, "gguf" | "tokenizer_config" | "checkpoint") {
        return Ok(None);
    }
    if let Some((_, t)) = TEMPLATES.iter().find(|(n, _)| *n == spec) {
        return Ok(Some(t.to_string()));
    }
    if let Some(dir) = std::env::var_os("APIGEN_MT_PROFILES") {
        let path = std::path::PathBuf::from(dir).join("templates").join(spec);
        if path.is_file() {
            return std::fs::read_to_string(&path).map(Some).map_err(|e| LlmError::io(path, e));
        }
    }
    Err(LlmError::Template(format!("no template file {spec:?}")))
}
