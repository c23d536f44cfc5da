//! Fuzz targets for everything that reads text it did not write — model replies, user files,
//! journals — and the mutation loop that drives them.
//!
//! Each [`Target`] feeds one input to one reader and returns a signature of what the reader did
//! (which variant, which error, how many calls). [`fuzz`] mutates a seed corpus (bit flips,
//! inserted and deleted ranges, splices, tokens from a dictionary, multi-byte characters where
//! byte offsets are easy to get wrong), keeps every input that produced a signature it had not
//! seen, and reports each panic with the input that caused it.
//!
//! Written here rather than with `cargo fuzz` because that needs a nightly toolchain and
//! libFuzzer, which a stable-only or offline machine does not have; without compiler coverage
//! the readers' own signatures stand in for it. The targets call the readers *inside* the
//! `guard` boundaries, so a panic the pipeline would survive still counts as a finding.

use crate::blueprint::{check, committee::Review};
use crate::domain::Domain;
use crate::domain::task::{Action, parse_tasks};
use crate::llm::tools::{ModelOutput, hermes, lenient, llama3, xlam};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest input the loop builds.
pub const MAX_INPUT: usize = 8 << 10;

/// Feeds one input to a reader and returns the signature of what it did.
type Reader = Box<dyn Fn(&[u8]) -> u64 + Send + Sync>;

/// One reader under test.
pub struct Target {
    pub name: &'static str,
    /// What the reader reads, in a few words.
    pub about: &'static str,
    run: Reader,
}

impl Target {
    /// Feed one input; returns the signature of what the reader did.
    pub fn run(&self, input: &[u8]) -> u64 {
        (self.run)(input)
    }
}

fn sig(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

/// The reply's kind, how many calls (up to three) and the malformed reason's own words: coarse
/// enough that the corpus keeps inputs that reach new code, not new names. What follows `: ` and
/// words that occur in the input are the values and names a reason quotes, and are left out.
fn output_sig(o: &ModelOutput, input: &str) -> u64 {
    match o {
        ModelOutput::Text { content } => sig((0, content.is_empty())),
        ModelOutput::ToolCalls { calls, content } => {
            sig((1, calls.len().min(3), content.is_empty()))
        }
        ModelOutput::Malformed { reason, .. } => sig((
            2,
            reason
                .split(": ")
                .next()
                .unwrap_or_default()
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|w| w.len() > 1 && !input.contains(w))
                .collect::<Vec<_>>(),
        )),
    }
}

fn rejection_sig<T>(r: &Result<T, crate::blueprint::Rejection>) -> u64 {
    match r {
        Ok(_) => sig(0),
        Err(e) => sig((1, &e.code)),
    }
}

/// A tool-call format's parser as a target.
fn format_target(
    name: &'static str,
    about: &'static str,
    parse: fn(&str) -> ModelOutput,
) -> Target {
    Target {
        name,
        about,
        run: Box::new(move |i| {
            let t = text(i);
            output_sig(&parse(&t), &t)
        }),
    }
}

