//! Context samplers on the shipped domains.

use crate::util;
use apigen_mt::blueprint::sampler::{ApiGraph, Mix, rng_for, sample_user, user_context};
use apigen_mt::domain::{Domain, task::read_tasks};

fn load(name: &str) -> (Domain, Vec<apigen_mt::domain::task::Task>) {
    let d = Domain::load(&util::root().join("domains").join(name), None).unwrap();
    let tasks = read_tasks(
        &util::root()
            .join("domains")
            .join(name)
            .join("tasks/train.json"),
    )
    .unwrap();
    (d, tasks)
}

/// Other customers than `user`, as the pipeline shows them where a domain has peers.
fn peers_of(d: &Domain, user: &str) -> Vec<serde_json::Value> {
    let table = &d.manifest.blueprints.user_table;
    d.pristine()
        .table(table)
        .unwrap()
        .iter()
        .filter(|(id, _)| *id != user)
        .take(d.manifest.blueprints.peers)
        .map(|(_, r)| r.value().clone())
        .collect()
}

#[test]
fn retail_graph_links_lookups_to_writes() {
    let (d, tasks) = load("retail");
    let g = ApiGraph::derive(&d, &tasks, &[]);
    let to = |a: &str| g.edges.get(a).cloned().unwrap_or_default();
    assert!(
        to("find_user_id_by_name_zip").contains("get_user_details"),
        "{:#?}",
        g.edges
    );
    assert!(
        to("get_user_details").contains("get_order_details"),
        "{:#?}",
        g.edges
    );
    assert!(
        to("get_order_details").contains("cancel_pending_order"),
        "{:#?}",
        g.edges
    );
    assert!(
        g.edges
            .values()
            .all(|to| !to.contains("think") && !to.contains("calculate"))
    );
}

#[test]
fn walks_are_seeded_and_end_in_writes() {
    let (d, tasks) = load("airline");
    let g = ApiGraph::derive(&d, &tasks, &[]);
    let walk = |seed| g.walk(&mut rng_for(seed, "bp-1"), 2, 2);
    assert_eq!(walk(7), walk(7));
    let kinds = |w: &[String]| {
        w.iter()
            .map(|t| d.tool(t).unwrap().kind)
            .collect::<Vec<_>>()
    };
    for seed in 0..20 {
        let w = walk(seed);
        assert!(!w.is_empty());
        assert!(
            kinds(&w).contains(&apigen_mt::domain::tools::ToolKind::Write),
            "{w:?}"
        );
    }
    assert!(
        (0..20)
            .map(walk)
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 3,
        "walks vary with the seed"
    );
}

