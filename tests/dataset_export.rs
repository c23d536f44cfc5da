//! `apigen-mt export` on a run directory: all three formats, and a bad record named by line.

use crate::util;
use serde_json::{Value, json};

fn record(id: &str) -> Value {
    json!({
        "id": id, "blueprint_id": "bp-1",
        "tools": [{"type": "function", "function": {"name": "get_account", "description": "d", "parameters": {"type": "object", "properties": {"account_id": {"type": "string"}}}}}],
        "messages": [
            {"role": "system", "content": "policy"},
            {"role": "user", "content": "balance of acc_1001?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_account", "arguments": "{\"account_id\": \"acc_1001\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "name": "get_account", "content": "{\"balance\": 775.68}"},
            {"role": "assistant", "content": "775.68"}
        ]
    })
}

#[test]
fn exports_every_format_from_a_run_directory() {
    let run = tempfile::tempdir().unwrap();
    std::fs::write(
        run.path().join("dataset.jsonl"),
        format!("{}\n{}\n", record("a"), record("b")),
    )
    .unwrap();
    let dir = run.path().to_str().unwrap();
    let out = run.path().join("out.json");
    let (code, _, stderr) = util::run(
        &[
            "export",
            dir,
            "--format",
            "apigen-mt",
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["conversations"][1]["from"], "function_call");
    let (code, stdout, _) = util::run(&["export", dir, "--format", "openai"], "");
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 2);
    // The default is the training form: arguments as objects.
    let (code, stdout, _) = util::run(&["export", dir], "");
    assert_eq!(code, 0);
    let row: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        row["messages"][2]["tool_calls"][0]["function"]["arguments"],
        json!({"account_id": "acc_1001"})
    );
    let (code, stdout, _) = util::run(&["export", dir, "--format", "sharegpt"], "");
    assert_eq!(code, 0);
    let rows: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows[1]["id"], "b");

    std::fs::write(
        run.path().join("dataset.jsonl"),
        format!("{}\n{{\"messages\": []}}\n", record("a")),
    )
    .unwrap();
    let (code, _, stderr) = util::run(&["export", dir, "--format", "openai"], "");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("dataset.jsonl:2: message 0: the first message must be the system message"),
        "{stderr}"
    );
}

/// One exported APIGen-MT or ShareGPT row, checked the way a trainer reads it: `system` is the
/// policy, `tools` a JSON string of `{name, description, parameters}` functions, the turns start
/// with a human line, and each `function_call` holds `{name, arguments: object}` and is followed
/// by its `observation`.
pub fn validate_turns_row(row: &Value, sharegpt: bool) -> Result<(), String> {
    let system = row["system"].as_str().ok_or("system is not a string")?;
    if system.trim().is_empty() {
        return Err("system is empty".into());
    }
    let tools: Vec<Value> =
        serde_json::from_str(row["tools"].as_str().ok_or("tools is not a string")?)
            .map_err(|e| format!("tools is not a JSON list: {e}"))?;
    if tools.is_empty() {
        return Err("no tools".into());
    }
    for t in &tools {
        if !t["name"].is_string() || !t["parameters"].is_object() {
            return Err(format!("tool without a name or parameters: {t}"));
        }
    }
    if sharegpt && !row["id"].is_string() {
        return Err("sharegpt row without an id".into());
    }
    let conv = row["conversations"]
        .as_array()
        .ok_or("conversations is not a list")?;
    if conv.first().map(|c| &c["from"]) != Some(&json!("human")) {
        return Err("the first turn is not the human's".into());
    }
    for (i, c) in conv.iter().enumerate() {
        let from = c["from"].as_str().ok_or(format!("turn {i}: no from"))?;
        if !c["value"].is_string() {
            return Err(format!("turn {i}: value is not a string"));
        }
        match from {
            "human" | "gpt" | "observation" => {}
            "function_call" => {
                let v: Value = serde_json::from_str(c["value"].as_str().unwrap_or(""))
                    .map_err(|e| format!("turn {i}: function_call is not JSON: {e}"))?;
                if !v["name"].is_string() || !v["arguments"].is_object() {
                    return Err(format!(
                        "turn {i}: function_call needs a name and object arguments: {v}"
                    ));
                }
                if conv.get(i + 1).map(|n| &n["from"]) != Some(&json!("observation")) {
                    return Err(format!("turn {i}: function_call without its observation"));
                }
            }
            other => return Err(format!("turn {i}: unknown from {other:?}")),
        }
    }
    Ok(())
}

