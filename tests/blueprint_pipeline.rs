//! Phase 1 end to end with a scripted model on the mock domain: one test per branch.
//! The scripted backend answers every role in call order: proposer, then each reviewer, then
//! (after a committee rejection) the summariser.

use crate::util;
use apigen_mt::blueprint::committee::Threshold;
use apigen_mt::blueprint::pipeline::{
    BlueprintRecord, Pipeline, RejectedRecord, Role, Settings, Summary,
};
use apigen_mt::blueprint::plan::PlanMode;
use apigen_mt::blueprint::sampler::ApiGraph;
use apigen_mt::domain::Domain;
use apigen_mt::domain::ground::Grounder;
use apigen_mt::domain::task::read_tasks;
use apigen_mt::llm::scripted::ScriptedBackend;
use apigen_mt::llm::tools::ToolFormat;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

const YES: &str = r#"{"reflection": "fine", "correctness": 1, "completeness": 1, "satisfaction": 1, "creativity": 1, "total": 4, "correction": ""}"#;
const NO: &str = r#"{"reflection": "the instruction never says which account", "correctness": 1, "completeness": 0, "satisfaction": 0, "creativity": 0, "total": 1, "correction": "name the account"}"#;

fn proposal(actions: Value) -> String {
    json!({"thought": "t", "instruction": "You are Barbara Allen. You want to check your account acc_1002 and move money to account acc_1001.", "actions": actions, "outputs": []}).to_string()
}

fn look() -> String {
    proposal(json!([{"name": "get_account", "arguments": {"account_id": "acc_1002"}}]))
}

fn transfer(amount: f64) -> String {
    // The instruction states the amount: a write's values must be asked for (ground.write_unasked).
    json!({"thought": "t", "instruction": format!("You are Barbara Allen (acc_1002): you want {amount} sent over to acc_1001."),
        "actions": [{"name": "transfer_funds", "arguments": {"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": amount}}], "outputs": []}).to_string()
}

struct Run {
    summary: Summary,
    accepted: Vec<BlueprintRecord>,
    rejected: Vec<RejectedRecord>,
    left: usize,
}

/// Phase 1 on the mock domain into `out`, every role played by `backend`.
fn run_phase1(
    out: &Path,
    backend: Arc<dyn apigen_mt::llm::Backend>,
    settings: Settings,
    concurrency: usize,
) -> Summary {
    let domain = Domain::load(&util::root().join("domains/mock"), None).unwrap();
    let examples = read_tasks(&util::root().join("domains/mock/tasks/train.json")).unwrap();
    let role = |name: &str| Role {
        name: name.into(),
        backend: backend.clone(),
        temperature: 0.0,
        max_tokens: 100,
    };
    let pipeline = Pipeline {
        domain: &domain,
        proposer: role("proposer"),
        reviewers: vec![role("r0"), role("r1"), role("r2")],
        summariser: role("summariser"),
        settings,
        graph: ApiGraph::derive(&domain, &examples, &[]),
        personas: vec![],
        examples,
        grounder: Grounder::new(&domain),
        concurrency,
    };
    pipeline.run(out, |_| {}).unwrap()
}

/// Settings of the mock runs: `count` to accept of `max_items`, for `users`.
fn settings(count: usize, max_items: usize, recombine: usize, users: &[&str]) -> Settings {
    Settings {
        count,
        seed: 7,
        max_turns: 3,
        threshold: Threshold::default(),
        data_budget: 4000,
        recombine,
        max_items,
        user_table: "accounts".into(),
        only_users: users.iter().map(|u| u.to_string()).collect(),
        plan: PlanMode::None,
        view_lag: 0,
    }
}

fn run(out: &Path, replies: Vec<String>, count: usize, recombine: usize) -> Run {
    let script = Arc::new(ScriptedBackend::new(ToolFormat::Hermes, replies));
    // Every item sees the one before it (view lag 0): the script answers in call order.
    let summary = run_phase1(
        out,
        script.clone(),
        settings(count, 5, recombine, &["acc_1002"]),
        4,
    );
    let read = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Run {
        summary,
        accepted: read("blueprints.jsonl")
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect(),
        rejected: read("rejected.jsonl")
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect(),
        left: script.remaining(),
    }
}

