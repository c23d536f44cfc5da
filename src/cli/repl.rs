//! `chat --model NAME`: an interactive conversation with a local model, for trying prompts by
//! hand. Tool calls are shown as JSON; an executor (the domain layer's, when the binary wires
//! one in) or the person at the keyboard supplies their results.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::load::{LoadArgs, SamplingArgs};
use crate::llm::backend::{Backend, ChatRequest, Conversation};
use crate::llm::chat::{Message, ToolCall};
use crate::llm::local::LocalBackend;
use crate::llm::tools::ModelOutput;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Profile name or checkpoint path.
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    pub model: String,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// JSON file with an array of tool schemas to offer the model.
    #[arg(long)]
    pub tools: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Runs a tool call and returns the observation text.
pub type Executor<'a> = dyn FnMut(&ToolCall) -> String + 'a;

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let tools = match &args.tools {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )?,
        None => vec![],
    };
    run_with(args, tools, None)
}

/// The chat loop with tools and, optionally, an executor for their calls (without one, the
/// user types each result).
pub fn run_with(
    args: ChatArgs,
    tools: Vec<Value>,
    mut executor: Option<&mut Executor<'_>>,
) -> anyhow::Result<()> {
    let engine = args.load.load(&args.model)?;
    let backend = LocalBackend::new(Arc::new(engine))?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut conversation = Conversation::new();
    let mut messages: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::system(s.clone()))
        .collect();
    eprintln!(
        "chat with {} ({} tools). /reset starts over, /quit or end of input leaves.",
        backend.name(),
        tools.len()
    );
    loop {
        eprint!("you> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "/quit" => break,
            "/reset" => {
                conversation = Conversation::new();
                messages.retain(|m| m.role == "system");
                continue;
            }
            "" => continue,
            text => messages.push(Message::user(text)),
        }
        // Keep replying while the model calls tools.
        for _ in 0..8 {
            let mut req = ChatRequest::new(messages.clone());
            req.tools = tools.clone();
            req.max_tokens = args.max_tokens;
            req.sampling = args.sampling.params();
            let reply = backend.reply(&mut conversation, &req)?;
            eprintln!(
                "[{} prompt tokens, {} cached, {} generated, {:.1} tok/s]",
                reply.usage.prompt_tokens,
                reply.usage.cached_tokens,
                reply.usage.completion_tokens,
                reply.usage.completion_tokens as f64 / (reply.usage.decode_ms / 1e3).max(1e-9)
            );
            match reply.output {
                ModelOutput::Text { content } => {
                    println!("assistant> {content}");
                    messages.push(Message::assistant(content));
                    break;
                }
                ModelOutput::Malformed { reason, raw } => {
                    println!("assistant (malformed tool call: {reason})> {raw}");
                    messages.push(Message::assistant(raw));
                    break;
                }
                ModelOutput::ToolCalls { calls, content } => {
                    if !content.is_empty() {
                        println!("assistant> {content}");
                    }
                    let mut msg = Message::assistant_calls(calls.clone());
                    msg.content = content;
                    messages.push(msg);
                    for call in &calls {
                        println!("tool call> {}", serde_json::to_string(call)?);
                        let result = match executor.as_deref_mut() {
                            Some(run) => run(call),
                            None => {
                                eprint!("result of {}> ", call.name);
                                std::io::stderr().flush()?;
                                lines.next().transpose()?.unwrap_or_default()
                            }
                        };
                        println!("tool result> {result}");
                        messages.push(Message::tool(&call.name, result));
                    }
                }
            }
        }
    }
    Ok(())
}