/// Every target. `domains` is the folder holding the shipped domains (`mock`, `retail`), which
/// the argument-check and replay targets load.
pub fn targets(domains: &Path) -> anyhow::Result<Vec<Target>> {
    let retail = Arc::new(Domain::load(&domains.join("retail"), None)?);
    let mock = Arc::new(Domain::load(&domains.join("mock"), None)?);
    let account = |name: &str| {
        let mut args = serde_json::Map::new();
        args.insert("account_id".into(), Value::from("acc_1002"));
        Action::new(name, args)
    };
    let plan = vec![account("get_account"), account("freeze_account")];
    let tools: Vec<String> = retail.tools().iter().map(|t| t.name.clone()).collect();
    let retail_args = Arc::clone(&retail);
    let mut out = vec![
        format_target("hermes", "Qwen/Hermes tool-call replies", hermes::parse),
        format_target("xlam", "xLAM-2 tool-call replies", xlam::parse),
        Target {
            name: "llama3",
            about: "Llama 3.1 JSON tool-call replies",
            run: Box::new(|i| {
                let t = text(i);
                // The parser drops the tag before it reads; so do the names it quotes.
                output_sig(&llama3::parse(&t), &t.replace(llama3::PYTHON_TAG, ""))
            }),
        },
        Target {
            name: "lenient",
            about: "the tolerant JSON scanner the tool-call formats share",
            run: Box::new(|i| {
                let t = text(i);
                let values = lenient::json_values(&t);
                let spans: Vec<(usize, usize)> = values.iter().map(|(a, b, _)| (*a, *b)).collect();
                let prose = lenient::prose_around(&t, &spans);
                let found = lenient::find_calls(&t).map(|r| r.map(|(c, _)| c.len()));
                for (_, _, v) in &values {
                    let _ = lenient::calls_from_value(v);
                }
                sig((
                    values.len().min(4),
                    prose.is_empty(),
                    found.map(|r| r.map(|n| n.min(3)).map_err(|e| e.len().min(8))),
                    lenient::looks_like_call(&t),
                ))
            }),
        },
        Target {
            name: "arguments",
            about: "a tool call's arguments against the retail tools' schemas",
            run: Box::new(move |i| {
                let Some((&which, rest)) = i.split_first() else {
                    return 0;
                };
                let tool = &tools[which as usize % tools.len()];
                let Ok(Value::Object(args)) = serde_json::from_slice::<Value>(rest) else {
                    return 1;
                };
                let checked = retail_args
                    .tool(tool)
                    .map(|t| t.check_arguments(&args).map_err(|e| e.len().min(8)));
                sig((which, checked))
            }),
        },
        Target {
            name: "blueprint",
            about: "a proposer's blueprint JSON (free and fixed-plan forms)",
            run: Box::new(move |i| {
                let t = text(i);
                let free = check::parse(&t, "acc_1002");
                let fixed = check::parse_with_actions(&t, "acc_1002", &plan);
                sig((rejection_sig(&free), rejection_sig(&fixed)))
            }),
        },
        Target {
            name: "review",
            about: "a reviewer's JSON verdict",
            run: Box::new(|i| {
                let r = Review::parse_unguarded("fuzz", &text(i));
                sig((r.total, r.reflection.starts_with("unreadable")))
            }),
        },
        Target {
            name: "score",
            about: "a judge's `<score>N</score>` answer",
            run: Box::new(|i| sig(crate::rollout::parse_score(&text(i)))),
        },
        Target {
            name: "tasks",
            about: "a task file (JSON array or JSON Lines)",
            run: Box::new(|i| {
                let r = parse_tasks(Path::new("fuzz.json"), &text(i));
                sig(r.map(|t| t.len()).map_err(|e| e.to_string().len().min(8)))
            }),
        },
        Target {
            name: "journal",
            about: "run journals (items, blueprints, trajectories)",
            run: Box::new(|i| {
                let p = Path::new("fuzz.jsonl");
                let any = crate::run::read_records::<Value>(p, i).map(|(r, _)| r.len());
                let bp =
                    crate::run::read_records::<crate::blueprint::pipeline::BlueprintRecord>(p, i)
                        .map(|(r, _)| r.len());
                let tr = crate::run::read_records::<crate::rollout::run::TrajectoryRecord>(p, i)
                    .map(|(r, _)| r.len());
                sig((any.ok(), bp.ok(), tr.ok()))
            }),
        },
        Target {
            name: "replay",
            about: "`domain replay` input lines, run against the mock domain",
            run: Box::new(move |i| {
                let mut env = mock.env();
                let mut parts = std::collections::BTreeSet::new();
                for line in text(i).lines().take(16) {
                    // What `domain replay` reads, and, so that mutated lines still reach the
                    // tools, the first JSON value inside a line that is not JSON as a whole.
                    let v = match serde_json::from_str::<Value>(line) {
                        Ok(v) => v,
                        Err(_) => match lenient::json_values(line).into_iter().next() {
                            Some((_, _, v)) => v,
                            None => {
                                parts.insert(0u8);
                                continue;
                            }
                        },
                    };
                    match Action::from_json(&v) {
                        Ok(a) => {
                            let step = env.step(&a);
                            if let Some(crate::domain::env::Fault::ScriptPanic(e)) = step.fault {
                                panic!("script panic: {e}");
                            }
                            let fault = match step.fault {
                                None => 0,
                                Some(crate::domain::env::Fault::UnknownAction) => 1,
                                Some(crate::domain::env::Fault::BadArguments(_)) => 2,
                                Some(crate::domain::env::Fault::ScriptRaised(..)) => 3,
                                Some(_) => 4,
                            };
                            parts.insert(2 + fault);
                        }
                        Err(_) => {
                            parts.insert(1);
                        }
                    }
                }
                sig(parts)
            }),
        },
    ];
    out.sort_by_key(|t| t.name);
    Ok(out)
}

/// How long to fuzz one target.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Execs(u64),
    Time(Duration),
}

/// A panic the loop found.
#[derive(Debug, Clone)]
pub struct Finding {
    pub input: Vec<u8>,
    pub message: String,
}