/// One exported OpenAI fine-tuning row: `messages` with a leading system message, assistant
/// `tool_calls` (`id`, `type: function`, `function.name`, `function.arguments` a JSON object in a
/// string), each answered in order by `tool` messages with its `tool_call_id`, and `tools` in
/// OpenAI's function form.
pub fn validate_openai_row(row: &Value) -> Result<(), String> {
    let msgs = row["messages"].as_array().ok_or("messages is not a list")?;
    if msgs.first().map(|m| &m["role"]) != Some(&json!("system")) {
        return Err("the first message is not the system message".into());
    }
    let mut pending: Vec<String> = vec![];
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().ok_or(format!("message {i}: no role"))?;
        if role != "tool" && !pending.is_empty() {
            return Err(format!("message {i}: calls {pending:?} were not answered"));
        }
        match role {
            "system" | "user" => {
                if !m["content"].is_string() {
                    return Err(format!("message {i}: content is not a string"));
                }
            }
            "assistant" => {
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let id = c["id"]
                        .as_str()
                        .ok_or(format!("message {i}: call without id"))?;
                    if c["type"] != "function" || !c["function"]["name"].is_string() {
                        return Err(format!("message {i}: malformed call {c}"));
                    }
                    let args: Value =
                        serde_json::from_str(c["function"]["arguments"].as_str().unwrap_or(""))
                            .map_err(|e| format!("message {i}: arguments are not JSON: {e}"))?;
                    if !args.is_object() {
                        return Err(format!("message {i}: arguments are not an object"));
                    }
                    pending.push(id.to_owned());
                }
            }
            "tool" => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or(format!("message {i}: no tool_call_id"))?;
                if pending.first().map(String::as_str) != Some(id) {
                    return Err(format!("message {i}: answers {id}, expected {pending:?}"));
                }
                pending.remove(0);
            }
            other => return Err(format!("message {i}: unknown role {other:?}")),
        }
    }
    if !pending.is_empty() {
        return Err(format!("calls {pending:?} were never answered"));
    }
    let tools = row["tools"].as_array().ok_or("tools is not a list")?;
    if tools.is_empty()
        || tools
            .iter()
            .any(|t| t["type"] != "function" || !t["function"]["name"].is_string())
    {
        return Err("tools are not OpenAI functions".into());
    }
    Ok(())
}

/// One `messages` row (the Hugging Face form): every call's arguments an object, and the
/// conversation an OpenAI one once they are encoded back as strings.
pub fn validate_messages_row(row: &Value) -> Result<(), String> {
    let mut o = row.clone();
    for m in o["messages"].as_array_mut().ok_or("no messages")? {
        for c in m["tool_calls"].as_array_mut().into_iter().flatten() {
            let args = &mut c["function"]["arguments"];
            if !args.is_object() {
                return Err(format!("arguments {args} are not an object"));
            }
            *args = Value::String(args.to_string());
        }
    }
    validate_openai_row(&o)
}

/// Export a run directory in every format through the CLI and validate every row.
pub fn validate_run_exports(dir: &str) -> Result<usize, String> {
    let mut rows = 0;
    for format in ["apigen-mt", "sharegpt", "openai", "messages"] {
        let (code, stdout, stderr) = util::run(&["export", dir, "--format", format], "");
        if code != 0 {
            return Err(format!("export --format {format}: {stderr}"));
        }
        let parsed: Vec<Value> = if format == "openai" || format == "messages" {
            stdout
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
        } else {
            serde_json::from_str(&stdout)
        }
        .map_err(|e| format!("{format}: not JSON: {e}"))?;
        for (i, row) in parsed.iter().enumerate() {
            match format {
                "openai" => validate_openai_row(row),
                "messages" => validate_messages_row(row),
                f => validate_turns_row(row, f == "sharegpt"),
            }
            .map_err(|e| format!("{format} row {i}: {e}"))?;
        }
        rows += parsed.len();
    }
    Ok(rows)
}

#[test]
fn the_validators_pass_good_rows_and_catch_bad_ones() {
    let run = tempfile::tempdir().unwrap();
    std::fs::write(
        run.path().join("dataset.jsonl"),
        format!("{}\n", record("a")),
    )
    .unwrap();
    assert_eq!(validate_run_exports(run.path().to_str().unwrap()), Ok(4));
    let m = apigen_mt::dataset::export(&record("a"), apigen_mt::dataset::Format::Messages).unwrap();
    validate_messages_row(&m).unwrap();
    let o = apigen_mt::dataset::export(&record("a"), apigen_mt::dataset::Format::Openai).unwrap();
    assert!(
        validate_messages_row(&o)
            .unwrap_err()
            .contains("not an object"),
        "string arguments are caught"
    );
    // The exporter refuses such records itself; the validator must catch them too.
    let mut o =
        apigen_mt::dataset::export(&record("a"), apigen_mt::dataset::Format::Openai).unwrap();
    o["messages"][2]["tool_calls"][0]["function"]["arguments"] = json!("[1]");
    assert!(
        validate_openai_row(&o)
            .unwrap_err()
            .contains("not an object")
    );
    o["messages"].as_array_mut().unwrap().remove(3);
    assert!(validate_openai_row(&o).is_err());
    let mut row =
        apigen_mt::dataset::export(&record("a"), apigen_mt::dataset::Format::ApigenMt).unwrap();
    row["conversations"].as_array_mut().unwrap().remove(2);
    assert!(
        validate_turns_row(&row, false)
            .unwrap_err()
            .contains("without its observation")
    );
}

