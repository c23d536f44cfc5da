//! Constrained decoding with llguidance: a JSON schema, or a tool call in the model's own
//! format built from the tools' parameter schemas, enforced by masking logits each step.
//!
//! [`Constrainer`] adapts our tokenizer to llguidance (its token trie: each token's bytes, with
//! control tokens marked special) and is built once per model; each reply gets its own
//! [`Grammar`]. Masking sets disallowed logits to negative infinity (llguidance's own
//! `apply_to` adds a bias instead, which would not mask).

use std::sync::Arc;
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use toktrie::{TokRxInfo, TokTrie, TokenizerEnv};

use crate::llm::Tokenizer;
use crate::llm::engine::LogitsProcessor;
use crate::llm::error::{LlmError, Result};
use crate::llm::tokenizer::TokenKind;
use crate::llm::tools::{ToolFormat, hermes};

struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Only fails for vocabularies without byte tokens, which `Tokenizer` rejects at load.
        self.tokenizer.encode_bytes(s).unwrap_or_default()
    }
}

fn err(e: impl std::fmt::Display) -> LlmError {
    LlmError::Constraint(e.to_string())
}

/// llguidance set up for one tokenizer; cheap to share.
pub struct Constrainer {
    factory: ParserFactory,
}

impl Constrainer {
    /// Build the token trie for `tokenizer`; `eos` is the token that ends a constrained reply.
    pub fn new(tokenizer: Arc<Tokenizer>, eos: u32) -> Result<Self> {
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id).unwrap_or_default();
                match tokenizer.kind(id) {
                    // Control tokens are only reachable as special tokens.
                    Some(TokenKind::Control) | Some(TokenKind::Unused) => {
                        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                        w.extend_from_slice(
                            if bytes.is_empty() {
                                format!("<unused_{id}>").into_bytes()
                            } else {
                                bytes.to_vec()
                            }
                            .as_slice(),
                        );
                        w
                    }
                    _ => bytes.to_vec(),
                }
            })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(n as u32, eos), &words);
        let env: toktrie::TokEnv = Arc::new(Env { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(err)?;
        factory.quiet();
        Ok(Constrainer { factory })
    }

    fn grammar(&self, g: TopLevelGrammar) -> Result<Grammar> {
        let parser = self.factory.create_parser(g).map_err(err)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(err(e));
        }
        Ok(Grammar {
            matcher,
            mask_time_us: 0,
            steps: 0,
        })
    }

    /// Output must be one JSON value valid under `schema`.
    pub fn json_schema(&self, schema: &Value) -> Result<Grammar> {
        self.grammar(TopLevelGrammar::from_json_schema(with_json_layout(
            schema.clone(),
        )))
    }

    /// Output must match the regular expression `re` as a whole.
    pub fn regex(&self, re: &str) -> Result<Grammar> {
        self.grammar(TopLevelGrammar::from_regex(re))
    }

    /// Output must be one call (Hermes, Llama 3) or a call array (xLAM) to one of `tools`.
    pub fn tool_call(&self, format: ToolFormat, tools: &[Value]) -> Result<Grammar> {
        let call = with_json_layout(call_schema(format, tools)?);
        match format {
            ToolFormat::Hermes => {
                let lark = format!(
                    "start: {:?} %json {} {:?}\n",
                    format!("{}\n", hermes::OPEN),
                    call,
                    format!("\n{}", hermes::CLOSE)
                );
                self.grammar(TopLevelGrammar::from_lark(lark))
            }
            ToolFormat::Llama3Json => self.grammar(TopLevelGrammar::from_json_schema(call)),
            ToolFormat::Xlam => {
                let array = json!({"type": "array", "items": call, "minItems": 1});
                self.grammar(TopLevelGrammar::from_json_schema(with_json_layout(array)))
            }
        }
    }

    /// Either a plain answer or one tool call (an agent's turn). The call may come in the
    /// model's format or in the forms small models drift to — a fenced JSON block or bare JSON
    /// — which the format's parser reads too; JSON whitespace is free, so the model is not
    /// pushed off the layout it prefers. The answer may not start with what a call starts with,
    /// nor contain `<`, `{` or a backtick, so a reply is always readable as exactly one of the
    /// two. With no tools, only the answer.
    pub fn text_or_tool_call(&self, format: ToolFormat, tools: &[Value]) -> Result<Grammar> {
        if tools.is_empty() {
            return self.grammar(TopLevelGrammar::from_lark(format!(
                "start: TEXT\n{TEXT_RULE}"
            )));
        }
        let mut call = call_schema(format, tools)?;
        if format == ToolFormat::Xlam {
            call = json!({"type": "array", "items": call, "minItems": 1});
        }
        if let Value::Object(o) = &mut call {
            o.insert("x-guidance".into(), json!({"whitespace_flexible": true}));
        }
        let tagged = match format {
            ToolFormat::Hermes => format!(
                " | {:?} call {:?}",
                format!("{}\n", hermes::OPEN),
                format!("\n{}", hermes::CLOSE)
            ),
            _ => String::new(),
        };
        let lark = format!(
            "start: TEXT | call | \"```json\\n\" call \"\\n```\"{tagged}\ncall: %json {call}\n{TEXT_RULE}"
        );
        self.grammar(TopLevelGrammar::from_lark(lark))
    }
}

