//! `apigen-mt export`: a run's kept conversations in a training format.

use crate::dataset::{self, Format};
use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory (its `dataset.jsonl` is read) or a JSON Lines file of canonical records.
    pub run: PathBuf,
    /// `messages` (the default: JSON Lines in the Hugging Face messages form, tool-call
    /// arguments as objects, for chat templates and TRL), `apigen-mt` (APIGen-MT-5k rows, one
    /// JSON array), `openai` (JSON Lines of `{"messages", "tools"}`, arguments as strings, for
    /// fine-tuning APIs) or `sharegpt` (ShareGPT tool-use rows, one JSON array).
    #[arg(long, value_enum, default_value = "messages")]
    pub format: Format,
    /// Write here (atomically) instead of stdout. With a run directory as input, a dataset card
    /// (`README.md`, the Hugging Face form) is written beside it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the dataset card here instead (default: README.md beside `--out`; an existing
    /// README.md that `export` did not write is left alone).
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
    /// Write no dataset card.
    #[arg(long, conflicts_with = "card")]
    pub no_card: bool,
    /// The run's domain, for the card's licence (default: the folder its `config.toml` names,
    /// relative to where the run was started).
    #[arg(long, value_name = "DIR")]
    pub domain: Option<PathBuf>,
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
        Format::Openai | Format::Messages => rows
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
    if args.run.is_dir() && !args.no_card {
        let card_path = args.card.clone().or_else(|| {
            args.out
                .as_ref()
                .map(|o| o.parent().unwrap_or(Path::new(".")).join("README.md"))
        });
        if let Some(path) = card_path {
            let mine = std::fs::read_to_string(&path)
                .map(|t| t.contains(card::MARK))
                .unwrap_or(true);
            if !mine && args.card.is_none() {
                eprintln!(
                    "note: {} exists and was not written by export; the dataset card was not written (--card FILE writes it elsewhere)",
                    path.display()
                );
            } else {
                let data_file = args
                    .out
                    .as_ref()
                    .and_then(|o| o.file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "data.jsonl".into());
                let text = card::card(
                    &args.run,
                    args.domain.as_deref(),
                    args.format,
                    &name,
                    &data_file,
                    rows.len(),
                )?;
                crate::run::write_atomic(&path, text.as_bytes())?;
                eprintln!("wrote the dataset card {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The dataset card: the Hugging Face `README.md` form, from the run's pinned settings and
/// summary.
mod card {
    use crate::cli::report::{read_json, read_toml};
    use crate::dataset::Format;
    use crate::domain::manifest::{MANIFEST_FILE, Manifest};
    use crate::run::files;
    use anyhow::Result;
    use serde_json::Value;
    use std::fmt::Write;
    use std::path::Path;

    /// Marks a card `export` wrote, so that a re-export may replace it.
    pub const MARK: &str = "<!-- dataset card written by apigen-mt export -->";

    /// A run file as JSON; a missing or unreadable one leaves its part of the card out.
    fn read_or_null(read: fn(&Path) -> Result<Value>, path: &Path) -> Value {
        read(path).unwrap_or(Value::Null)
    }

    /// Hugging Face's licence ids are SPDX identifiers in lower case.
    fn hub_license(spdx: &str) -> String {
        spdx.to_lowercase()
    }

    pub fn card(
        run: &Path,
        domain_dir: Option<&Path>,
        format: Format,
        name: &str,
        data_file: &str,
        rows: usize,
    ) -> Result<String> {
        let config = read_or_null(read_toml, &run.join(files::CONFIG));
        let phase2 = match read_or_null(read_toml, &run.join(files::ROLLOUTS_CONFIG)) {
            Value::Null => config.clone(),
            v => v,
        };
        let summary = read_or_null(read_json, &run.join(files::SUMMARY));
        let domain_name = config["domain"]["name"]
            .as_str()
            .or(phase2["domain"]["name"].as_str())
            .unwrap_or("unknown");
        let dir = domain_dir
            .map(Path::to_path_buf)
            .or_else(|| config["domain"]["dir"].as_str().map(Into::into));
        let manifest: Option<Manifest> = dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join(MANIFEST_FILE)).ok())
            .and_then(|t| toml::from_str(&t).ok());
        if manifest.is_none() {
            eprintln!(
                "note: the domain's domain.toml was not found ({}), so the card states no licence; pass --domain DIR",
                dir.map_or("the run names no folder".into(), |d| d
                    .display()
                    .to_string())
            );
        }
        let license = manifest.as_ref().and_then(|m| m.license.clone());
        let mut models: Vec<(String, String)> = Vec::new();
        let mut add = |role: &str, v: &Value| {
            if let Some(m) = v["model"].as_str() {
                let lic = crate::llm::profile::Profile::find(m)
                    .map(|p| p.license)
                    .unwrap_or_else(|_| "see the model's own card".into());
                models.push((format!("{role}: `{m}`"), lic));
            }
        };
        add("proposer", &config["proposer"]);
        if let Some(r) = config["reviewers"].as_array().and_then(|r| r.first()) {
            let n = config["reviewers"].as_array().map_or(0, Vec::len);
            add(&format!("reviewers (×{n})"), r);
        }
        add("agent", &phase2["agent"]);
        add("user", &phase2["user"]);

        let size = match rows {
            0..1000 => "n<1K",
            1000..10000 => "1K<n<10K",
            10000..100000 => "10K<n<100K",
            _ => "100K<n<1M",
        };
        let mut c = String::new();
        writeln!(c, "---")?;
        writeln!(
            c,
            "license: {}",
            license
                .as_deref()
                .map(hub_license)
                .unwrap_or_else(|| "other".into())
        )?;
        writeln!(c, "language:\n- en")?;
        writeln!(c, "task_categories:\n- text-generation")?;
        writeln!(
            c,
            "tags:\n- tool-use\n- function-calling\n- multi-turn\n- synthetic\n- apigen-mt\n- {domain_name}"
        )?;
        writeln!(c, "size_categories:\n- {size}")?;
        writeln!(c, "pretty_name: apigen-mt {domain_name} conversations")?;
        writeln!(
            c,
            "configs:\n- config_name: default\n  data_files: {data_file}"
        )?;
        writeln!(c, "---")?;
        writeln!(c, "{MARK}\n")?;
        writeln!(c, "# apigen-mt {domain_name} conversations\n")?;
        writeln!(
            c,
            "{rows} multi-turn tool-use conversations between a simulated customer and a tool-calling agent in the `{domain_name}` domain, generated with apigen-mt {} on local open-weight models. Each was kept only because the database its tool calls produced equals the state the task's ground-truth actions produce and the agent said every expected output (APIGen-MT's two-phase method: verified task blueprints, then simulated conversations).\n",
            env!("CARGO_PKG_VERSION")
        )?;
        writeln!(c, "## Source and licence\n")?;
        match (
            &license,
            manifest.as_ref().and_then(|m| m.attribution.clone()),
        ) {
            (Some(l), Some(a)) => writeln!(c, "Domain material under {l}. {a}\n")?,
            (Some(l), None) => writeln!(c, "Domain material under {l}.\n")?,
            (None, _) => writeln!(
                c,
                "The domain's licence is not stated here; check it before publishing.\n"
            )?,
        }
        if !models.is_empty() {
            writeln!(
                c,
                "Models (each under its own licence; check their terms for generated data):\n"
            )?;
            for (m, l) in &models {
                writeln!(c, "- {m} ({l})")?;
            }
            writeln!(c)?;
        }
        writeln!(c, "## How it was made\n")?;
        let f = &summary["funnel"];
        if f.is_object() {
            writeln!(
                c,
                "Phase 1 (blueprints): {} proposals → {} well-formed → {} executed → {} within policy → {} grounded → {} passed the review committee → {} accepted.\n",
                f["proposed"],
                f["format_ok"],
                f["executed"],
                f["policy_ok"],
                f["grounded"],
                f["committee_ok"],
                f["accepted"]
            )?;
        }
        let r = &summary["rollouts"];
        if r.is_object() {
            writeln!(
                c,
                "Phase 2 (conversations): {} attempts → {} verified → {} kept ({} verified but filtered by a keep rule).\n",
                r["rollouts"],
                r["verified"],
                r["kept"],
                r["filtered"].as_u64().unwrap_or(0)
            )?;
        }
        let settings = &config["settings"];
        if settings.is_object() {
            writeln!(
                c,
                "Settings: seed {}, {} tasks asked for, plan `{}`; phase 2 with {} trial(s) per task, agent temperature {}. Every setting is in the run's `config.toml` and `rollouts.toml`.\n",
                settings["seed"],
                settings["count"],
                settings["plan"].as_str().unwrap_or("?"),
                phase2["trials"],
                phase2["agent"]["temperature"]
            )?;
        }
        writeln!(c, "## Format\n")?;
        let shape = match format {
            Format::Messages => {
                "JSON Lines; each row `{\"id\", \"messages\", \"tools\"}` in the Hugging Face messages form: `system` (the policy), `user`, `assistant` with `tool_calls` whose `function.arguments` is a JSON object, and `tool` answers; `tools` are the function schemas as chat templates take them. Render a row with `tokenizer.apply_chat_template(row[\"messages\"], tools=row[\"tools\"])`, as TRL's SFT trainer does."
            }
            Format::Openai => {
                "JSON Lines; each row `{\"messages\", \"tools\"}`: OpenAI chat messages (`system` policy, `user`, `assistant` with `tool_calls` whose `function.arguments` is a JSON string, `tool` answers) and the OpenAI function schemas offered to the agent."
            }
            Format::ApigenMt => {
                "one JSON array of APIGen-MT-5k rows: `conversations` (`from` human / gpt / function_call / observation, `value`), `system` (the policy) and `tools` (a JSON string of function definitions)."
            }
            Format::Sharegpt => {
                "one JSON array of ShareGPT tool-use rows (LLaMA-Factory's layout): `id`, `conversations`, `system`, `tools`."
            }
        };
        writeln!(c, "`{data_file}` (`{name}`): {shape}\n")?;
        writeln!(c, "## Loading\n")?;
        writeln!(
            c,
            "```python\nfrom datasets import load_dataset\n\nds = load_dataset(\"json\", data_files=\"{data_file}\", split=\"train\")\n```\n"
        )?;
        if format == Format::Messages {
            writeln!(
                c,
                "Tool schemas and call arguments have different keys from tool to tool. Recent `datasets` versions read them as their `Json` feature and give rows back as written; older ones (3.x) store them as Arrow structs, so a row read back carries every key any row has, `None` where it had none. Drop those before rendering:\n"
            )?;
            writeln!(
                c,
                "```python\ndef strip(x):\n    if isinstance(x, dict):\n        return {{k: strip(v) for k, v in x.items() if v is not None}}\n    if isinstance(x, list):\n        return [strip(v) for v in x]\n    return x\n\nrow = strip(ds[0])\ntext = tokenizer.apply_chat_template(row[\"messages\"], tools=row[\"tools\"], tokenize=False)\n```\n"
            )?;
        }
        writeln!(c, "## Limitations\n")?;
        writeln!(
            c,
            "Synthetic: the customer is a language model following an instruction, and both sides were played by small local models. Verification checks the final database and the expected outputs, not the wording of every turn; read a sample before training on it (`apigen-mt report` shows every conversation beside the funnel)."
        )?;
        Ok(c)
    }
}
