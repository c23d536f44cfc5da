//! `apigen-mt report`: a run directory as one self-contained HTML page.

use crate::blueprint::pipeline::BlueprintRecord;
use crate::domain::Domain;
use crate::report::{self, RunData};
use crate::run::files;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  apigen-mt report runs/retail                 # writes runs/retail/report.html
  apigen-mt report runs/eval --domain domains/retail --out /tmp/eval.html")]
pub struct ReportArgs {
    /// A run directory of `blueprints`, `rollouts`, `generate` or `eval`.
    pub run: PathBuf,
    /// Write the page here (default: RUN/report.html).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The run's domain, for tool coverage and the database changes of each conversation
    /// (default: the folder its `config.toml` names, where it records one).
    #[arg(long, value_name = "DIR")]
    pub domain: Option<PathBuf>,
    /// The domain's database folder, when the run used `--db`.
    #[arg(long, value_name = "DIR")]
    pub db: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    let dir = &args.run;
    if !dir.is_dir() {
        bail!("{}: not a run directory", dir.display());
    }
    let config = read_toml(&dir.join(files::CONFIG))?;
    let rollouts_config = read_toml(&dir.join(files::ROLLOUTS_CONFIG))?;
    let summary = read_json(&dir.join(files::SUMMARY))?;
    let results = read_json(&dir.join(files::RESULTS))?;
    let items = read_lines(&dir.join(files::ITEMS))?;
    let mut blueprints = read_lines(&dir.join(files::BLUEPRINTS))?;
    let mut rejected = read_lines(&dir.join(files::REJECTED))?;
    if dir.join(files::ITEMS).exists() {
        // Side records of an item a crash left uncommitted are not part of the run.
        let committed: std::collections::HashSet<&str> =
            items.iter().filter_map(|i| i["id"].as_str()).collect();
        blueprints.retain(|b| b["id"].as_str().is_some_and(|id| committed.contains(id)));
        rejected.retain(|r| r["id"].as_str().is_some_and(|id| committed.contains(id)));
    }
    let trajectories = read_lines(&dir.join(files::TRAJECTORIES))?;
    if config.is_null() && summary.is_null() && items.is_empty() && trajectories.is_empty() {
        bail!(
            "{}: no run here (no {}, {} or records)",
            dir.display(),
            files::CONFIG,
            files::SUMMARY
        );
    }
    let kind = if !results.is_null() || config.get("tasks").is_some() {
        "eval"
    } else if !rollouts_config.is_null() {
        "generate"
    } else if dir.join(files::ITEMS).exists() {
        "blueprints"
    } else {
        "rollouts"
    };

    let mut tasks = std::collections::HashMap::new();
    for (i, b) in blueprints.iter().enumerate() {
        let b: BlueprintRecord = serde_json::from_value(b.clone()).with_context(|| {
            format!(
                "{}:{}: not a blueprint record",
                dir.join(files::BLUEPRINTS).display(),
                i + 1
            )
        })?;
        tasks.insert(b.id.clone(), b.task());
    }
    // A `rollouts` run names the blueprints it rolled out; an eval, its task file.
    for key in ["blueprints", "tasks"] {
        let Some(path) = config.get(key).and_then(Value::as_str) else {
            continue;
        };
        match super::rollouts::read_identified_tasks(Path::new(path)) {
            Ok(list) => tasks.extend(list),
            Err(e) => eprintln!(
                "note: the run's tasks are not readable ({e:#}); the database changes of its conversations are not shown"
            ),
        }
    }

    let (domain, note) = domain_for(&args, &config);
    let out = args.out.clone().unwrap_or_else(|| dir.join(files::REPORT));
    let data = RunData {
        title: dir.display().to_string(),
        kind: kind.into(),
        config,
        rollouts_config,
        summary,
        results,
        items,
        blueprints,
        rejected,
        trajectories,
        tasks,
    };
    let (html, counts) = report::render(data, domain.as_ref(), &note);
    crate::run::write_atomic(&out, html.as_bytes())?;
    eprintln!(
        "wrote {} ({:.1} MB): {} conversations ({} replayed on the domain), {} blueprints, {} rejected proposals",
        out.display(),
        html.len() as f64 / 1e6,
        counts.conversations,
        counts.replayed,
        counts.blueprints,
        counts.rejected
    );
    if domain.is_none() {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The run's domain, if it can be loaded and is the one the run used; otherwise why not.
fn domain_for(args: &ReportArgs, config: &Value) -> (Option<Domain>, String) {
    let pinned = config.get("domain");
    let dir = args.domain.clone().or_else(|| {
        pinned
            .and_then(|d| d.get("dir"))
            .and_then(Value::as_str)
            .map(PathBuf::from)
    });
    let Some(dir) = dir else {
        return (
            None,
            "the run does not record its domain's folder; pass --domain DIR".into(),
        );
    };
    let db = args.db.clone().or_else(|| {
        pinned
            .and_then(|d| d.get("db"))
            .and_then(Value::as_str)
            .map(PathBuf::from)
    });
    let domain = match Domain::load(&dir, db.as_deref()) {
        Ok(d) => d,
        Err(e) => return (None, format!("cannot load {}: {e}", dir.display())),
    };
    if let Some(want) = pinned
        .and_then(|d| d.get("db_hash"))
        .and_then(Value::as_str)
    {
        let have = domain.pristine().hash();
        if have != want {
            return (
                None,
                format!(
                    "{} holds another database than the run used (hash {} against the run's {})",
                    dir.display(),
                    &have[..12.min(have.len())],
                    &want[..12.min(want.len())]
                ),
            );
        }
    }
    (Some(domain), String::new())
}

/// A TOML file as JSON, or null when it does not exist.
pub(crate) fn read_toml(path: &Path) -> Result<Value> {
    if !path.exists() {
        return Ok(Value::Null);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: toml::Value =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
    Ok(serde_json::to_value(v)?)
}

/// A JSON file, or null when it does not exist.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    if !path.exists() {
        return Ok(Value::Null);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// A run's JSON Lines records (empty when the file does not exist); a last line cut short by a
/// crash is left out, as a resumed run would.
fn read_lines(path: &Path) -> Result<Vec<Value>> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(Vec::new());
    };
    let (records, _) = crate::run::read_records(path, std::io::BufReader::new(file))?;
    Ok(records)
}
