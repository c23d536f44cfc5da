//! Tests of `apigen_mt::llm`.

mod agreement;
mod constrained;
mod support;
mod tokenizer;
