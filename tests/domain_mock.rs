//! The mock domain, the worked example of the format: check, replay, tools, generate.

use crate::util;
use serde_json::{Value, json};

fn outputs(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn check_passes() {
    let (code, _, stderr) = util::run(&["domain", "check", "domains/mock"], "");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("ok mock: 7 tools, 2 tasks, 5 actions replayed, 0 problems"),
        "{stderr}"
    );
}

#[test]
fn replay_runs_tools_and_never_touches_the_files() {
    let data = util::root().join("domains/mock/data/accounts.json");
    let before = std::fs::read(&data).unwrap();
    let input = [
        json!({"name": "get_account", "arguments": {"account_id": "acc_1002"}}),
        json!({"name": "transfer_funds", "kwargs": {"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 250.5}}),
        json!({"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 99999}}),
        json!({"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "amount": 1}}),
        json!({"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "to_account_id": 7, "amount": 1}}),
        json!({"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 1, "extra": 1}}),
        json!({"name": "launch_rocket", "arguments": {}}),
        json!({"db_hash": true}),
        json!({"reset": true}),
        json!({"name": "calculate", "arguments": {"expression": "250.5 * 2"}}),
        json!({"name": "think", "arguments": {"thought": "hm"}}),
        json!({"name": "transfer_to_human_agents", "arguments": {"summary": "x"}}),
    ];
    let stdin: String = input.iter().map(|v| v.to_string() + "\n").collect();
    let (code, stdout, stderr) = util::run(&["domain", "replay", "domains/mock"], &stdin);
    assert_eq!(code, 0, "{stderr}");
    let out = outputs(&stdout);
    assert_eq!(out.len(), 13, "one line per input plus the final hash");
    let obs = |i: usize| out[i]["observation"].as_str().unwrap().to_owned();
    assert!(
        obs(0).starts_with("{\"account_id\": \"acc_1002\", \"owner\": "),
        "{}",
        obs(0)
    );
    assert_eq!(
        obs(1),
        "{\"transfer_id\": \"tr_1001\", \"from_account_id\": \"acc_1002\", \"to_account_id\": \"acc_1001\", \"amount\": 250.5, \"memo\": \"\"}"
    );
    assert_eq!(obs(2), "Error: insufficient balance");
    assert_eq!(
        obs(3),
        "Error: missing required argument 'to_account_id' for transfer_funds"
    );
    assert_eq!(
        obs(4),
        "Error: argument 'to_account_id' must be a string, got integer"
    );
    assert_eq!(
        obs(5),
        "Error: transfer_funds got an unexpected argument 'extra'"
    );
    assert_eq!(obs(6), "Unknown action launch_rocket");
    let after_transfer = out[7]["db_hash"].as_str().unwrap();
    let at_reset = out[8]["db_hash"].as_str().unwrap();
    assert_eq!(after_transfer, at_reset);
    assert_eq!(obs(9), "501.0");
    assert_eq!(obs(10), "");
    assert_eq!(obs(11), "Transfer successful");
    assert_eq!(out[11]["done"], true);
    // The final hash is the pristine one: nothing happened after the reset but builtins.
    let pristine = util::run(&["domain", "replay", "domains/mock"], "").1;
    assert_eq!(out.last().unwrap(), &outputs(&pristine)[0]);
    assert_ne!(
        after_transfer,
        outputs(&pristine)[0]["db_hash"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::read(&data).unwrap(),
        before,
        "replay must never modify the database files"
    );
}

#[test]
fn malformed_input_lines_are_reported_in_place() {
    let stdin = "not json\n{\"arguments\": {}}\n{\"name\": \"think\", \"arguments\": {\"thought\": \"ok\"}}\n";
    let (code, stdout, stderr) = util::run(&["domain", "replay", "domains/mock"], stdin);
    assert_eq!(code, 1);
    let out = outputs(&stdout);
    assert!(
        out[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("line 1: invalid JSON")
    );
    assert!(out[1]["error"].as_str().unwrap().contains("line 2"));
    assert_eq!(out[2]["observation"], "");
    assert!(out[3]["db_hash"].is_string());
    assert!(stderr.contains("stdin line 1"));
}

#[test]
fn tools_prints_schemas_without_kind() {
    let (code, stdout, _) = util::run(&["domain", "tools", "domains/mock"], "");
    assert_eq!(code, 0);
    let tools: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(tools.len(), 7);
    assert!(
        tools
            .iter()
            .all(|t| t.get("kind").is_none() && t["type"] == "function")
    );
    assert_eq!(tools[0]["function"]["name"], "get_account");
}

#[test]
fn generator_is_deterministic_and_matches_the_shipped_data() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path, seed: &str| {
        let (code, stdout, stderr) = util::run(
            &[
                "domain",
                "generate",
                "domains/mock",
                "--seed",
                seed,
                "--out",
                dir.to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let first = run(a.path(), "0");
    assert_eq!(first, run(b.path(), "0"));
    assert_eq!(
        std::fs::read(a.path().join("accounts.json")).unwrap(),
        std::fs::read(util::root().join("domains/mock/data/accounts.json")).unwrap()
    );
    assert_ne!(first, run(b.path(), "1"));
}

#[test]
fn policy_rules_flag_violating_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.json");
    let task = json!([{"user_id": "acc_1002", "instruction": "move money", "outputs": [], "actions": [
        {"name": "freeze_account", "arguments": {"account_id": "acc_1001", "reason": "lost card"}},
        {"name": "transfer_funds", "arguments": {"from_account_id": "acc_1003", "to_account_id": "acc_1002", "amount": 1}},
        {"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 1}},
    ]}]);
    std::fs::write(&tasks, task.to_string()).unwrap();
    let (code, _, stderr) = util::run(
        &[
            "domain",
            "check",
            "domains/mock",
            "--tasks",
            tasks.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("task 0: policy.transfer_only_from_own_accounts: transfer_funds takes money from acc_1003, which Barbara Allen does not hold"), "{stderr}");
    assert!(stderr.contains("policy.no_transfer_after_freeze: transfer_funds moves money through acc_1001 after it was frozen"), "{stderr}");
    assert!(stderr.contains("policy.freeze_only_own_accounts: freeze_account freezes acc_1001, which Barbara Allen does not hold"), "{stderr}");
}

#[test]
fn a_rule_that_raises_counts_as_violated() {
    let d = util::mock_with(
        "rules/policy.star",
        "    frozen = []\n",
        "    frozen = []\n    fail(\"rule bug\")\n",
    );
    let (code, _, stderr) = util::run(&["domain", "check", d.path().to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("policy.no_transfer_after_freeze: rule failed: rule bug"),
        "{stderr}"
    );
}

#[test]
fn reward_needs_the_gold_state_and_every_output() {
    use apigen_mt::domain::{Domain, reward, task::read_tasks};
    let domain = Domain::load(&util::root().join("domains/mock"), None).unwrap();
    let tasks = read_tasks(&util::root().join("domains/mock/tasks/train.json")).unwrap();
    let task = &tasks[1]; // find, look up, freeze; output "1757.18"
    let mut env = domain.env();
    for a in &task.actions {
        env.step(a);
    }
    let said = ["Your balance is $1,757.18 and the account is now frozen."];
    let r = reward::score(&domain, task, &env.hash(), &said);
    assert_eq!((r.reward, r.db_match), (1.0, true));
    let r = reward::score(&domain, task, &env.hash(), &["It is frozen."]);
    assert_eq!((r.reward, r.db_match, r.outputs[0].1), (0.0, true, false));
    let r = reward::score(&domain, task, &domain.pristine().hash(), &said);
    assert_eq!((r.reward, r.db_match), (0.0, false));
}

/// `domain check --tasks` grounds a task file: an instruction naming no customer, or another
/// customer, gets its code (text and JSON, kind `grounding`).
#[test]
fn domain_check_grounds_task_files() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let look = json!([{"name": "get_account", "arguments": {"account_id": "acc_1002"}}]);
    let lines = [
        json!({"user_id": "acc_1002", "instruction": "You want to know your balance.", "actions": look, "outputs": []}),
        json!({"user_id": "acc_1002", "instruction": "You are Ada Turing and want your balance.", "actions": look, "outputs": []}),
        json!({"user_id": "acc_1002", "instruction": "You are Barbara Allen, account acc_1002, and want your balance.", "actions": look, "outputs": ["The balance is fine."]}),
        json!({"user_id": "acc_1002", "instruction": "You are Barbara Allen, account acc_1002, and want your balance.", "actions": look, "outputs": ["3853.92"]}),
    ];
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(&tasks, text).unwrap();
    let t = tasks.to_str().unwrap();
    let (code, _, stderr) = util::run(&["domain", "check", "domains/mock", "--tasks", t], "");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("task 0: ground.user_unidentified"),
        "{stderr}"
    );
    assert!(stderr.contains("task 1: ground.user_mismatch: the instruction names Ada Turing (owner), which is customer acc_1003"), "{stderr}");
    assert!(
        stderr.contains("task 2: ground.output_unsourced"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("task 3:"),
        "a grounded task passes: {stderr}"
    );
    let (_, stdout, _) = util::run(
        &["domain", "check", "domains/mock", "--tasks", t, "--json"],
        "",
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.iter().all(|k| *k == "grounding"), "{kinds:?}");
}