/// What one target's run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub seconds: f64,
    /// Inputs kept (seeds plus those with a new signature).
    pub corpus: usize,
    pub signatures: usize,
    pub findings: Vec<Finding>,
}

/// Tokens that matter to the readers: tags, JSON punctuation, escapes, odd numbers, and
/// characters whose UTF-8 is more than one byte.
const DICTIONARY: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "<|python_tag|>",
    "{\"name\": \"",
    "\"arguments\": {",
    "\"parameters\": {",
    "\"instruction\": \"",
    "\"outputs\": [",
    "\"actions\": [",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    "\\u",
    "\\ud800",
    ":",
    ",",
    "\n",
    "null",
    "true",
    "1e999",
    "-0",
    "18446744073709551616",
    "é",
    "😀",
    "\u{0}",
    "\u{fffd}",
    "<score>",
    "</score>",
    "```json\n",
    "```",
];

fn mutate(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                input.insert(i, rng.random());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16.min(len - a).max(1))).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, piece);
            }
            5 | 6 => {
                let token = DICTIONARY[rng.random_range(0..DICTIONARY.len())].as_bytes();
                let at = rng.random_range(0..=len);
                if rng.random_bool(0.5) || len == 0 {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    input.splice(at..end, token.iter().copied());
                }
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let b = rng.random_range(a..=other.len());
                    let at = rng.random_range(0..=len);
                    input.truncate(at);
                    input.extend_from_slice(&other[a..b]);
                }
            }
            _ if len > 1 => {
                input.truncate(rng.random_range(0..len));
            }
            _ => input.push(rng.random()),
        }
    }
    input.truncate(MAX_INPUT);
}

/// Fuzz `target` from `seeds` for `budget`, deterministically for a given `seed` and an
/// exec budget.
pub fn fuzz(target: &Target, seeds: &[Vec<u8>], budget: Budget, seed: u64) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut corpus: Vec<Vec<u8>> = seeds.to_vec();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut seen = HashSet::new();
    let mut findings: Vec<Finding> = Vec::new();
    let mut execs = 0u64;
    let started = Instant::now();
    let one = |input: &[u8], execs: &mut u64, findings: &mut Vec<Finding>| -> Option<u64> {
        *execs += 1;
        match crate::guard::catch(|| target.run(input)) {
            Ok(s) => Some(s),
            Err(message) => {
                if findings.len() < 16 && !findings.iter().any(|f| f.message == message) {
                    findings.push(Finding {
                        input: input.to_vec(),
                        message,
                    });
                }
                None
            }
        }
    };
    for s in corpus.clone() {
        if let Some(sg) = one(&s, &mut execs, &mut findings) {
            seen.insert(sg);
        }
    }
    let done = |execs: u64| match budget {
        Budget::Execs(n) => execs >= n,
        Budget::Time(d) => execs.is_multiple_of(256) && started.elapsed() >= d,
    };
    let mut input = Vec::new();
    while !done(execs) {
        // A third of the time from a seed, so that the seeds' shapes stay in play however
        // large the kept corpus grows.
        let base = if rng.random_bool(1.0 / 3.0) {
            &corpus[rng.random_range(0..seeds.len().max(1))]
        } else {
            &corpus[rng.random_range(0..corpus.len())]
        };
        input.clear();
        input.extend_from_slice(base);
        mutate(&mut rng, &mut input, &corpus);
        if let Some(sg) = one(&input, &mut execs, &mut findings)
            && seen.insert(sg)
            && corpus.len() < 4096
        {
            corpus.push(input.clone());
        }
    }
    Report {
        target: target.name,
        execs,
        seconds: started.elapsed().as_secs_f64(),
        corpus: corpus.len(),
        signatures: seen.len(),
        findings,
    }
}

/// The seed files of one target: every file in `dir` (sorted), each one input.
pub fn seeds(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(std::fs::read).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_reports_a_panicking_reader_with_its_input() {
        let target = Target {
            name: "t",
            about: "panics on a byte",
            run: Box::new(|i| {
                if i.contains(&b'!') {
                    panic!("found the bang");
                }
                sig(i.len().min(3))
            }),
        };
        let report = fuzz(&target, &[b"abc".to_vec()], Budget::Execs(5000), 1);
        assert_eq!(report.execs, 5000);
        assert_eq!(report.findings.len(), 1, "{report:?}");
        assert!(report.findings[0].input.contains(&b'!'));
        assert!(report.findings[0].message.starts_with("found the bang"));
        let again = fuzz(&target, &[b"abc".to_vec()], Budget::Execs(5000), 1);
        assert_eq!(
            again.findings[0].input, report.findings[0].input,
            "deterministic"
        );
    }
}
