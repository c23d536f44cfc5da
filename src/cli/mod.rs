//! Command-line interface: flags are parsed here, resolved into ready objects, and handed to
//! the library. Data goes to stdout, logs and errors to stderr.

pub mod bench;
pub mod blueprints;
pub mod chat;
pub mod domain;
pub mod eval;
pub mod export;
pub mod load;
pub mod models;
pub mod repl;
pub mod report;
pub mod rollouts;

use crate::cli::load::LoadArgs;
use crate::llm::Backend;
use crate::llm::local::LocalBackend;
use crate::llm::profile::{ModelRole, Profile};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

/// Models loaded once per process and shared by every role that names them.
pub struct Models {
    load: LoadArgs,
    loaded: BTreeMap<String, Arc<dyn Backend>>,
}

impl Models {
    pub fn new(load: LoadArgs) -> Self {
        Models {
            load,
            loaded: BTreeMap::new(),
        }
    }

    /// The backend for a profile name or model file, loading it on first use.
    pub fn get(&mut self, name: &str) -> anyhow::Result<Arc<dyn Backend>> {
        if let Some(b) = self.loaded.get(name) {
            return Ok(b.clone());
        }
        let engine = self.load.load(name)?;
        let b: Arc<dyn Backend> = Arc::new(LocalBackend::new(Arc::new(engine))?);
        self.loaded.insert(name.to_owned(), b.clone());
        Ok(b)
    }

    pub fn load_args(&self) -> &LoadArgs {
        &self.load
    }
}

/// The default model's profile name for one role (see `default_for` in `models/*.toml`).
pub fn default_model_for(role: ModelRole) -> anyhow::Result<String> {
    Ok(Profile::default_for_role(role)?.name)
}

/// sha256 of a profile's files, where the profile pins them (empty for a path that is not a
/// profile).
pub fn model_hashes(name: &str) -> Vec<Option<String>> {
    Profile::find(name)
        .map(|p| p.files.iter().map(|f| f.sha256.clone()).collect())
        .unwrap_or_default()
}

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
    #[command(
        after_help = "Examples:\n  apigen-mt blueprints --domain domains/retail --count 20 --out runs/bp\n  apigen-mt blueprints --domain domains/mock --count 6 --proposer qwen2.5-coder-0.5b --out runs/mock"
    )]
    Blueprints(blueprints::BlueprintsArgs),
    /// Phase 2: simulated user ⇄ agent conversations for a run's blueprints (resumable).
    #[command(
        after_help = "Examples:\n  apigen-mt rollouts --blueprints runs/bp/blueprints.jsonl --out runs/bp\n  apigen-mt rollouts --blueprints runs/bp/blueprints.jsonl --trials 3 --out runs/bp"
    )]
    Rollouts(rollouts::RolloutsArgs),
    /// Phase 1 then phase 2 in one run directory: blueprints, then verified conversations.
    #[command(
        after_help = "Examples:\n  apigen-mt generate --domain domains/retail --count 10 --out runs/retail\n  apigen-mt generate --domain domains/airline --count 50 --concurrency 32 --out runs/airline"
    )]
    Generate(rollouts::GenerateArgs),
    /// Score an agent model on tau-bench-style tasks with pass^k (resumable).
    #[command(
        after_help = "Examples:\n  apigen-mt eval --domain domains/retail --tasks ../shared/taubench/retail/tasks_test.json --task-ids 0-4 --trials 2 --out runs/eval\n  apigen-mt eval --domain domains/mock --tasks runs/mock/blueprints.jsonl --agent qwen2.5-coder-0.5b --out runs/mock-eval"
    )]
    Eval(eval::EvalArgs),
    /// One self-contained HTML page for a run: funnels, codes, cost, and every conversation.
    Report(report::ReportArgs),
    /// Export a run's kept conversations as training data (APIGen-MT, OpenAI or ShareGPT).
    #[command(
        after_help = "Examples:\n  apigen-mt export runs/retail --out retail/train.jsonl\n  apigen-mt export runs/retail --format sharegpt > retail-sharegpt.json"
    )]
    Export(export::ExportArgs),
    /// Inspect, check, replay, generate and benchmark executable domains.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  apigen-mt domain check domains/retail\n  apigen-mt domain tools domains/mock | head"
    )]
    Domain(domain::DomainCommand),
    /// Talk to a model interactively, optionally as a domain's agent (`--domain DIR`).
    #[command(
        after_help = "Examples:\n  apigen-mt chat --domain domains/mock\n  apigen-mt chat --model qwen2.5-coder-0.5b"
    )]
    Chat(chat::ChatCommand),
    /// Model profiles: list, show, check, tokenize, complete.
    #[command(
        after_help = "Examples:\n  apigen-mt models list\n  apigen-mt models check qwen2.5-coder-1.5b"
    )]
    Models(models::ModelsArgs),
    /// Prefill and decode speed of a model (JSON).
    #[command(
        after_help = "Examples:\n  apigen-mt bench qwen2.5-coder-0.5b --batch 1,2,4,8,16\n  apigen-mt bench qwen2.5-coder-1.5b --prefill-tokens 4096 --threads 2"
    )]
    Bench(bench::BenchArgs),
    /// Internal: the script host a run starts to isolate script calls (JSON Lines on stdin).
    #[command(name = "__script-host", hide = true)]
    ScriptHost(ScriptHostArgs),
}

