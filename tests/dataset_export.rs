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