/// The exports of a real run (`APIGEN_MT_EXPORT_RUN=RUN cargo test --release exports_of_a_run`).
#[test]
fn exports_of_a_run_named_in_the_environment_pass_the_validators() {
    let Ok(dir) = std::env::var("APIGEN_MT_EXPORT_RUN") else {
        eprintln!(
            "SKIPPED: set APIGEN_MT_EXPORT_RUN=RUN to validate the exports of a run directory"
        );
        return;
    };
    match validate_run_exports(&dir) {
        Ok(rows) => eprintln!("{dir}: {rows} exported rows in 3 formats pass"),
        Err(e) => panic!("{dir}: {e}"),
    }
}

/// `export --out` writes a Hugging Face dataset card beside the data: the domain's licence, the
/// models, the funnel, the format and how to load it; a README.md of someone else's is kept.
#[test]
fn export_writes_a_dataset_card_beside_the_data() {
    let run = tempfile::tempdir().unwrap();
    std::fs::write(
        run.path().join("dataset.jsonl"),
        format!("{}\n{}\n", record("a"), record("b")),
    )
    .unwrap();
    let mock = util::root().join("domains/mock");
    std::fs::write(
        run.path().join("config.toml"),
        format!(
            "[domain]\nname = \"mock\"\ndir = {:?}\n\n[proposer]\nmodel = \"qwen2.5-coder-0.5b\"\n\n[settings]\nseed = 7\ncount = 2\nplan = \"fixed\"\n",
            mock.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        run.path().join("rollouts.toml"),
        "trials = 3\n\n[agent]\nmodel = \"qwen2.5-coder-1.5b\"\ntemperature = 0.7\n\n[user]\nmodel = \"qwen2.5-coder-1.5b\"\n",
    )
    .unwrap();
    std::fs::write(
        run.path().join("summary.json"),
        json!({"funnel": {"proposed": 5, "format_ok": 5, "executed": 4, "policy_ok": 4, "grounded": 3, "committee_ok": 2, "accepted": 2},
               "rollouts": {"rollouts": 6, "verified": 3, "kept": 2, "filtered": 1}})
        .to_string(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("train.jsonl");
    let dir = run.path().to_str().unwrap();
    let (code, _, stderr) = util::run(
        &[
            "export",
            dir,
            "--format",
            "openai",
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let card = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    let front = card.split("---").nth(1).expect("YAML front matter");
    assert!(front.contains("license: apache-2.0"), "{card}");
    assert!(front.contains("data_files: train.jsonl"), "{card}");
    assert!(front.contains("- n<1K"), "{card}");
    assert!(
        card.contains("2 multi-turn tool-use conversations"),
        "{card}"
    );
    assert!(
        card.contains(
            "5 proposals → 5 well-formed → 4 executed → 4 within policy → 3 grounded → 2 passed"
        ),
        "{card}"
    );
    assert!(
        card.contains("6 attempts → 3 verified → 2 kept (1 verified but filtered"),
        "{card}"
    );
    assert!(
        card.contains("proposer: `qwen2.5-coder-0.5b` (Apache-2.0)"),
        "{card}"
    );
    assert!(card.contains("agent: `qwen2.5-coder-1.5b`"), "{card}");
    assert!(
        card.contains("load_dataset(\"json\", data_files=\"train.jsonl\""),
        "{card}"
    );

    // A re-export replaces its own card; someone else's README.md stays as it was.
    let (code, _, _) = util::run(
        &[
            "export",
            dir,
            "--format",
            "openai",
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0);
    std::fs::write(out.path().join("README.md"), "# mine\n").unwrap();
    let (code, _, stderr) = util::run(
        &[
            "export",
            dir,
            "--format",
            "openai",
            "--out",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0);
    assert!(stderr.contains("was not written by export"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("README.md")).unwrap(),
        "# mine\n"
    );
}

/// A reader that stops early (`| head`) ends the export quietly with status 0: no panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    let run = tempfile::tempdir().unwrap();
    let rows: String = (0..3000)
        .map(|i| format!("{}\n", record(&format!("r{i}"))))
        .collect();
    std::fs::write(run.path().join("dataset.jsonl"), rows).unwrap();
    let mut child = util::bin()
        .args(["export", run.path().to_str().unwrap(), "--format", "openai"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