fn codes(r: &Run) -> Vec<&str> {
    r.rejected.iter().map(|x| x.code.as_str()).collect()
}

fn replies(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn accepted_first_time() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        vec![look(), YES.into(), YES.into(), YES.into()],
        1,
        0,
    );
    assert_eq!((r.summary.accepted, r.left), (1, 0));
    let b = &r.accepted[0];
    assert_eq!(
        (b.id.as_str(), b.user_id.as_str(), b.attempts),
        ("bp-00000", "acc_1002", 1)
    );
    assert_eq!(
        b.actions,
        vec![json!({"name": "get_account", "arguments": {"account_id": "acc_1002"}})]
    );
    assert_eq!(b.reviews.len(), 3);
    assert!(b.diff.is_empty());
    assert_eq!(r.summary.funnel.proposed, 1);
    assert_eq!(r.summary.funnel.accepted, 1);
    assert!(r.summary.complete);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["funnel"]["committee_ok"], 1);
}

#[test]
fn stage_one_failures_feed_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = proposal(json!([{"name": "wire_money", "arguments": {}}]));
    let tool_error =
        proposal(json!([{"name": "get_account", "arguments": {"account_id": "acc_9"}}]));
    let r = run(
        dir.path(),
        vec![
            "I cannot".into(),
            unknown,
            tool_error,
            look(),
            YES.into(),
            YES.into(),
            YES.into(),
        ],
        1,
        0,
    );
    // Item 0 gets three proposals (all rejected); item 1 is accepted at once.
    assert_eq!(
        codes(&r),
        ["format.not_json", "exec.unknown_tool", "exec.tool_error"]
    );
    assert_eq!(r.accepted[0].id, "bp-00001");
    assert_eq!(
        (
            r.summary.funnel.proposed,
            r.summary.funnel.format_ok,
            r.summary.funnel.executed
        ),
        (4, 3, 1)
    );
}

#[test]
fn policy_violations_are_coded_by_rule() {
    let dir = tempfile::tempdir().unwrap();
    let theft = proposal(
        json!([{"name": "transfer_funds", "arguments": {"from_account_id": "acc_1003", "to_account_id": "acc_1002", "amount": 5}}]),
    );
    let r = run(
        dir.path(),
        vec![theft, look(), YES.into(), YES.into(), YES.into()],
        1,
        0,
    );
    assert_eq!(codes(&r), ["policy.transfer_only_from_own_accounts"]);
    assert_eq!(r.accepted[0].attempts, 2, "fixed on the second proposal");
}

#[test]
fn committee_majority_decides() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), replies(&[&look(), YES, YES, NO]), 1, 0);
    assert_eq!(r.summary.accepted, 1, "2-1 accepts");

    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        replies(&[
            &look(),
            YES,
            NO,
            NO,
            "Say which account.",
            &transfer(10.0),
            YES,
            YES,
            YES,
        ]),
        1,
        0,
    );
    assert_eq!(codes(&r), ["committee.rejected"], "1-2 rejects");
    assert!(r.rejected[0].detail.contains("Say which account."));
    assert_eq!((r.accepted[0].attempts, r.left), (2, 0));
    assert_eq!(
        r.accepted[0].diff.len(),
        5,
        "balances, transfer ids and the transfer record"
    );
}

#[test]
fn duplicates_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        replies(&[
            &look(),
            YES,
            YES,
            YES,
            &look(),
            &transfer(3.0),
            YES,
            YES,
            YES,
        ]),
        2,
        0,
    );
    assert_eq!(codes(&r), ["dedup.duplicate"]);
    assert_eq!(r.summary.accepted, 2);
}

#[test]
fn recombination_accepted_and_rejected() {
    let combined = r#"{"thought": "t", "instruction": "You are Barbara Allen. Check acc_1002, then move 3.0 to acc_1001."}"#;
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        replies(&[
            &look(),
            YES,
            YES,
            YES,
            &transfer(3.0),
            YES,
            YES,
            YES,
            combined,
            YES,
            YES,
            YES,
        ]),
        2,
        1,
    );
    assert_eq!((r.summary.accepted, r.summary.recombined), (2, 1));
    let rc = r.accepted.last().unwrap();
    assert_eq!(rc.recombined_from.len(), 2);
    assert_eq!(rc.actions.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        replies(&[
            &look(),
            YES,
            YES,
            YES,
            &transfer(3.0),
            YES,
            YES,
            YES,
            combined,
            NO,
            NO,
            NO,
        ]),
        2,
        1,
    );
    assert_eq!((r.summary.accepted, r.summary.recombined), (2, 0));
    assert!(codes(&r).contains(&"committee.rejected"));
}

