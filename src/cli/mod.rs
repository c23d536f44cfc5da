//! Command-line interface: flags are parsed here, resolved into ready objects, and handed to
//! the library. Data goes to stdout, logs and errors to stderr.

pub mod blueprints;
pub mod chat;
pub mod domain;
pub mod export;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Verified multi-turn tool-use data and agent evaluation on local models.
#[derive(Debug, Parser)]
#[command(name = "apigen-mt", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Phase 1: generate verified task blueprints into a run directory (resumable).
    Blueprints(blueprints::BlueprintsArgs),
    /// Export a run's kept conversations as training data (APIGen-MT, OpenAI or ShareGPT).
    Export(export::ExportArgs),
    /// Inspect, check, replay, generate and benchmark executable domains.
    #[command(subcommand)]
    Domain(domain::DomainCommand),
    /// Talk to a model interactively, optionally as a domain's agent (`--domain DIR`).
    Chat(chat::ChatCommand),
    /// Model profiles: list, show, check, tokenize, complete.
    Models(crate::llm::cli::ModelsArgs),
    /// Prefill and decode speed of a model (JSON).
    Bench(crate::llm::cli::BenchArgs),
}

/// Parse the command line, run it, and turn errors into a message and an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Domain(cmd) => domain::run(cmd),
        Command::Models(args) => crate::llm::cli::run_models(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => crate::llm::cli::run_bench(args).map(|()| ExitCode::SUCCESS),
        Command::Chat(args) => chat::run(args),
        Command::Export(args) => export::run(args),
        Command::Blueprints(args) => blueprints::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
