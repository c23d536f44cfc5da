//! Broken domains must fail with an error that names the file (and line), never a panic or a hang.

use crate::util;
use std::fs;

fn check(dir: &std::path::Path) -> (i32, String) {
    let (code, _, stderr) = util::run(&["domain", "check", dir.to_str().unwrap()], "");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (code, stderr)
}

#[test]
fn broken_tool_json_names_file_line_and_column() {
    let d = util::mock_with("tools.json", "\"kind\": \"read\",", "\"kind\": \"read\"");
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(err.contains("tools.json:5:5: expected `,` or `}`"), "{err}");
}

#[test]
fn script_syntax_error_names_file_and_line() {
    let d = util::mock_with(
        "tools/accounts.star",
        "def find_accounts_by_owner(data, owner):",
        "def find_accounts_by_owner(data, owner)",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(err.contains("accounts.star:11:"), "{err}");
}

#[test]
fn tool_without_body_is_named() {
    let d = util::mock_with(
        "tools/accounts.star",
        "def get_account(",
        "def _get_account(",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("tools.json:") && err.contains("tool `get_account` has no body"),
        "{err}"
    );
}

#[test]
fn body_without_schema_is_named() {
    let d = util::mock_copy();
    fs::write(
        d.path().join("tools/extra.star"),
        "def close_account(data, account_id):\n    return 'ok'\n",
    )
    .unwrap();
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("extra.star:1: function `close_account` has no schema"),
        "{err}"
    );
}

#[test]
fn bad_manifest_and_missing_tables_are_named() {
    let d = util::mock_with(
        "domain.toml",
        "tables = [\"accounts\", \"transfers\"]",
        "tables = [\"accounts\", \"loans\"]",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(err.contains("loans.json: cannot read"), "{err}");

    let d = util::mock_with("domain.toml", "builtins = [", "bultins = [");
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("domain.toml:") && err.contains("bultins"),
        "{err}"
    );

    let d = util::mock_copy();
    fs::write(d.path().join("data/accounts.json"), "[1, 2]").unwrap();
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("accounts.json: a table file must hold a JSON object"),
        "{err}"
    );
}

#[test]
fn read_tool_that_writes_is_caught() {
    let d = util::mock_with(
        "tools/accounts.star",
        "    return json.dumps(accounts[account_id])",
        "    accounts[account_id][\"seen\"] = True\n    return json.dumps(accounts[account_id])",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("(get_account): Read tool changed the database"),
        "{err}"
    );
}

#[test]
fn a_raising_body_is_reported_with_file_and_line() {
    let d = util::mock_with(
        "tools/accounts.star",
        "    return json.dumps(accounts[account_id])",
        "    return json.dumps(accounts[account_id][\"nickname\"])",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("(get_account): Error: 'nickname' (at "),
        "{err}"
    );
    assert!(err.contains("accounts.star:9:"), "{err}");
}

#[test]
fn a_request_template_naming_an_unknown_argument_or_tool_is_named() {
    let d = util::mock_with(
        "domain.toml",
        "the reason being {reason}.",
        "the reason being {why}.",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("domain.toml:")
            && err.contains("[grounding.requests] freeze_account: {why} is not an argument"),
        "{err}"
    );
    let d = util::mock_with(
        "domain.toml",
        "freeze_account = \"You want",
        "close_account = \"You want",
    );
    let (code, err) = check(d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("[grounding.requests] names tool \"close_account\""),
        "{err}"
    );
}
