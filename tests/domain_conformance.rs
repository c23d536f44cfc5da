//! tau-bench conformance: every step of `shared/taubench/conformance/*.jsonl` (tau-bench's own
//! tools run on its own data, gold actions twice per task) must give the byte-identical
//! observation through `apigen-mt domain replay`, and both database hashes must match.

use crate::util;
use serde_json::{Value, json};

fn replay_conformance(domain: &str) {
    let Some(shared) = util::shared() else { return };
    let fixture = shared.join(format!("taubench/conformance/{domain}.jsonl"));
    let text = std::fs::read_to_string(&fixture).unwrap();
    let mut lines = text.lines();
    let meta: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    // What to feed, and what each output line must be.
    let mut input = vec![json!({"db_hash": true}).to_string()];
    let mut expected = vec![(
        "initial".to_owned(),
        "db_hash",
        meta["meta"]["initial_db_hash"].clone(),
    )];
    let mut steps = 0;
    let mut tasks = 0;
    for line in lines {
        let task: Value = serde_json::from_str(line).unwrap();
        let label = format!("{} {}", task["split"].as_str().unwrap(), task["index"]);
        for round in [1, 2] {
            for step in task["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["round"] == round)
            {
                assert_eq!(
                    step["python_exception"], false,
                    "fixture step raised in Python"
                );
                input.push(
                    json!({"name": step["name"], "arguments": step["arguments"]}).to_string(),
                );
                expected.push((
                    format!("{label} round {round} {}", step["name"]),
                    "observation",
                    step["observation"].clone(),
                ));
                steps += 1;
            }
            input.push(json!({"db_hash": true}).to_string());
            expected.push((
                format!("{label} after round {round}"),
                "db_hash",
                task[format!("db_hash_after_round{round}")].clone(),
            ));
        }
        input.push(json!({"reset": true}).to_string());
        expected.push((
            format!("{label} reset"),
            "db_hash",
            task["db_hash_after_round2"].clone(),
        ));
        tasks += 1;
    }
    let data = shared.join(format!("taubench/{domain}/data"));
    let (code, stdout, stderr) = util::run(
        &[
            "domain",
            "replay",
            &format!("domains/{domain}"),
            "--db",
            data.to_str().unwrap(),
        ],
        &(input.join("\n") + "\n"),
    );
    assert_eq!(code, 0, "replay failed: {stderr}");
    let outputs: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        outputs.len(),
        expected.len() + 1,
        "one output per input line plus the final hash"
    );
    let mut mismatches = Vec::new();
    for (got, (label, key, want)) in outputs.iter().zip(&expected) {
        if &got[*key] != want {
            mismatches.push(format!("{label}: want {key} {want}, got {got}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} outputs differ, first: {:#?}",
        mismatches.len(),
        expected.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    eprintln!(
        "{domain}: {tasks} tasks, {steps} steps, {} hashes: all identical",
        expected.len() - steps
    );
}

#[test]
fn retail_matches_tau_bench_byte_for_byte() {
    replay_conformance("retail");
}

#[test]
fn airline_matches_tau_bench_byte_for_byte() {
    replay_conformance("airline");
}

#[test]
fn domain_check_passes_on_tau_bench_data() {
    let Some(shared) = util::shared() else { return };
    for domain in ["retail", "airline"] {
        let data = shared.join(format!("taubench/{domain}/data"));
        let (code, _, stderr) = util::run(
            &[
                "domain",
                "check",
                &format!("domains/{domain}"),
                "--db",
                data.to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(code, 0, "{domain}: {stderr}");
        assert!(stderr.contains(&format!("ok {domain}")), "{stderr}");
    }
}

/// tau-bench's gold tasks all replay (no unknown action, no fault, tool kinds respected). The only
/// problems are policy-rule flags, on the tasks whose gold actions attempt what the written policy
/// forbids (the tools refuse most of those attempts): pinned here so a rule change is noticed.
#[test]
fn tau_bench_gold_tasks_replay_and_only_known_tasks_break_policy() {
    let Some(shared) = util::shared() else { return };
    let cases: [(&str, &[&str], usize, &[usize]); 2] = [
        ("retail", &["test", "train", "dev"], 23, &[12, 13, 64, 106]),
        (
            "airline",
            &["test"],
            9,
            &[10, 16, 19, 23, 26, 27, 34, 45, 46],
        ),
    ];
    for (domain, splits, flagged, test_indices) in cases {
        let report = check_tau_bench(&shared, domain, splits);
        let all = report["problems"].as_array().unwrap();
        let other: Vec<&Value> = all
            .iter()
            .filter(|p| p["kind"] != "policy" && p["kind"] != "grounding")
            .collect();
        let problems: Vec<&Value> = all.iter().filter(|p| p["kind"] == "policy").collect();
        assert!(other.is_empty(), "{domain}: {other:#?}");
        let mut tasks: Vec<&str> = problems
            .iter()
            .map(|p| p["location"].as_str().unwrap())
            .collect();
        tasks.dedup();
        assert_eq!(tasks.len(), flagged, "{domain}: {tasks:#?}");
        let test_file = format!("tasks_test.json task ");
        let mut in_test: Vec<usize> = tasks
            .iter()
            .filter_map(|t| t.split_once(&test_file).map(|(_, i)| i.parse().unwrap()))
            .collect();
        in_test.sort();
        assert_eq!(in_test, test_indices, "{domain}");
    }
}

/// `domain check --json` of `domain` on tau-bench's data with its task files of `splits`.
fn check_tau_bench(shared: &std::path::Path, domain: &str, splits: &[&str]) -> Value {
    let data = shared.join(format!("taubench/{domain}/data"));
    let mut args = vec![
        "domain".to_owned(),
        "check".into(),
        format!("domains/{domain}"),
        "--json".into(),
        "--db".into(),
        data.display().to_string(),
    ];
    for s in splits {
        args.push("--tasks".into());
        args.push(
            shared
                .join(format!("taubench/{domain}/tasks_{s}.json"))
                .display()
                .to_string(),
        );
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, stdout, stderr) = util::run(&args, "");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// The grounding checks calibrated on tau-bench: over its 685 retail (test, train, dev) and
/// airline (test) tasks with its own data they flag 5 (0.7%, the bound is 3%), each listed in
/// docs/blueprints.md. Retail test 64 names James Sanchez for harper_moore_6183 and acts for him.
#[test]
fn grounding_flags_few_tau_bench_tasks_and_the_known_mismatch() {
    let Some(shared) = util::shared() else { return };
    let mut flagged: Vec<String> = Vec::new();
    let mut tasks = 0;
    for (domain, splits) in [
        ("retail", &["test", "train", "dev"][..]),
        ("airline", &["test"][..]),
    ] {
        let report = check_tau_bench(&shared, domain, splits);
        // The domain's own tasks are not grounded against tau-bench's data.
        tasks += report["tasks"].as_u64().unwrap() as usize
            - apigen_mt::domain::task::read_tasks(
                &util::root().join(format!("domains/{domain}/tasks/train.json")),
            )
            .unwrap()
            .len();
        for p in report["problems"].as_array().unwrap() {
            if p["kind"] == "grounding" {
                let loc = p["location"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned();
                let code = p["message"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned();
                flagged.push(format!("{domain} {loc} {code}"));
            }
        }
    }
    assert_eq!(tasks, 685);
    flagged.dedup();
    assert_eq!(
        flagged,
        [
            "retail tasks_test.json task 19 ground.output_unsourced",
            "retail tasks_test.json task 54 ground.output_unsourced",
            "retail tasks_test.json task 64 ground.user_unidentified",
            "retail tasks_test.json task 64 ground.user_mismatch",
            "airline tasks_test.json task 2 ground.output_unsourced",
            "airline tasks_test.json task 9 ground.output_unsourced",
        ]
    );
    let distinct: std::collections::BTreeSet<String> = flagged
        .iter()
        .map(|f| f.rsplit_once(' ').unwrap().0.to_owned())
        .collect();
    assert!(
        distinct.len() * 100 <= tasks * 3,
        "{} of {tasks} flagged",
        distinct.len()
    );
}

#[test]
fn tau_bench_task_files_round_trip_in_their_own_shape() {
    let Some(shared) = util::shared() else { return };
    use apigen_mt::domain::task::{read_tasks, write_tasks};
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "retail/tasks_test.json",
        "retail/tasks_train.json",
        "airline/tasks_test.json",
    ] {
        let path = shared.join("taubench").join(file);
        let tasks = read_tasks(&path).unwrap();
        assert!(
            tasks
                .iter()
                .all(|t| t.actions.iter().all(|a| a.kwargs_style))
        );
        let out = dir.path().join("tasks.json");
        write_tasks(&out, &tasks).unwrap();
        assert_eq!(read_tasks(&out).unwrap(), tasks);
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(original, written, "{file}: written back in the same shape");
    }
}
