//! `apigen-mt chat`: talk to a model by hand, optionally as the agent of a domain (its policy as
//! the system prompt, its tools offered, and every tool call run in the domain's environment).

use super::repl::ChatArgs;
use crate::domain::Domain;
use crate::domain::task::Action;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ChatCommand {
    #[command(flatten)]
    pub chat: ChatArgs,
    /// Act as this domain's agent: policy as system prompt, its tools, calls executed for real.
    #[arg(long, value_name = "DIR")]
    pub domain: Option<PathBuf>,
    /// With --domain: load the tables from this folder instead.
    #[arg(long, value_name = "DATA", requires = "domain")]
    pub db: Option<PathBuf>,
}

pub fn run(cmd: ChatCommand) -> Result<ExitCode> {
    let Some(dir) = &cmd.domain else {
        super::repl::run(cmd.chat)?;
        return Ok(ExitCode::SUCCESS);
    };
    let domain = Domain::load(dir, cmd.db.as_deref())
        .with_context(|| format!("cannot load domain {}", dir.display()))?;
    let mut args = cmd.chat;
    if args.system.is_none() {
        args.system = Some(domain.policy.clone());
    }
    let tools = domain.tool_schemas();
    let mut env = domain.env();
    let mut executor = |call: &crate::llm::ToolCall| {
        let arguments = call.arguments.as_object().cloned().unwrap_or_default();
        let step = env.step(&Action::new(call.name.clone(), arguments));
        if step.done {
            eprintln!("[{} ends the episode]", call.name);
        }
        step.observation
    };
    super::repl::run_with(args, tools, Some(&mut executor))?;
    eprintln!("final database hash {}", env.hash());
    Ok(ExitCode::SUCCESS)
}
