//! `apigen-mt domain ...`: check, replay, tools, generate.

use crate::domain::Domain;
use crate::domain::check;
use crate::domain::generate;
use crate::domain::task::Action;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Validate a domain: schemas, bodies, scripts, and a replay of every task's gold actions
    /// (no unknown actions; read tools never change the database; write tools do; the policy
    /// rules hold).
    Check(CheckArgs),
    /// Run actions read as JSON Lines on stdin and print each observation.
    ///
    /// Each input line is an action, `{"name": ..., "arguments": {...}}` (`kwargs` is accepted
    /// for `arguments`), or `{"reset": true}`. Each action prints `{"observation": "..."}`; each
    /// reset, and the end of input, prints `{"db_hash": "..."}` for the state before it;
    /// `{"db_hash": true}` prints the current hash without resetting. The first episode starts
    /// from the pristine database. A terminate tool adds `"done": true` to its observation.
    Replay(DbArgs),
    /// Print the tool schemas as a model sees them (OpenAI function format).
    Tools(DomainArg),
    /// Generate the domain's database with its seeded generator script.
    Generate(GenerateArgs),
    /// Time tau-bench's scoring work: for every task, reset, replay the gold actions, hash.
    /// Prints JSON with the load time, the loop time and the per-task hashes' digest.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Task files to replay (default: the domain's own task files).
    #[arg(long = "tasks", value_name = "FILE")]
    pub tasks: Vec<PathBuf>,
    /// Run the whole loop this many times and report the fastest.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

#[derive(Debug, Args)]
pub struct DomainArg {
    /// The domain folder (holding domain.toml).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// The domain folder (holding domain.toml).
    pub dir: PathBuf,
    /// Load the tables from this folder instead (e.g. tau-bench's own data files, unchanged).
    #[arg(long, value_name = "DATA")]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// More task files to replay (JSON array or JSON Lines, tau-bench's task shape).
    #[arg(long = "tasks", value_name = "FILE")]
    pub tasks: Vec<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The domain folder (holding domain.toml with a [generator] section).
    pub dir: PathBuf,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Size knobs, e.g. `users=200,orders=400` (defaults from domain.toml).
    #[arg(long, value_name = "K=V,...")]
    pub size: Option<String>,
    /// Where to write the table files (default: the domain's data folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: DomainCommand) -> Result<ExitCode> {
    match cmd {
        DomainCommand::Check(args) => run_check(args),
        DomainCommand::Replay(args) => run_replay(args),
        DomainCommand::Tools(args) => {
            let domain = load(&args.dir, None)?;
            println!("{}", serde_json::to_string_pretty(&domain.tool_schemas())?);
            Ok(ExitCode::SUCCESS)
        }
        DomainCommand::Generate(args) => run_generate(args),
        DomainCommand::Bench(args) => run_bench(args),
    }
}

fn load(dir: &std::path::Path, db: Option<&std::path::Path>) -> Result<Domain> {
    Domain::load(dir, db).with_context(|| format!("cannot load domain {}", dir.display()))
}

