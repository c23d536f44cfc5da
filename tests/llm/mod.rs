//! Tests of `apigen_mt::llm`.

mod support;
mod tokenizer;
