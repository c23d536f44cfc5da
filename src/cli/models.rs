//! `models list | show | check | tokenize | complete`.

use std::io::Read;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::load::{LoadArgs, SamplingArgs};
use crate::llm::engine::{BatchJob, Engine, GenerateRequest, resolve};
use crate::llm::profile::{Format, Profile};
use crate::llm::{KvCache, Tokenizer};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the model profiles and whether their files are present.
    List,
    /// Print a profile (resolved file paths included) as JSON.
    Show { name: String },
    /// Verify a profile's files (size, sha256) and that the model loads and runs one step.
    Check {
        name: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Tokenize: stdin is a JSON array of strings; stdout a JSON array of id arrays (special
    /// tokens parsed, no BOS added).
    Tokenize { name: String },
    /// Complete a raw, already templated prompt read from stdin; prints {"ids", "text"}. With
    /// `--batch`, stdin is a JSON array of prompts, decoded together in one batch, and the output
    /// a JSON array of {"ids", "text", "finish"} (each equal to what the prompt gives alone).
    Complete(CompleteArgs),
    /// Download profiles' files from the Hugging Face Hub (`HF_ENDPOINT` for a mirror,
    /// `HF_TOKEN` for gated repositories) into the standard hub cache, resuming cut downloads,
    /// and check their sizes and sha256. Machines that reach no hub use
    /// `scripts/fetch-model.sh` instead.
    #[command(
        after_help = "Examples:\n  apigen-mt models fetch qwen2.5-coder-0.5b qwen2.5-coder-1.5b\n  HF_ENDPOINT=http://hub.internal:8080 apigen-mt models fetch xlam-2-1b"
    )]
    Fetch { names: Vec<String> },
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// Profile name or checkpoint path.
    pub name: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Do not stop at end-of-turn tokens or stop strings.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Extra stop strings.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Read a JSON array of prompts and decode them all in one batch.
    #[arg(long)]
    pub batch: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    match args.command {
        ModelsCommand::List => list(),
        ModelsCommand::Show { name } => show(&name),
        ModelsCommand::Check { name, load } => check(&name, &load),
        ModelsCommand::Tokenize { name } => tokenize(&name),
        ModelsCommand::Complete(a) => complete(a),
        ModelsCommand::Fetch { names } => fetch(&names),
    }
}