fn run_check(args: CheckArgs) -> Result<ExitCode> {
    let domain = match Domain::load(&args.db.dir, args.db.db.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("FAIL {}: {e}", args.db.dir.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = check::check(&domain, &args.tasks, args.db.db.is_none());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    for p in &report.problems {
        eprintln!("{}: {}", p.location, p.message);
    }
    let verdict = if report.problems.is_empty() {
        "ok"
    } else {
        "FAIL"
    };
    eprintln!(
        "{verdict} {}: {} tools, {} tasks, {} actions replayed, {} problems; db {} ({})",
        domain.name(),
        report.tools,
        report.tasks,
        report.actions,
        report.problems.len(),
        domain.db_dir.display(),
        &report.db_hash[..16],
    );
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_replay(args: DbArgs) -> Result<ExitCode> {
    let domain = load(&args.dir, args.db.as_deref())?;
    let mut env = domain.env();
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut bad_lines = 0usize;
    for (i, line) in stdin.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let record = match serde_json::from_str::<Value>(&line) {
            Ok(v) => v,
            Err(e) => {
                bad_lines += 1;
                eprintln!("stdin line {}: invalid JSON: {e}", i + 1);
                writeln!(
                    out,
                    "{}",
                    json!({"error": format!("line {}: invalid JSON: {e}", i + 1)})
                )?;
                out.flush()?;
                continue;
            }
        };
        if record.get("db_hash").and_then(Value::as_bool) == Some(true) {
            writeln!(out, "{}", json!({"db_hash": env.hash()}))?;
        } else if record.get("reset").and_then(Value::as_bool) == Some(true) {
            writeln!(out, "{}", json!({"db_hash": env.hash()}))?;
            env.reset();
        } else {
            match Action::from_json(&record) {
                Ok(action) => {
                    let step = env.step(&action);
                    let mut o = json!({"observation": step.observation});
                    if step.done {
                        o["done"] = Value::Bool(true);
                    }
                    writeln!(out, "{o}")?;
                }
                Err(e) => {
                    bad_lines += 1;
                    eprintln!("stdin line {}: {e}", i + 1);
                    writeln!(out, "{}", json!({"error": format!("line {}: {e}", i + 1)}))?;
                }
            }
        }
        out.flush()?;
    }
    writeln!(out, "{}", json!({"db_hash": env.hash()}))?;
    out.flush()?;
    Ok(if bad_lines == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_generate(args: GenerateArgs) -> Result<ExitCode> {
    let manifest_path = args.dir.join(crate::domain::manifest::MANIFEST_FILE);
    let manifest = crate::domain::manifest::Manifest::read(&args.dir)?;
    let Some(gen_section) = &manifest.generator else {
        bail!("{}: no [generator] section", manifest_path.display());
    };
    let mut size: BTreeMap<String, i64> = gen_section.size.clone();
    if let Some(spec) = &args.size {
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("--size: `{part}` is not KEY=VALUE"))?;
            let v: i64 = v
                .trim()
                .parse()
                .with_context(|| format!("--size: `{v}` is not an integer"))?;
            size.insert(k.trim().to_owned(), v);
        }
    }
    let script = args.dir.join(&gen_section.script);
    let started = std::time::Instant::now();
    let db = generate::generate(
        &script,
        args.seed,
        &size,
        &manifest.db.tables,
        gen_section.limits(),
    )
    .map_err(anyhow::Error::msg)?;
    let out = args.out.unwrap_or_else(|| args.dir.join(&manifest.db.dir));
    generate::write_db(&db, &out).with_context(|| format!("writing {}", out.display()))?;
    let counts: Vec<String> = db
        .table_names()
        .map(|t| format!("{t}={}", db.table(t).map_or(0, |x| x.len())))
        .collect();
    eprintln!(
        "generated {} (seed {}) in {:.2}s: {} → {}",
        manifest.name,
        args.seed,
        started.elapsed().as_secs_f64(),
        counts.join(", "),
        out.display()
    );
    println!("{}", json!({"db_hash": db.hash()}));
    Ok(ExitCode::SUCCESS)
}

fn run_bench(args: BenchArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let domain = load(&args.db.dir, args.db.db.as_deref())?;
    let files: Vec<PathBuf> = if args.tasks.is_empty() {
        domain.task_files().into_iter().map(|(_, p)| p).collect()
    } else {
        args.tasks.clone()
    };
    let mut tasks = Vec::new();
    for f in &files {
        tasks.extend(crate::domain::task::read_tasks(f)?);
    }
    let load_s = started.elapsed().as_secs_f64();
    let mut best = f64::INFINITY;
    let mut hashes = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let t = std::time::Instant::now();
        hashes = check::gold_hashes(&domain, &tasks);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let actions: usize = tasks.iter().map(|t| t.actions.len()).sum();
    let digest = crate::domain::db::hex(&sha2::Sha256::digest(hashes.join("\n").as_bytes()));
    println!(
        "{}",
        json!({
            "domain": domain.name(),
            "tasks": tasks.len(),
            "actions": actions,
            "load_s": load_s,
            "loop_s": best,
            "ms_per_task": best * 1000.0 / tasks.len().max(1) as f64,
            "gold_hashes_sha256": digest,
        })
    );
    Ok(ExitCode::SUCCESS)
}
