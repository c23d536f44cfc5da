//! Hostile domains (`tests/hostile/*.toml`): each attack on the script sandbox costs one clear
//! error — an `Error:` observation, a failed rule or a load error — never the process. Their peak
//! memory is measured by `scripts/hostile.py`, not here.

use crate::util;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub command: String,
    pub expect: String,
    pub edit: Vec<Edit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    pub file: String,
    pub replace: String,
    pub with: String,
}

/// Every case, by file name.
pub fn cases() -> Vec<(String, Case)> {
    let dir = util::root().join("tests/hostile");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let case: Case =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_stem().unwrap().to_string_lossy().into_owned(), case)
        })
        .collect()
}

/// A scratch copy of `domains/mock` with the case's edits made.
pub fn build(case: &Case) -> tempfile::TempDir {
    let dir = util::mock_copy();
    for e in &case.edit {
        let path = dir.path().join(&e.file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&e.replace),
            "{} lacks {:?}",
            e.file,
            e.replace
        );
        std::fs::write(&path, text.replacen(&e.replace, &e.with, 1)).unwrap();
    }
    dir
}

const REPLAY: &str = concat!(
    "{\"name\": \"get_account\", \"arguments\": {\"account_id\": \"acc_1002\"}}\n",
    "{\"name\": \"find_accounts_by_owner\", \"arguments\": {\"owner\": \"Barbara Allen\"}}\n",
);

/// What went wrong with one case, if anything.
fn run_case(name: &str, case: &Case, dir: &Path) -> Option<String> {
    let d = dir.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = match case.command.as_str() {
        "replay" => util::run(&["domain", "replay", d], REPLAY),
        "check" => util::run(&["domain", "check", d], ""),
        "generate" => util::run(
            &[
                "domain",
                "generate",
                d,
                "--out",
                out.path().to_str().unwrap(),
            ],
            "",
        ),
        other => return Some(format!("{name}: unknown command {other:?}")),
    };
    if stderr.contains("panicked") {
        return Some(format!("{name}: panicked: {stderr}"));
    }
    match case.command.as_str() {
        "replay" => {
            let lines: Vec<serde_json::Value> = stdout
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let first = lines.first().and_then(|l| l["observation"].as_str());
            let second = lines.get(1).and_then(|l| l["observation"].as_str());
            if code != 0 || !first.is_some_and(|o| o.contains(&case.expect)) {
                return Some(format!(
                    "{name}: exit {code}, first observation {first:?}; {stderr}"
                ));
            }
            if second != Some("[\"acc_1002\", \"acc_1012\"]") {
                return Some(format!("{name}: the next call answered {second:?}"));
            }
        }
        _ => {
            if code == 0 || !stderr.contains(&case.expect) {
                return Some(format!("{name}: exit {code}, stderr {stderr}"));
            }
        }
    }
    None
}

#[test]
fn every_hostile_domain_costs_one_clear_error() {
    let cases = cases();
    assert!(cases.len() >= 12, "{} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, case)| run_case(name, case, build(case).path()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
