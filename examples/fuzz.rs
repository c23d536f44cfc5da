//! Fuzz the readers of model output, user files and journals (see `apigen_mt::fuzz`).
//!
//!     cargo run --release --example fuzz -- [--seconds N | --execs N] [--seed S] [TARGET...]
//!
//! Seeds come from `tests/fuzz/<target>/`; every panic is written to `--out` (default
//! `target/fuzz-findings/<target>-<n>`) with its message beside it. One JSON line per target,
//! then a total; exits 1 when anything panicked.

use apigen_mt::fuzz::{self, Budget};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Seconds per target.
    #[arg(long, conflicts_with = "execs")]
    seconds: Option<f64>,
    /// Executions per target (deterministic for a given seed).
    #[arg(long)]
    execs: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where inputs that panicked are written.
    #[arg(long, default_value = "target/fuzz-findings")]
    out: PathBuf,
    /// Targets to run (default: all).
    targets: Vec<String>,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let budget = match (args.seconds, args.execs) {
        (Some(s), _) => Budget::Time(Duration::from_secs_f64(s)),
        (None, Some(n)) => Budget::Execs(n),
        (None, None) => Budget::Time(Duration::from_secs(10)),
    };
    let all = fuzz::targets(&root.join("domains"))?;
    for t in &args.targets {
        if !all.iter().any(|x| x.name == t) {
            let names: Vec<&str> = all.iter().map(|x| x.name).collect();
            anyhow::bail!("unknown target {t:?} (targets: {})", names.join(", "));
        }
    }
    let (mut execs, mut seconds, mut panics) = (0u64, 0f64, 0usize);
    for target in all
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
    {
        let dir = root.join("tests/fuzz").join(target.name);
        let seeds = fuzz::seeds(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let report = fuzz::fuzz(target, &seeds, budget, args.seed);
        for (i, f) in report.findings.iter().enumerate() {
            std::fs::create_dir_all(&args.out)?;
            let path = args.out.join(format!("{}-{i}", target.name));
            std::fs::write(&path, &f.input)?;
            std::fs::write(path.with_extension("txt"), &f.message)?;
        }
        execs += report.execs;
        seconds += report.seconds;
        panics += report.findings.len();
        println!(
            "{}",
            serde_json::json!({
                "target": report.target,
                "about": target.about,
                "execs": report.execs,
                "seconds": (report.seconds * 100.0).round() / 100.0,
                "execs_per_s": (report.execs as f64 / report.seconds.max(1e-9)).round(),
                "corpus": report.corpus,
                "signatures": report.signatures,
                "panics": report.findings.iter().map(|f| f.message.clone()).collect::<Vec<_>>(),
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({"total_execs": execs, "seconds": seconds.round(), "panics": panics})
    );
    Ok(if panics == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
