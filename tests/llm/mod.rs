//! Tests of `apigen_mt::llm`.

mod agreement;
mod batch;
mod chat;
mod constrained;
mod hub;
mod scripted;
mod support;
mod tiny;
mod tokenizer;