/// An agent's plain answer: not starting the way a call starts, and without `<`, `{` or a
/// backtick anywhere.
const TEXT_RULE: &str = "TEXT: /[^<{\\[\\s`][^<{`]*/\n";

/// Fix the JSON layout to Python's `json.dumps` style (`", "`, `": "`, no other whitespace)
/// unless the schema sets its own `x-guidance` options: free whitespace lets small models
/// wander into endless runs of newlines.
fn with_json_layout(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// The JSON schema of one call to any of `tools` in `format`'s key names, each tool's
/// arguments closed to those it declares (unless its schema says otherwise).
fn call_schema(format: ToolFormat, tools: &[Value]) -> Result<Value> {
    let args_key = if format == ToolFormat::Llama3Json {
        "parameters"
    } else {
        "arguments"
    };
    let mut options = Vec::new();
    for t in tools {
        let f = t.get("function").unwrap_or(t);
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| LlmError::Constraint(format!("tool without a name: {t}")))?;
        let mut params = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        // Arguments a tool does not declare would only earn an error observation, or change
        // a record the way no gold action does (a `memo` nobody asked for).
        if let Value::Object(p) = &mut params {
            p.entry("additionalProperties")
                .or_insert(Value::Bool(false));
        }
        options.push(json!({
            "type": "object",
            "properties": {"name": {"const": name}, args_key: params},
            "required": ["name", args_key],
            "additionalProperties": false,
        }));
    }
    if options.is_empty() {
        return Err(LlmError::Constraint(
            "a tool-call constraint needs at least one tool".into(),
        ));
    }
    Ok(if options.len() == 1 {
        options.remove(0)
    } else {
        json!({"anyOf": options})
    })
}

/// One reply's grammar state; a [`LogitsProcessor`] for [`Engine::generate`](crate::llm::Engine::generate).
pub struct Grammar {
    matcher: Matcher,
    mask_time_us: u128,
    steps: usize,
}

impl Grammar {
    /// Mean time spent computing a token mask, in microseconds.
    pub fn mean_mask_us(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.mask_time_us as f64 / self.steps as f64
        }
    }

    /// Whether the output so far is a complete match.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

impl LogitsProcessor for Grammar {
    fn process(&mut self, logits: &mut [f32]) -> Result<()> {
        let start = Instant::now();
        let mask = self.matcher.compute_mask_or_eos().map_err(err)?;
        let n = logits.len();
        mask.iter_unset_entries(|i| {
            if i < n {
                logits[i] = f32::NEG_INFINITY;
            }
        });
        // Entries past the mask's length (padding in the output layer) are never allowed.
        for l in logits.iter_mut().skip(mask.len()) {
            *l = f32::NEG_INFINITY;
        }
        self.mask_time_us += start.elapsed().as_micros();
        self.steps += 1;
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<bool> {
        self.matcher.consume_token(token).map_err(err)?;
        Ok(self.matcher.is_stopped())
    }
}