#[test]
fn resume_after_an_interruption_gives_the_same_accepted_set() {
    let script = replies(&[
        &look(),
        YES,
        YES,
        YES,
        "nope",
        &transfer(2.5),
        YES,
        YES,
        YES,
    ]);
    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = run(whole.path(), script.clone(), 2, 0);

    let cut = tempfile::tempdir().unwrap();
    let first = run(cut.path(), script[..4].to_vec(), 1, 0);
    assert_eq!(first.summary.accepted, 1);
    // A crash in the middle of the next item: a rejection written, no commit, a torn line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(cut.path().join("rejected.jsonl"))
        .unwrap();
    use std::io::Write;
    writeln!(
        f,
        "{}",
        json!({"id": "bp-00001", "attempt": 1, "code": "format.not_json", "detail": "x"})
    )
    .unwrap();
    write!(f, "{{\"id\": \"bp-0000").unwrap();
    drop(f);
    let resumed = run(cut.path(), script[4..].to_vec(), 2, 0);
    let ids = |r: &Run| {
        r.accepted
            .iter()
            .map(|b| (b.id.clone(), b.actions.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&resumed), ids(&uninterrupted));
    assert_eq!(
        codes(&resumed),
        codes(&uninterrupted),
        "the torn item's records were dropped, not duplicated"
    );
    assert_eq!(resumed.summary.funnel, uninterrupted.summary.funnel);
}

/// Replies chosen by the request, not by call order, so that items running at once get their
/// own: the proposer asks its customer (the prompt's `user id:`) to send 1.5, then 2.5, then 3.5
/// to acc_1001 (one amount per revision); a reviewer passes every amount but 2.5; the summariser
/// says what to fix.
fn pure_reply(request: &apigen_mt::llm::ChatRequest) -> String {
    let text = util::request_text(request);
    if let Some(at) = text.find("user id: ") {
        let user = &text[at + 9..at + 17];
        let name = match user {
            "acc_1002" => "Barbara Allen",
            "acc_1003" => "Ada Turing",
            _ => "Grace Dijkstra",
        };
        let amount = [1.5, 2.5, 3.5][util::assistant_turns(request).min(2)];
        json!({"thought": "t", "instruction": format!("You are {name} ({user}): you want to send {amount} over to acc_1001."),
            "actions": [{"name": "transfer_funds", "arguments": {"from_account_id": user, "to_account_id": "acc_1001", "amount": amount}}], "outputs": []}).to_string()
    } else if request.constraint.is_some() {
        if text.contains("send 2.5") { NO } else { YES }.to_string()
    } else {
        "Say which account.".to_string()
    }
}

/// Run phase 1 with [`pure_reply`] on three customers: the files it writes, timings aside.
fn run_pure(out: &Path, concurrency: usize, view_lag: usize) -> (Summary, [String; 3]) {
    let mut s = settings(12, 12, 0, &["acc_1002", "acc_1003", "acc_1004"]);
    s.seed = 3;
    s.view_lag = view_lag;
    let summary = run_phase1(out, Arc::new(util::Pure(pure_reply)), s, concurrency);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    let items: String = read("items.jsonl")
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["seconds"] = json!(null);
            v.to_string() + "\n"
        })
        .collect();
    (
        summary,
        [read("blueprints.jsonl"), read("rejected.jsonl"), items],
    )
}