#[test]
fn user_context_follows_references_within_budget() {
    let (d, _) = load("retail");
    let user = sample_user(&d, "users", &mut rng_for(1, "x")).unwrap();
    let ctx = user_context(&d, "users", &user, 2, 100_000).unwrap();
    assert_eq!(ctx.records[0].0, "users");
    let orders: Vec<&str> = ctx
        .records
        .iter()
        .filter(|r| r.0 == "orders")
        .map(|r| r.1.as_str())
        .collect();
    let listed: Vec<String> = ctx.records[0].2["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(orders, listed);
    if !orders.is_empty() {
        assert!(
            ctx.records.iter().any(|r| r.0 == "products"),
            "products of the orders are reachable in two hops"
        );
    }
    let small = user_context(&d, "users", &user, 2, 2_000).unwrap();
    let size: usize = small.records.iter().map(|r| r.2.to_string().len()).sum();
    assert!(size <= 2_000 || small.records.len() == 1);
    assert!(small.records.len() <= ctx.records.len());
}

#[test]
fn mixes_vary() {
    let mixes: Vec<Mix> = (0..50)
        .map(|i| Mix::draw(&mut rng_for(3, &format!("bp-{i}")), 8000))
        .collect();
    assert!(mixes.iter().any(|m| m.writes == 1) && mixes.iter().any(|m| m.writes > 1));
    assert!(mixes.iter().all(|m| (4000..=8000).contains(&m.data_budget)));
}

#[test]
fn shipped_personas_load() {
    use apigen_mt::blueprint::sampler::read_personas;
    for (domain, n) in [("retail", 60), ("airline", 60), ("mock", 20)] {
        let personas = read_personas(
            &util::root()
                .join("domains")
                .join(domain)
                .join("personas.jsonl"),
        )
        .unwrap();
        assert_eq!(personas.len(), n, "{domain}");
        assert!(personas.iter().all(|p| p.id.starts_with(domain)));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("p.jsonl");
    std::fs::write(&bad, "{\"id\": \"x\", \"persona\": \"a\", \"style\": \"b\", \"goals_hint\": \"c\"}\n{\"id\": \"y\"}\n").unwrap();
    let err = read_personas(&bad).unwrap_err();
    assert!(err.contains("p.jsonl:2: missing field"), "{err}");
}

/// Sampled executable plans on every shipped domain: each plan runs without an `Error`, passes
/// the rules, writes, and every id its writes use is grounded in the customer's data; across
/// users and seeds the plans cover several write tools.
#[test]
fn sampled_plans_run_pass_the_rules_and_are_grounded() {
    use apigen_mt::blueprint::plan;
    use apigen_mt::domain::ground::Grounder;
    use apigen_mt::domain::task::Task;
    use std::collections::BTreeMap;
    for (name, min_tools) in [("mock", 2), ("retail", 4), ("airline", 2)] {
        let (d, _) = load(name);
        let g = Grounder::new(&d);
        let table = d.manifest.blueprints.user_table.clone();
        let mut made = 0;
        let mut missed: Vec<String> = Vec::new();
        let mut tools: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..40 {
            let mut rng = rng_for(3, &format!("bp-{i:05}"));
            let user = sample_user(&d, &table, &mut rng).unwrap();
            let peers = peers_of(&d, &user);
            let Some(p) = plan::sample(&d, &user, &peers, 1 + i % 3, &mut rng) else {
                // A frozen account can neither send, receive nor be frozen again: nothing to do.
                let frozen = d.pristine().record(&table, &user).unwrap()["status"] == "frozen";
                if !frozen {
                    missed.push(user);
                }
                continue;
            };
            made += 1;
            // The same seed and item draw the same plan.
            let mut again = rng_for(3, &format!("bp-{i:05}"));
            let u2 = sample_user(&d, &table, &mut again).unwrap();
            let p2 = plan::sample(&d, &u2, &peers, 1 + i % 3, &mut again).unwrap();
            assert_eq!(
                serde_json::to_string(&p.actions).unwrap(),
                serde_json::to_string(&p2.actions).unwrap(),
                "{name} {user}: plans differ between draws"
            );
            assert!(p.writes >= 1 && p.writes <= 3, "{name}: {p:?}");
            for o in &p.observations {
                assert!(
                    !o.starts_with("Error"),
                    "{name} {user}: {o} in {:?}",
                    p.actions
                );
            }
            let violations = apigen_mt::domain::policy::check(&d, &user, &p.actions);
            assert!(violations.is_empty(), "{name} {user}: {violations:?}");
            let task = Task {
                user_id: user.clone(),
                // Name the customer and any other customer the plan involves.
                instruction: format!(
                    "You are {user}. {}",
                    serde_json::to_string(&p.actions).unwrap()
                ),
                actions: p.actions.clone(),
                outputs: vec![],
                extra: Default::default(),
            };
            let unsourced: Vec<_> = g
                .check_sources(&task, &p.observations)
                .into_iter()
                .filter(|f| f.code == "ground.argument_unsourced")
                .collect();
            assert!(unsourced.is_empty(), "{name} {user}: {unsourced:?}");
            // The brief: an instruction that says who the customer is and repeats the requests
            // passes every grounding check, and an output drawn from the answers is sourced.
            let requests = apigen_mt::blueprint::brief::requests(&d, &p);
            let answers =
                apigen_mt::blueprint::brief::answers(&d, &p, &g.introduction(&user).unwrap());
            assert_eq!(requests.len(), p.writes, "{name}: {requests:?}");
            let mut briefed = task.clone();
            briefed.instruction =
                format!("{} {}", g.introduction(&user).unwrap(), requests.join(" "));
            if let Some(a) = answers.first() {
                briefed
                    .instruction
                    .push_str(&format!(" What is the {}?", a.field));
                briefed.outputs = vec![a.value.clone()];
            }
            let mut findings = g.check(&briefed, &p.observations);
            findings.extend(g.check_asked(&briefed));
            let unasked = apigen_mt::blueprint::brief::unasked(
                &briefed.instruction,
                &briefed.outputs,
                &answers,
            );
            assert!(
                findings.is_empty() && unasked.is_empty(),
                "{name} {user}: {findings:?} {unasked:?} for {:?}",
                briefed.instruction
            );
            if i < 3 {
                eprintln!("{name} brief: {}", briefed.instruction);
            }
            for a in &p.actions {
                if d.tool(&a.name).unwrap().kind == apigen_mt::domain::tools::ToolKind::Write {
                    *tools.entry(a.name.clone()).or_default() += 1;
                }
            }
        }
        eprintln!("{name}: {made}/40 plans; writes {tools:?}");
        assert!(missed.len() <= 6, "{name}: no plan for {missed:?}");
        assert!(tools.len() >= min_tools, "{name}: {tools:?}");
    }
}

/// A task of one action for `user`, for the grounding checks.
fn one_action(
    user: &str,
    instruction: &str,
    name: &str,
    args: serde_json::Value,
) -> apigen_mt::domain::task::Task {
    apigen_mt::domain::task::Task {
        user_id: user.into(),
        instruction: instruction.into(),
        actions: vec![apigen_mt::domain::task::Action::new(
            name,
            args.as_object().unwrap().clone(),
        )],
        outputs: vec![],
        extra: Default::default(),
    }
}

/// The details of `ground.write_unasked` findings for one action of `user`.
fn unasked_details(
    g: &apigen_mt::domain::ground::Grounder<'_>,
    user: &str,
    instruction: &str,
    name: &str,
    args: serde_json::Value,
) -> Vec<String> {
    g.check_asked(&one_action(user, instruction, name, args))
        .into_iter()
        .filter(|f| f.code == "ground.write_unasked")
        .map(|f| f.detail)
        .collect()
}

#[test]
fn a_write_on_a_record_the_instruction_never_mentions_is_unasked() {
    use apigen_mt::domain::ground::Grounder;
    let (d, _) = load("airline");
    let g = Grounder::new(&d);
    let reservation = d
        .pristine()
        .record("reservations", "KJQCD4")
        .unwrap()
        .clone();
    let user = reservation["user_id"].as_str().unwrap().to_owned();
    let unasked = |instruction: &str| {
        let args = serde_json::json!({"reservation_id": "KJQCD4"});
        unasked_details(&g, &user, instruction, "cancel_reservation", args)
            .iter()
            .any(|d| d.contains("KJQCD4"))
    };
    // The customer says who they are and nothing of which reservation.
    assert!(unasked(&format!(
        "You are {user}. You want to cancel a reservation."
    )));
    // By its id, or by its route.
    assert!(!unasked(&format!(
        "You are {user}. You want to cancel reservation KJQCD4."
    )));
    assert!(!unasked(&format!(
        "You are {user}. You want to cancel your trip from {} to {}.",
        reservation["origin"].as_str().unwrap(),
        reservation["destination"].as_str().unwrap()
    )));

    // Mock: a transfer to an account the instruction never names.
    let (m, _) = load("mock");
    let g = Grounder::new(&m);
    let details = |instruction: &str| {
        let args = serde_json::json!({"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 20});
        unasked_details(&g, "acc_1002", instruction, "transfer_funds", args)
    };
    assert_eq!(
        details("I am Barbara Allen (acc_1002) and I want to send 20 to a friend.").len(),
        1
    );
    assert!(details("I am Barbara Allen (acc_1002) and I want to send 20 to acc_1001.").is_empty());
    assert!(
        details("I am Barbara Allen (acc_1002) and I want to send 20 to Alan Lovelace.").is_empty()
    );
}

#[test]
fn a_list_a_write_sets_is_said_only_when_everything_in_it_is() {
    use apigen_mt::domain::ground::Grounder;
    let (d, _) = load("airline");
    let g = Grounder::new(&d);
    let user = d.pristine().record("reservations", "KJQCD4").unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unasked = |instruction: &str| {
        let args = serde_json::json!({"reservation_id": "KJQCD4", "passengers": [{"first_name": "Gustavo", "last_name": "Quinn", "dob": "2020-10-23"}]});
        unasked_details(
            &g,
            &user,
            instruction,
            "update_reservation_passengers",
            args,
        )
        .iter()
        .any(|d| d.contains("passengers"))
    };
    assert!(unasked(
        "You want to change the passengers of reservation KJQCD4."
    ));
    assert!(unasked(
        "You want the passengers of reservation KJQCD4 to be Gustavo Quinn."
    ));
    assert!(!unasked(
        "You want the passengers of reservation KJQCD4 to be Gustavo Quinn 2020-10-23."
    ));
}

#[test]
fn an_item_a_write_swaps_is_asked_for_only_when_the_instruction_names_it() {
    use apigen_mt::domain::ground::Grounder;
    let (d, _) = load("retail");
    let g = Grounder::new(&d);
    // A pending order's first item, and another variant of the same product.
    let (order_id, order) = d
        .pristine()
        .table("orders")
        .unwrap()
        .iter()
        .find(|(_, o)| o.value()["status"] == "pending")
        .map(|(id, o)| (id.clone(), o.value().clone()))
        .unwrap();
    let item = &order["items"][0];
    let product = d
        .pristine()
        .record("products", item["product_id"].as_str().unwrap())
        .unwrap()
        .clone();
    let old = item["item_id"].as_str().unwrap();
    let new = product["variants"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.as_str() != old)
        .unwrap()
        .clone();
    let user = order["user_id"].as_str().unwrap();
    let unasked = |instruction: &str| {
        let args = serde_json::json!({"order_id": order_id, "item_ids": [old], "new_item_ids": [new], "payment_method_id": "gift_card_0000000"});
        unasked_details(&g, user, instruction, "modify_pending_order_items", args)
            .iter()
            .filter(|d| d.contains("never names"))
            .count()
    };
    // The order named, nothing of what changes in it: both items unasked.
    assert_eq!(
        unasked(&format!(
            "You are {user}. You want to talk about your pending order {order_id}."
        )),
        2
    );
    let name = product["name"].as_str().unwrap();
    assert_eq!(
        unasked(&format!(
            "You are {user}. You want the {name} in your pending order {order_id} changed."
        )),
        0
    );
    assert_eq!(
        unasked(&format!(
            "You are {user}. In order {order_id} you want item {old} swapped for {new}."
        )),
        0
    );
}

/// Plans drawn as the pipeline draws them (a mix's write count, then a plan for the item's
/// customer) take many shapes: 20 items give at least 10 distinct action-name sequences on every
/// shipped domain, so accepted blueprints can reach the 10 per 20.
#[test]
fn twenty_plans_take_at_least_ten_shapes() {
    use apigen_mt::blueprint::plan;
    use std::collections::BTreeMap;
    for name in ["mock", "retail", "airline"] {
        let (d, _) = load(name);
        let table = d.manifest.blueprints.user_table.clone();
        let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
        let mut i = 0;
        let mut made = 0;
        while made < 20 && i < 200 {
            let mut rng = rng_for(11, &format!("bp-{i:05}"));
            i += 1;
            let mix = Mix::draw(&mut rng, 8000);
            let user = sample_user(&d, &table, &mut rng).unwrap();
            let peers = peers_of(&d, &user);
            let Some(p) = plan::sample(&d, &user, &peers, mix.writes, &mut rng) else {
                continue;
            };
            made += 1;
            let shape: Vec<&str> = p.actions.iter().map(|a| a.name.as_str()).collect();
            *shapes.entry(shape.join(" ")).or_default() += 1;
        }
        eprintln!(
            "{name}: {} shapes in {made} plans: {shapes:#?}",
            shapes.len()
        );
        assert!(shapes.len() >= 10, "{name}: {shapes:#?}");
    }
}
