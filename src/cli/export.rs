//! `apigen-mt export`: a run's kept conversations in a training format.

use crate::dataset::{self, Format};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory (its `dataset.jsonl` is read) or a JSON Lines file of canonical records.
    pub run: PathBuf,
    /// `apigen-mt` (APIGen-MT-5k rows, one JSON array), `openai` (JSON Lines of
    /// `{"messages", "tools"}`) or `sharegpt` (ShareGPT tool-use rows, one JSON array).
    #[arg(long, value_enum)]
    pub format: Format,
    /// Write here (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let input = if args.run.is_dir() {
        args.run.join(crate::run::files::DATASET)
    } else {
        args.run.clone()
    };
    let text =
        std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: invalid JSON", input.display(), i + 1))?;
        rows.push(
            dataset::export(&record, args.format)
                .with_context(|| format!("{}:{}", input.display(), i + 1))?,
        );
    }
    let body = match args.format {
        Format::Openai => rows
            .iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>(),
        Format::ApigenMt | Format::Sharegpt => serde_json::to_string_pretty(&rows)? + "\n",
    };
    match &args.out {
        Some(path) => crate::run::write_atomic(path, body.as_bytes())?,
        None => print!("{body}"),
    }
    let name = clap::ValueEnum::to_possible_value(&args.format)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    eprintln!("exported {} conversations as {name}", rows.len());
    Ok(ExitCode::SUCCESS)
}
