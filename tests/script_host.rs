//! The script host (`apigen-mt __script-host`) answers exactly as in-process calls do, across
//! branching databases and more states than it keeps, for tool bodies and policy rules.

use crate::util;
use apigen_mt::domain::Domain;
use apigen_mt::domain::db::Db;
use apigen_mt::domain::policy;
use apigen_mt::domain::script::Scripts;
use apigen_mt::domain::script::host::Client;
use apigen_mt::domain::task::Action;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use std::path::Path;

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn the_host_answers_as_in_process_calls_do() {
    let dir = util::root().join("domains/mock");
    let domain = Domain::load(&dir, None).unwrap();
    let tools = Scripts::load_dir(&dir.join("tools"), None).unwrap();
    let rules = Scripts::load_dir(&dir.join("rules"), None).unwrap();
    let limits = domain.manifest.limits;
    let mut host = Client::new(
        Path::new(env!("CARGO_BIN_EXE_apigen-mt")),
        Some(&dir.join("tools")),
        Some(&dir.join("rules")),
        limits.max_heap_bytes,
    );
    let ids: Vec<String> = domain
        .pristine()
        .table("accounts")
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // Pairs of (in-process, host) databases that must stay equal; new ones branch off old ones.
    let mut dbs: Vec<(Db, Db)> = vec![(domain.pristine().clone(), domain.pristine().clone())];
    let mut writes = 0;
    for step in 0..240 {
        if rng.random_bool(0.2) {
            let i = rng.random_range(0..dbs.len());
            let branch = dbs[i].clone();
            dbs.push(branch);
        }
        let i = rng.random_range(0..dbs.len());
        let a = &ids[rng.random_range(0..ids.len())];
        let b = &ids[rng.random_range(0..ids.len())];
        let (name, call) = match rng.random_range(0..4) {
            0 => ("get_account", json!({"account_id": a})),
            1 => ("find_accounts_by_owner", json!({"owner": "Barbara Allen"})),
            2 => (
                "transfer_funds",
                json!({"from_account_id": a, "to_account_id": b, "amount": rng.random_range(1..90), "memo": "m"}),
            ),
            _ => (
                "freeze_account",
                json!({"account_id": a, "reason": "lost card"}),
            ),
        };
        let (local, remote) = &mut dbs[i];
        let expected = tools.call_with_db(name, local, &args(call.clone()), limits);
        let got = host.call_tool(name, remote, &args(call.clone()), limits);
        assert_eq!(got, expected, "step {step}: {name} {call}");
        assert_eq!(remote.hash(), local.hash(), "step {step}: {name} {call}");
        writes += usize::from(name == "transfer_funds" || name == "freeze_account");
    }
    assert!(
        writes > 80 && dbs.len() > 20,
        "{writes} writes, {} databases",
        dbs.len()
    );

    let actions = vec![
        Action::new("get_account", args(json!({"account_id": "acc_1002"}))),
        Action::new(
            "transfer_funds",
            args(
                json!({"from_account_id": "acc_1001", "to_account_id": "acc_1002", "amount": 5, "memo": ""}),
            ),
        ),
        Action::new(
            "freeze_account",
            args(json!({"account_id": "acc_1002", "reason": "x"})),
        ),
    ];
    let trace = policy::trace(&domain, "acc_1002", &actions);
    for (rule, _) in rules.functions() {
        assert_eq!(
            host.call_rule(rule, &trace, limits),
            rules.call_rule(rule, &trace, limits),
            "{rule}"
        );
    }
    let violations: usize = rules
        .functions()
        .map(|(r, _)| rules.call_rule(r, &trace, limits).unwrap().len())
        .sum();
    assert!(
        violations > 0,
        "the trace breaks a rule, so the comparison means something"
    );
}
