//! Tests of `apigen_mt::llm`.

mod agreement;
mod support;
mod tokenizer;