fn fetch(names: &[String]) -> anyhow::Result<()> {
    let names: Vec<String> = if names.is_empty() {
        anyhow::bail!("name at least one profile (`apigen-mt models list` shows them)");
    } else {
        names.to_vec()
    };
    for name in &names {
        let p = Profile::find(name)?;
        let paths =
            crate::llm::hub::fetch(&p, std::io::IsTerminal::is_terminal(&std::io::stderr()))?;
        for path in paths {
            eprintln!("{name}: {} (size and sha256 checked)", path.display());
        }
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn list() -> anyhow::Result<()> {
    for p in Profile::all()? {
        let present = p.model_path().is_ok();
        // `default` for the default model, else the roles it is the default for.
        let default = if p.default {
            "default".to_string()
        } else {
            p.default_for
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{:<22} {:<12} {:<10} {:<40} {}",
            p.name,
            p.architecture,
            default,
            p.display_name,
            if present { "present" } else { "not fetched" }
        );
    }
    Ok(())
}

fn show(name: &str) -> anyhow::Result<()> {
    let p = Profile::find(name)?;
    let mut v = serde_json::to_value(&p)?;
    let files: Vec<_> = p
        .files
        .iter()
        .map(|f| json!({"name": f.name, "path": p.locate(&f.name)}))
        .collect();
    v["resolved"] = json!({"cache_dir": p.cache_dir(), "files": files});
    print_json(&v)
}

fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    crate::llm::hub::sha256_file(path).with_context(|| format!("reading {}", path.display()))
}

fn check(name: &str, load: &LoadArgs) -> anyhow::Result<()> {
    let p = Profile::find(name)?;
    let mut files = vec![];
    let mut ok = true;
    for f in &p.files {
        let Some(path) = p.locate(&f.name) else {
            ok = false;
            files.push(json!({"name": f.name, "status": "missing"}));
            continue;
        };
        let size = std::fs::metadata(&path)?.len();
        let digest = if f.sha256.is_some() {
            Some(sha256_file(&path)?)
        } else {
            None
        };
        let good = f.size.is_none_or(|s| s == size)
            && f.sha256.as_ref().is_none_or(|h| Some(h) == digest.as_ref());
        ok &= good;
        files.push(json!({"name": f.name, "path": path, "size": size, "sha256": digest, "status": if good { "ok" } else { "mismatch" }}));
    }
    let mut report = json!({"name": p.name, "files": files});
    if ok {
        let engine = load.load(name)?;
        let tok = engine.tokenizer();
        let ids = tok.encode("Hello", true)?;
        let mut cache = KvCache::new();
        let g = engine.generate(
            &mut cache,
            &ids,
            &GenerateRequest {
                max_tokens: 1,
                ..Default::default()
            },
            None,
        )?;
        report["load"] = json!({
            "config": engine.model().config(),
            "vocab": tok.vocab_size(),
            "chat_template": engine.chat_template().is_some(),
            "stop_tokens": engine.stop_tokens(),
            "one_step": g.ids,
        });
    }
    report["ok"] = json!(ok);
    print_json(&report)?;
    if !ok {
        bail!(
            "{name}: files missing or not matching the profile (run scripts/fetch-model.sh {name})"
        );
    }
    Ok(())
}

/// The tokenizer alone (no weights loaded).
pub fn load_tokenizer(name_or_path: &str) -> anyhow::Result<Tokenizer> {
    let (profile, path) = resolve(name_or_path)?;
    let is_dir = profile
        .as_ref()
        .map_or(path.is_dir(), |p| p.format == Format::Safetensors);
    Ok(if is_dir {
        Tokenizer::from_tokenizer_json(&path.join("tokenizer.json"))?
    } else {
        Tokenizer::from_gguf_file(&path)?
    })
}

fn tokenize(name: &str) -> anyhow::Result<()> {
    let tok = load_tokenizer(name)?;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let texts: Vec<String> =
        serde_json::from_str(&input).context("stdin must be a JSON array of strings")?;
    let ids = texts
        .iter()
        .map(|t| tok.encode(t, true))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn complete(a: CompleteArgs) -> anyhow::Result<()> {
    let mut prompt = String::new();
    std::io::stdin().read_to_string(&mut prompt)?;
    // Read the input before loading the model, so that a bad one fails at once.
    let batch: Option<Vec<String>> = if a.batch {
        Some(
            serde_json::from_str(&prompt)
                .context("with --batch, stdin must be a JSON array of prompt strings")?,
        )
    } else {
        None
    };
    let engine = a.load.load(&a.name)?;
    let req = GenerateRequest {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(),
        stop: a.stop,
        ignore_eos: a.ignore_eos,
    };
    if let Some(prompts) = batch {
        return complete_batch(&engine, &prompts, &req);
    }
    let ids = engine.tokenizer().encode(&prompt, true)?;
    if ids.is_empty() {
        bail!("empty prompt on stdin");
    }
    let g = engine.generate(&mut KvCache::new(), &ids, &req, None)?;
    eprintln!(
        "prompt {} tokens in {:.0} ms; {} tokens in {:.0} ms ({:.1} tok/s); finish {:?}",
        g.prompt_tokens,
        g.prefill_ms,
        g.ids.len(),
        g.decode_ms,
        (g.ids.len().saturating_sub(1)) as f64 / (g.decode_ms / 1e3).max(1e-9),
        g.finish
    );
    println!(
        "{}",
        serde_json::to_string(&json!({"ids": g.ids, "text": g.text, "finish": g.finish}))?
    );
    Ok(())
}

fn complete_batch(
    engine: &Engine,
    prompts: &[String],
    req: &GenerateRequest,
) -> anyhow::Result<()> {
    let ids = prompts
        .iter()
        .map(|p| engine.tokenizer().encode(p, true))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        bail!("prompt {i} of the array is empty");
    }
    let mut caches: Vec<KvCache> = ids.iter().map(|_| KvCache::new()).collect();
    let mut jobs: Vec<BatchJob> = caches
        .iter_mut()
        .zip(&ids)
        .map(|(cache, prompt)| BatchJob {
            cache,
            prompt,
            req,
            processor: None,
        })
        .collect();
    let started = std::time::Instant::now();
    let gens = engine.generate_batch(&mut jobs)?;
    let tokens: usize = gens.iter().map(|g| g.ids.len()).sum();
    eprintln!(
        "{} prompts, {} tokens generated in {:.0} ms",
        gens.len(),
        tokens,
        started.elapsed().as_secs_f64() * 1e3
    );
    let out: Vec<serde_json::Value> = gens
        .iter()
        .map(|g| json!({"ids": g.ids, "text": g.text, "finish": g.finish}))
        .collect();
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