/// Twelve items at one in flight and at eight give the same files, byte for byte, with the
/// default view lag (duplicates of blueprints accepted within the lag rejected at commit) and
/// with none (every item sees all before it, so a duplicate is revised).
#[test]
fn concurrent_items_give_the_files_of_one_at_a_time() {
    for lag in [16, 0] {
        let one = tempfile::tempdir().unwrap();
        let (s1, f1) = run_pure(one.path(), 1, lag);
        let eight = tempfile::tempdir().unwrap();
        let (s8, f8) = run_pure(eight.path(), 8, lag);
        assert_eq!(s1.items, 12);
        assert_eq!(
            (s8.accepted, s8.funnel.clone()),
            (s1.accepted, s1.funnel.clone())
        );
        for (a, b) in f1.iter().zip(&f8) {
            assert_eq!(a, b, "lag {lag}");
        }
        let rejected = &f1[1];
        let at_commit = rejected
            .lines()
            .filter(|l| l.contains("dedup.duplicate") && !l.contains("proposal"))
            .count();
        if lag == 16 {
            // Three customers, one blueprint each (1.5 on the first try); the other nine
            // items repeat one of them and are only found out when committed.
            assert_eq!(s1.accepted, 3, "{rejected}");
            assert_eq!(at_commit, 9, "{rejected}");
        } else {
            // Each customer's later items see the earlier blueprints and revise past them:
            // 1.5 accepted, 2.5 rejected by the committee, 3.5 accepted.
            assert_eq!(s1.accepted, 6, "{rejected}");
            assert_eq!(at_commit, 0, "{rejected}");
            assert!(rejected.contains("committee.rejected"), "{rejected}");
        }
    }
}

/// The report of a phase-1 run: its funnel is the summary's, every blueprint and rejection is
/// listed, and a blueprint opens with its actions and its rejected attempts' feedback.
#[test]
fn the_report_shows_the_phase_1_funnel_and_the_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = proposal(json!([{"name": "wire_money", "arguments": {}}]));
    let r = run(
        dir.path(),
        vec![
            "I cannot".into(),
            unknown,
            look(),
            YES.into(),
            YES.into(),
            YES.into(),
        ],
        1,
        0,
    );
    assert_eq!(r.accepted.len(), 1);
    let page = dir.path().join("out.html");
    let (code, _, err) = util::run(
        &[
            "report",
            dir.path().to_str().unwrap(),
            "--out",
            page.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let Some(browser) = util::chromium() else {
        return;
    };
    let id = &r.accepted[0].id;
    let dom = util::dump_dom(&browser, &page, &format!("blueprints={id}"));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    for stage in [
        "proposed",
        "format_ok",
        "executed",
        "policy_ok",
        "grounded",
        "committee_ok",
        "accepted",
    ] {
        let n = &summary["funnel"][stage];
        assert!(
            dom.contains(&format!("data-stage=\"{stage}\" data-count=\"{n}\"")),
            "funnel stage {stage} shows {n}"
        );
    }
    for (code, n) in summary["rejections"].as_object().unwrap() {
        assert!(
            dom.contains(&format!("data-code=\"{code}\"")),
            "code {code} listed"
        );
        assert!(n.as_u64().unwrap() > 0);
    }
    assert!(dom.contains(&format!(
        "data-kind=\"blueprints\" data-total=\"{}\"",
        r.accepted.len()
    )));
    assert!(dom.contains(&format!(
        "data-kind=\"rejected\" data-total=\"{}\"",
        r.rejected.len()
    )));
    assert!(dom.contains(&format!("data-open=\"blueprints:{id}\"")));
    assert!(dom.contains("class=\"tool-call\" data-tool=\"get_account\""));
}

#[test]
fn a_fixed_plans_write_left_unasked_gets_the_briefs_request_line() {
    // The proposer says who the customer is and nothing of the plan's write: the brief's
    // request line for it is added, which names the write's target and values, so the
    // blueprint is grounded and reaches the committee.
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(ScriptedBackend::new(
        ToolFormat::Hermes,
        replies(&[
            r#"{"thought": "t", "instruction": "You are Barbara Allen, account acc_1002.", "outputs": []}"#,
            YES,
            YES,
            YES,
        ]),
    ));
    let mut s = settings(1, 1, 0, &["acc_1002"]);
    s.plan = PlanMode::Fixed;
    let summary = run_phase1(dir.path(), script, s, 1);
    assert_eq!(summary.accepted, 1, "{summary:?}");
    assert_eq!(summary.funnel.requests_added, 1, "{:?}", summary.funnel);
    let b: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("blueprints.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let instruction = b["instruction"].as_str().unwrap();
    assert!(
        instruction.starts_with("You are Barbara Allen, account acc_1002. You want"),
        "{instruction}"
    );
}