/// `--concurrency`, for every command that runs many units (items, episodes, trials).
#[derive(Debug, Clone, clap::Args)]
pub struct Concurrency {
    /// Units in flight at once: phase-1 items, phase-2 episodes, eval trials. Their model
    /// replies are decoded together, up to 16 sequences in one forward pass, so the default
    /// keeps that batch about full. The files written are the same for any value: units are
    /// committed in id order (phase 1 runs at most 17 items at once, see `docs/blueprints.md`).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
}

#[derive(Debug, clap::Args)]
pub struct ScriptHostArgs {
    /// Folder of tool bodies to compile.
    #[arg(long)]
    pub scripts: Option<std::path::PathBuf>,
    /// Folder of policy rules to compile.
    #[arg(long)]
    pub rules: Option<std::path::PathBuf>,
    /// Memory bound for compiling the folders.
    #[arg(long, default_value_t = crate::domain::script::Limits::default().max_heap_bytes)]
    pub max_heap_bytes: usize,
}

/// `apigen-mt ... | head` closes stdout early: the reader has all it wants, so end quietly with
/// status 0 (a pipeline under `set -o pipefail` stays green) instead of a panic from
/// `println!`. SIGPIPE itself stays ignored, so that writing to a script host that has died is
/// an error the caller handles, not a signal.
fn end_quietly_on_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// Parse the command line, run it, and turn errors into a message and an exit code.
pub fn main() -> ExitCode {
    end_quietly_on_broken_pipe();
    let cli = Cli::parse();
    #[cfg(unix)]
    if let Ok(program) = std::env::current_exe() {
        crate::domain::script::host::enable(program);
    }
    let result = match cli.command {
        Command::ScriptHost(args) => crate::domain::script::host::serve(
            args.scripts.as_deref(),
            args.rules.as_deref(),
            args.max_heap_bytes,
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Domain(cmd) => domain::run(cmd),
        Command::Models(args) => models::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Chat(args) => chat::run(args),
        Command::Export(args) => export::run(args),
        Command::Report(args) => report::run(args),
        Command::Blueprints(args) => blueprints::run(args),
        Command::Rollouts(args) => rollouts::run(args),
        Command::Generate(args) => rollouts::generate(args),
        Command::Eval(args) => eval::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    /// Every example in a `--help` parses as the command line it shows.
    #[test]
    fn every_help_example_parses() {
        fn walk(cmd: &clap::Command, seen: &mut usize) {
            if let Some(help) = cmd.get_after_help() {
                for line in help.to_string().lines() {
                    let Some(start) = line.find("apigen-mt ") else {
                        continue;
                    };
                    // The command itself: up to a pipe, a redirect or a comment.
                    let text = line[start..]
                        .split(['|', '>', '#'])
                        .next()
                        .unwrap_or_default();
                    let args: Vec<&str> = text.split_whitespace().collect();
                    if let Err(e) = Cli::try_parse_from(&args) {
                        panic!("the example `{}` does not parse: {e}", text.trim());
                    }
                    *seen += 1;
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, seen);
            }
        }
        let mut seen = 0;
        let cmd = Cli::command();
        walk(&cmd, &mut seen);
        let visible = cmd.get_subcommands().filter(|c| !c.is_hide_set()).count();
        assert!(
            seen >= 2 * visible,
            "{seen} examples for {visible} commands"
        );
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:"),
                "`{}` has no examples",
                sub.get_name()
            );
        }
    }
}
