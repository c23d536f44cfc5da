//! Stage-1 blueprint checks on the mock domain: one test per rejection branch.

use apigen_mt::blueprint::check::{Dedup, stage1};
use apigen_mt::domain::Domain;
use serde_json::json;

fn mock() -> Domain {
    Domain::load(&crate::util::root().join("domains/mock"), None).unwrap()
}

fn answer(actions: serde_json::Value) -> String {
    json!({"instruction": "You are Barbara Allen and want to move money.", "actions": actions, "outputs": []}).to_string()
}

fn codes(domain: &Domain, actions: serde_json::Value, dedup: &Dedup) -> Vec<String> {
    match stage1(domain, &answer(actions), "acc_1002", dedup) {
        Ok(_) => vec![],
        Err(rs) => rs.into_iter().map(|r| r.code).collect(),
    }
}

#[test]
fn a_clean_blueprint_passes_and_records_its_diff() {
    let d = mock();
    let (task, executed) = stage1(
        &d,
        &answer(json!([{"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 10}}])),
        "acc_1002",
        &Dedup::default(),
    )
    .unwrap();
    assert_eq!(task.user_id, "acc_1002");
    let paths: Vec<&str> = executed.diff.iter().map(|e| e.path()).collect();
    assert_eq!(
        paths,
        [
            "/accounts/acc_1001/balance",
            "/accounts/acc_1001/transfer_ids/0",
            "/accounts/acc_1002/balance",
            "/accounts/acc_1002/transfer_ids/0",
            "/transfers/tr_1001"
        ]
    );
}

#[test]
fn each_failure_has_its_code() {
    let d = mock();
    let none = Dedup::default();
    assert_eq!(
        codes(&d, json!([{"name": "wire_money", "arguments": {}}]), &none),
        ["exec.unknown_tool"]
    );
    assert_eq!(
        codes(
            &d,
            json!([{"name": "get_account", "arguments": {"id": "acc_1002"}}]),
            &none
        ),
        ["exec.bad_arguments"]
    );
    assert_eq!(
        codes(
            &d,
            json!([{"name": "get_account", "arguments": {"account_id": "acc_9"}}]),
            &none
        ),
        ["exec.tool_error"]
    );
    assert_eq!(codes(&d, json!([]), &none), ["exec.no_actions"]);
    assert_eq!(
        codes(
            &d,
            json!([{"name": "transfer_funds", "arguments": {"from_account_id": "acc_1003", "to_account_id": "acc_1002", "amount": 1}}]),
            &none
        ),
        ["policy.transfer_only_from_own_accounts"]
    );
    assert_eq!(
        codes(
            &d,
            json!([{"name": "transfer_to_human_agents", "arguments": {"summary": "x"}}, {"name": "get_account", "arguments": {"account_id": "acc_1002"}}]),
            &none
        ),
        ["exec.after_terminate"]
    );
}

#[test]
fn the_same_user_and_actions_twice_is_a_duplicate() {
    let d = mock();
    let mut dedup = Dedup::default();
    let actions = json!([{"name": "get_account", "arguments": {"account_id": "acc_1002"}}]);
    let (task, _) = stage1(&d, &answer(actions.clone()), "acc_1002", &dedup).unwrap();
    dedup.insert(&task).unwrap();
    assert_eq!(codes(&d, actions, &dedup), ["dedup.duplicate"]);
}
