//! Development entry point for the inference layer (the project's real `main` embeds the same
//! subcommands in its own argument tree).

use clap::{Parser, Subcommand};

use apigen_mt::llm::cli;

#[derive(Parser)]
#[command(name = "apigen-mt")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model profiles: list, show, check, tokenize, complete.
    Models(cli::ModelsArgs),
    /// Prefill and decode speed of a model.
    Bench(cli::BenchArgs),
    /// Talk to a model interactively.
    Chat(cli::ChatArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Models(a) => cli::run_models(a),
        Command::Bench(a) => cli::run_bench(a),
        Command::Chat(a) => cli::run_chat(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
