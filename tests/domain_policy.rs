//! The retail and airline policy rules on hand-made violations (`fixtures/policy-violations.jsonl`):
//! each action list must be flagged with exactly the recorded violations.

use crate::util;
use apigen_mt::domain::{Domain, policy, task::Action};
use serde_json::Value;

#[test]
fn every_crafted_violation_is_reported_exactly() {
    let text = std::fs::read_to_string(util::root().join("tests/fixtures/policy-violations.jsonl"))
        .unwrap();
    let retail = Domain::load(&util::root().join("domains/retail"), None).unwrap();
    let airline = Domain::load(&util::root().join("domains/airline"), None).unwrap();
    let mut rules_hit = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let case: Value = serde_json::from_str(line).unwrap();
        let domain = if case["domain"] == "retail" {
            &retail
        } else {
            &airline
        };
        let actions: Vec<Action> = case["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| Action::from_json(a).unwrap())
            .collect();
        let got = policy::check(domain, case["user_id"].as_str().unwrap(), &actions);
        let got: Vec<(String, String)> = got.into_iter().map(|v| (v.rule, v.message)).collect();
        let want: Vec<(String, String)> = case["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["rule"].as_str().unwrap().to_owned(),
                    v["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, want, "case {i} ({})", case["rule"]);
        rules_hit.insert(format!(
            "{}.{}",
            case["domain"].as_str().unwrap(),
            case["rule"].as_str().unwrap()
        ));
    }
    // Every rule with a checkable violation has a case (airline's no_insurance_added_after_booking
    // cannot be violated by any current tool).
    let rule_count = |d: &Domain| d.rules().unwrap().functions().count();
    assert_eq!(
        rules_hit.len(),
        rule_count(&retail) + rule_count(&airline) - 1,
        "{rules_hit:#?}"
    );
}
