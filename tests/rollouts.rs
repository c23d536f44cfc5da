//! Phase 2 and evaluation with scripted models on the mock domain: one test per branch.
//! The agent, the user and the judge are separate scripted backends, each answering its own
//! requests in call order.

use crate::util;
use apigen_mt::dataset::{self, Format};
use apigen_mt::domain::Domain;
use apigen_mt::domain::task::{Task, read_tasks};
use apigen_mt::llm::Backend;
use apigen_mt::llm::scripted::ScriptedBackend;
use apigen_mt::llm::tools::ToolFormat;
use apigen_mt::role::Role;
use apigen_mt::rollout::run::{Logs, RolloutSummary, Rollouts, Settings};
use apigen_mt::rollout::{AgentRole, GREETING, UserRole, UserStrategy, UserView, code};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

fn domain() -> Domain {
    Domain::load(&util::root().join("domains/mock"), None).unwrap()
}

/// The mock train tasks: 0 moves 250.50 from acc_1002 to acc_1001 (memo "rent share"); 1 freezes
/// acc_1003 and must say its balance, 1757.18.
fn tasks() -> Vec<Task> {
    read_tasks(&util::root().join("domains/mock/tasks/train.json")).unwrap()
}

fn call(name: &str, args: Value) -> String {
    format!(
        "<tool_call>\n{}\n</tool_call>",
        json!({"name": name, "arguments": args})
    )
}

fn get_1002() -> String {
    call("get_account", json!({"account_id": "acc_1002"}))
}

fn transfer(amount: f64) -> String {
    call(
        "transfer_funds",
        json!({"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": amount, "memo": "rent share"}),
    )
}

fn script(replies: &[&str]) -> Arc<ScriptedBackend> {
    Arc::new(ScriptedBackend::new(ToolFormat::Hermes, replies.to_vec()))
}

struct Setup {
    agent: Arc<ScriptedBackend>,
    user: Arc<ScriptedBackend>,
    judge: Arc<ScriptedBackend>,
    max_steps: usize,
    stall_after: usize,
    strategy: UserStrategy,
    view: UserView,
    require_gold_tools: bool,
    trials: usize,
    keep: bool,
    resample: usize,
    agent_resample: usize,
}

impl Setup {
    fn new(agent: &[&str], user: &[&str]) -> Setup {
        Setup {
            agent: script(agent),
            user: script(user),
            judge: script(&[]),
            max_steps: 30,
            stall_after: 0,
            strategy: UserStrategy::Plain,
            view: UserView::TauBench,
            require_gold_tools: false,
            trials: 1,
            keep: true,
            resample: 0,
            agent_resample: 0,
        }
    }

    fn run(&self, out: &Path, tasks: &[(String, Task)]) -> RolloutSummary {
        self.run_with(out, tasks, self.agent.clone(), self.user.clone(), 1)
    }

    fn run_with(
        &self,
        out: &Path,
        tasks: &[(String, Task)],
        agent: Arc<dyn Backend>,
        user: Arc<dyn Backend>,
        concurrency: usize,
    ) -> RolloutSummary {
        let domain = domain();
        let r = Rollouts {
            domain: &domain,
            agent: AgentRole {
                model: Role {
                    name: "agent".into(),
                    backend: agent,
                    // Replies are drawn again only where sampling could change them.
                    temperature: if self.agent_resample > 0 { 0.7 } else { 0.0 },
                    max_tokens: 100,
                },
                max_steps: self.max_steps,
                parallel_calls: false,
                constrained: false,
                trace: false,
                stall_after: self.stall_after,
                seen_ids: false,
                resample: self.agent_resample,
                gold_writes: false,
            },
            user: UserRole {
                model: Role {
                    name: "user".into(),
                    backend: user,
                    temperature: 1.0,
                    max_tokens: 100,
                },
                strategy: self.strategy,
                view: self.view,
                n: 4,
                judge: Role {
                    name: "judge".into(),
                    backend: self.judge.clone() as Arc<dyn Backend>,
                    temperature: 0.0,
                    max_tokens: 24,
                },
                resample: self.resample,
            },
            settings: Settings {
                trials: self.trials,
                seed: 3,
                keep: self.keep,
                require_gold_tools: self.require_gold_tools,
            },
            concurrency,
        };
        r.run(out, tasks, |_| {}).unwrap()
    }
}

fn one(i: usize) -> Vec<(String, Task)> {
    vec![(format!("bp-{i}"), tasks()[i].clone())]
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The customer asking for the gold transfer, saying yes, then stopping, with user lines drawn
/// again (up to 3), agent replies up to `agent_resample`, and the gold tools required to keep.
fn guarded(agent: &[&str], agent_resample: usize) -> Setup {
    let mut s = Setup::new(agent, &[ASK, "Yes, please.", "###STOP###"]);
    s.agent_resample = agent_resample;
    s.resample = 3;
    s.require_gold_tools = true;
    s
}

/// The agent putting the gold transfer to the customer before making it.
const CONFIRM: &str = "I will move 250.50 from acc_1002 to acc_1001, memo rent share. Shall I?";
const ASK: &str = "Hi, I'd like to send 250.50 from acc_1002 to acc_1001, memo rent share.";

#[test]
fn a_solved_task_is_verified_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    // The first agent reply makes two calls: only the first runs, as in tau-bench.
    let two = format!("{}\n{}", get_1002(), transfer(1.0));
    let s = Setup::new(
        &[&two, &transfer(250.5), "The transfer of 250.50 is done."],
        &[ASK, "Thanks! ###STOP###"],
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(
        (summary.rollouts, summary.verified, summary.kept),
        (1, 1, 1)
    );
    assert_eq!((s.agent.remaining(), s.user.remaining()), (0, 0));

    // The user model sees tau-bench's arrangement: its prompt, then the greeting as a user turn.
    let first = &s.user.requests()[0].messages;
    assert_eq!(first[0].role, "system");
    assert!(first[0].content.contains(&tasks()[0].instruction));
    assert!(first[0].content.contains("###STOP###"));
    assert_eq!(
        (first[1].role.as_str(), first[1].content.as_str()),
        ("user", GREETING)
    );
    // ... and the agent's message as a user turn later.
    let second = &s.user.requests()[1].messages;
    assert_eq!(
        second.last().unwrap().content,
        "The transfer of 250.50 is done."
    );
    // The agent sees the policy and the domain's tools.
    let a = &s.agent.requests()[0];
    assert_eq!(a.messages[0].content, domain().policy);
    assert_eq!(a.tools.len(), domain().tools().len());

    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(
        (t["reward"].as_f64(), t["kept"].as_bool()),
        (Some(1.0), Some(true))
    );
    assert_eq!(t["db_hash"], t["gold_db_hash"]);
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    assert_eq!(d["blueprint_id"], "bp-0");
    dataset::validate(d).unwrap();
    let roles: Vec<&str> = d["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ],
        "one call per step; the closing ###STOP### line is not part of the record"
    );
    assert_eq!(
        d["messages"][2]["tool_calls"].as_array().unwrap().len(),
        1,
        "the unrun second call is not recorded"
    );
}

#[test]
fn a_success_without_the_blueprints_lookups_is_verified_but_not_kept() {
    // Task 0's gold actions are get_account then transfer_funds; this agent transfers at once.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &[&transfer(250.5), "The transfer of 250.50 is done."],
        &[ASK, "###STOP###"],
    );
    s.require_gold_tools = true;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(
        (summary.verified, summary.kept, summary.filtered),
        (1, 0, 1)
    );
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(t["reward"].as_f64(), Some(1.0), "the reward is tau-bench's");
    assert_eq!(t["not_kept_code"], "keep.gold_arguments");
    assert!(
        t["not_kept"]
            .as_str()
            .unwrap()
            .starts_with("the agent never called get_account with the gold arguments"),
        "{t}"
    );
    assert_eq!(t["fault"]["fault"], "agent", "{t}");
    assert_eq!(summary.not_kept["keep.gold_arguments"], 1);
    assert_eq!(summary.faults["agent"], 1);
    assert!(lines(&dir.path().join("dataset.jsonl")).is_empty());

    // An agent that looks the account up first and has the customer's yes is kept; without
    // the yes it is not.
    let run = |agent: &[&str], user: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Setup::new(agent, user);
        s.require_gold_tools = true;
        let summary = s.run(dir.path(), &one(0));
        let t = lines(&dir.path().join("trajectories.jsonl")).remove(0);
        (summary, t)
    };
    let (summary, _) = run(
        &[
            &get_1002(),
            CONFIRM,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[ASK, "Yes, please.", "###STOP###"],
    );
    assert_eq!((summary.kept, summary.filtered), (1, 0));
    let (summary, t) = run(
        &[
            &get_1002(),
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[ASK, "###STOP###"],
    );
    assert_eq!((summary.verified, summary.kept), (1, 0));
    assert_eq!(t["not_kept_code"], "keep.unconfirmed_write", "{t}");
}

#[test]
fn a_wrong_final_state_is_a_db_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::new(&[&transfer(25.05), "Done."], &[ASK, "###STOP###"]);
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (0, 0));
    assert_eq!(summary.failures[code::DB_MISMATCH], 1);
    assert!(lines(&dir.path().join("dataset.jsonl")).is_empty());
}

#[test]
fn an_unsaid_output_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::new(
        &[
            &call("find_accounts_by_owner", json!({"owner": "Ada Turing"})),
            &call("get_account", json!({"account_id": "acc_1003"})),
            &call(
                "freeze_account",
                json!({"account_id": "acc_1003", "reason": "lost card"}),
            ),
            "Your account is frozen.",
        ],
        &["I lost my card, I'm Ada Turing.", "###STOP###"],
    );
    let summary = s.run(dir.path(), &one(1));
    assert_eq!(summary.failures[code::OUTPUT_MISSING], 1);
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(t["db_hash"], t["gold_db_hash"], "the state was right");
    assert!(t["detail"].as_str().unwrap().contains("1757.18"));
}

#[test]
fn an_endless_agent_hits_max_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &[&get_1002(), &get_1002(), &get_1002(), &get_1002()],
        &[ASK],
    );
    s.max_steps = 3;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.failures[code::MAX_STEPS], 1);
    assert_eq!(s.agent.remaining(), 1, "exactly max_steps agent replies");
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(
        (t["steps"].as_u64(), t["reward"].as_f64()),
        (Some(3), Some(0.0))
    );
}

#[test]
fn a_loop_of_identical_exchanges_is_cut_as_stalled() {
    let dir = tempfile::tempdir().unwrap();
    // The agent says the same thing and the user answers the same line: after three identical
    // exchanges the episode ends, long before max_steps.
    let mut s = Setup::new(&["32"; 10], &[ASK, "32", "32", "32", "32", "32", "32"]);
    s.stall_after = 3;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.failures[code::STALLED], 1);
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(t["steps"].as_u64(), Some(3), "{t}");
    assert_eq!(s.agent.remaining(), 7);

    // Two replies in turn, answered in turn, are a loop too: cut after three rounds.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &["x", "y", "x", "y", "x", "y", "x", "y", "x", "y"],
        &[ASK, "u", "v", "u", "v", "u", "v", "u", "v"],
    );
    s.stall_after = 3;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.failures[code::STALLED], 1);
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(t["steps"].as_u64(), Some(6), "{t}");
    assert!(
        t["detail"]
            .as_str()
            .unwrap()
            .contains("one cycle of 2 repeated 3 times"),
        "{t}"
    );

    // A varied user is not a loop: the same agent reply answered differently runs on.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(&["32"; 4], &[ASK, "a", "b", "c", "###STOP###"]);
    s.stall_after = 3;
    s.run(dir.path(), &one(0));
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    assert_eq!(t["steps"].as_u64(), Some(4), "{t}");
    assert_eq!(
        t["stop_line"], "###STOP###",
        "ended by the user, not cut: {t}"
    );
    assert_eq!(t["code"], code::DB_MISMATCH, "the transfer was never made");
}

#[test]
fn a_user_who_stops_at_once_scores_zero() {
    let dir = tempfile::tempdir().unwrap();
    // Task 0 has no outputs; an agent that did nothing must still not earn a kept empty talk.
    let s = Setup::new(&["unused"], &["###STOP###", "###STOP###", "###STOP###"]);
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.failures[code::USER_STOPPED_EARLY], 1);
    assert_eq!(s.agent.remaining(), 1, "the agent was never asked");
    assert_eq!(
        s.user.remaining(),
        0,
        "the opening line was sampled three times"
    );
    // Each new sample starts over from the greeting.
    assert!(s.user.requests().iter().all(|r| r.messages.len() == 2));
}

#[test]
fn an_opening_stop_is_sampled_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::new(
        &[&transfer(250.5), "Done."],
        &["###STOP###", ASK, "###STOP###"],
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.verified, 1);
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    assert_eq!(d["messages"][1]["content"], ASK);
}

#[test]
fn the_transcript_view_shows_the_user_the_whole_conversation_as_a_customer() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &["Which account?", &transfer(250.5), "Done."],
        &["Customer: I'd like to send money.", ASK, "###STOP###"],
    );
    s.view = UserView::Transcript;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.verified, 1, "the episode itself is unchanged");
    let reqs = s.user.requests();
    assert_eq!(reqs.len(), 3);
    for (i, r) in reqs.iter().enumerate() {
        // Always two messages: the customer prompt with the instruction, then the transcript;
        // the first asks who the customer is and what they want.
        assert_eq!(r.messages.len(), 2);
        assert!(r.messages[0].content.contains("You are not the agent"));
        assert!(r.messages[0].content.contains(&tasks()[0].instruction));
        let ask = if i == 0 {
            "Write the customer's first message, in the first person (\"I\", \"my\"): say who you are and what you want, in your own words."
        } else {
            "Write the customer's next message, in the first person."
        };
        assert!(
            r.messages[1].content.ends_with(ask),
            "{}",
            r.messages[1].content
        );
    }
    assert_eq!(
        reqs[2].messages[1].content,
        format!(
            "Conversation so far:\nAgent: {GREETING}\nCustomer: I'd like to send money.\n\
             Agent: Which account?\nCustomer: {ASK}\nAgent: Done.\n\n\
             Write the customer's next message, in the first person."
        )
    );
    // The role prefix the model wrote is not sent on.
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    assert_eq!(d["messages"][1]["content"], "I'd like to send money.");
}

#[test]
fn a_malformed_tool_call_ends_the_episode() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::new(
        &[
            "<tool_call>\n{\"name\": \"get_account\", \"arguments\": {\"account_id\": \n</tool_call>",
            "unused",
        ],
        &[ASK],
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.failures[code::AGENT_MALFORMED], 1);
    assert_eq!(s.agent.remaining(), 1);

    // Where agent replies are drawn again, a malformed one is, within the bound.
    let dir = tempfile::tempdir().unwrap();
    let broken =
        "<tool_call>\n{\"name\": \"get_account\", \"arguments\": {\"account_id\": \n</tool_call>";
    let mut s = guarded(
        &[
            broken,
            &get_1002(),
            CONFIRM,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        1,
    );
    s.require_gold_tools = false;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.agent_resampled["malformed"], 1, "{summary:?}");
    assert_eq!(summary.verified, 1, "{summary:?}");
}

#[test]
fn best_of_n_sends_the_first_top_scored_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(&["unused"], &["c0", "c1", "c2", "c3", "###STOP###"]);
    s.agent = script(&["Sure, which account?", "unused"]);
    s.user = script(&[
        "I want to pay rent.",
        "Send 250.50 from acc_1002 to acc_1001.",
        "Send 250.50 to acc_1001, memo rent share, from acc_1002.",
        "I don't remember.",
        "###STOP###",
        "###STOP###",
        "###STOP###",
        "###STOP###",
    ]);
    s.judge = script(&[
        "<score>3</score>",
        "<score>9</score>",
        "<score>9</score>",
        "no score",
        "<score>10</score>",
        "<score>2</score>",
        "<score>2</score>",
        "<score>2</score>",
    ]);
    s.strategy = UserStrategy::BestOfN;
    s.run(dir.path(), &one(0));
    let first = &s.agent.requests()[0].messages;
    assert_eq!(
        first.last().unwrap().content,
        "Send 250.50 from acc_1002 to acc_1001.",
        "the first of the two 9s"
    );
    assert_eq!(s.judge.remaining(), 0, "every candidate was judged");
    let judged = &s.judge.requests()[1].messages[0].content;
    assert!(judged.contains("<description>") && judged.contains(&tasks()[0].instruction));
    assert!(judged.contains("Send 250.50 from acc_1002 to acc_1001."));
}

#[test]
fn a_repeated_success_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = transfer(250.5);
    let mut s = Setup::new(
        &[&t, "Done.", &t, "Done."],
        &[ASK, "###STOP###", ASK, "###STOP###"],
    );
    s.trials = 2;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (2, 1));
    let t = lines(&dir.path().join("trajectories.jsonl"));
    assert_eq!(t[1]["duplicate_of"], "bp-0#0");
}

/// Two tasks, two trials each; the four episodes' replies in order.
fn four_episodes() -> Setup {
    let t = transfer(250.5);
    let mut s = Setup::new(
        &[
            &t,
            "Done.",
            &transfer(3.0),
            "Done.",
            &t,
            "Sent 250.50.",
            &t,
            "Done!",
        ],
        &[
            ASK,
            "###STOP###",
            ASK,
            "###STOP###",
            ASK,
            "ok ###STOP###",
            ASK,
            "###STOP###",
        ],
    );
    s.trials = 2;
    s
}

fn two_tasks() -> Vec<(String, Task)> {
    vec![
        ("a".into(), tasks()[0].clone()),
        ("b".into(), tasks()[0].clone()),
    ]
}

#[test]
fn resume_after_a_crash_gives_the_uninterrupted_records() {
    let whole = tempfile::tempdir().unwrap();
    four_episodes().run(whole.path(), &two_tasks());
    let dataset = std::fs::read_to_string(whole.path().join("dataset.jsonl")).unwrap();
    let trajectories = std::fs::read_to_string(whole.path().join("trajectories.jsonl")).unwrap();
    assert_eq!(dataset.lines().count(), 3);

    // A crash after the last attempt's dataset line but before its commit line, with the
    // commit line half written.
    let cut = tempfile::tempdir().unwrap();
    let t: Vec<&str> = trajectories.lines().collect();
    std::fs::write(
        cut.path().join("trajectories.jsonl"),
        format!("{}\n{}\n{}\n{}", t[0], t[1], t[2], &t[3][..40]),
    )
    .unwrap();
    std::fs::write(cut.path().join("dataset.jsonl"), &dataset).unwrap();
    let mut s = four_episodes();
    s.agent = script(&[&transfer(250.5), "Done!"]);
    s.user = script(&[ASK, "###STOP###"]);
    let summary = s.run(cut.path(), &two_tasks());
    assert_eq!((summary.rollouts, summary.kept), (4, 3));
    assert_eq!(
        std::fs::read_to_string(cut.path().join("dataset.jsonl")).unwrap(),
        dataset
    );
    let strip = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v["seconds"] = json!(null);
                v
            })
            .collect()
    };
    assert_eq!(
        strip(&std::fs::read_to_string(cut.path().join("trajectories.jsonl")).unwrap()),
        strip(&trajectories)
    );
    // Finished runs are not redone: a third run asks no model anything.
    let mut idle = Setup::new(&[], &[]);
    idle.trials = 2;
    idle.run(cut.path(), &two_tasks());
}

#[test]
fn evaluation_scores_pass_hat_k_from_the_trials() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = four_episodes();
    s.keep = false;
    s.run(dir.path(), &two_tasks());
    assert!(
        lines(&dir.path().join("dataset.jsonl")).is_empty(),
        "evaluation keeps no data"
    );
    let logs = Logs::open(dir.path()).unwrap();
    let r = apigen_mt::eval::results(&two_tasks(), 2, &logs.done);
    // Task a: trials 1, 0. Task b: 1, 1. pass^1 = (1/2 + 1)/2; pass^2 = (0 + 1)/2.
    assert_eq!(r.per_task["a"], [1.0, 0.0]);
    assert_eq!(r.per_task["b"], [1.0, 1.0]);
    assert_eq!(r.pass_k["1"], 0.75);
    assert_eq!(r.pass_k["2"], 0.5);
    assert_eq!(r.average_reward, 0.75);
    assert_eq!(r.failures[code::DB_MISMATCH], 1);
    assert!(r.complete);
}

#[test]
fn exports_of_a_rollout_hold_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::new(
        &[
            &get_1002(),
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[ASK, "###STOP###"],
    );
    s.run(dir.path(), &one(0));
    let record = &lines(&dir.path().join("dataset.jsonl"))[0];
    let policy = domain().policy;

    let row = dataset::export(record, Format::ApigenMt).unwrap();
    assert_eq!(row["system"], json!(policy));
    let tools: Vec<Value> = serde_json::from_str(row["tools"].as_str().unwrap()).unwrap();
    assert_eq!(tools.len(), domain().tools().len());
    assert!(
        tools
            .iter()
            .all(|t| t["name"].is_string() && t["parameters"].is_object())
    );
    let conv = row["conversations"].as_array().unwrap();
    let froms: Vec<&str> = conv.iter().map(|c| c["from"].as_str().unwrap()).collect();
    assert_eq!(
        froms,
        [
            "human",
            "function_call",
            "observation",
            "function_call",
            "observation",
            "gpt"
        ]
    );
    for (i, c) in conv.iter().enumerate() {
        if c["from"] == "function_call" {
            let v: Value = serde_json::from_str(c["value"].as_str().unwrap()).unwrap();
            assert!(v["name"].is_string() && v["arguments"].is_object());
            assert_eq!(conv[i + 1]["from"], "observation");
        }
    }

    let o = dataset::export(record, Format::Openai).unwrap();
    let m = o["messages"].as_array().unwrap();
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "get_account");
    let args: Value = serde_json::from_str(
        m[2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"account_id": "acc_1002"}));
    assert_eq!(m[3]["role"], "tool");
    assert_eq!(m[3]["tool_call_id"], m[2]["tool_calls"][0]["id"]);
    assert_eq!(o["tools"][0]["type"], "function");

    let sg = dataset::export(record, Format::Sharegpt).unwrap();
    assert_eq!(sg["id"], "bp-0#0");
    assert_eq!(sg["conversations"], row["conversations"]);
    assert_eq!(sg["system"], json!(policy));
}

#[test]
fn a_user_line_in_the_agents_voice_or_with_an_unknown_id_is_drawn_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &[
            &get_1002(),
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[
            "Hello! How can I help you today?",
            ASK,
            "Also check acc_1009 please.",
            "Thanks! ###STOP###",
        ],
    );
    s.resample = 3;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (1, 1), "{summary:?}");
    assert_eq!(summary.user_resampled["agent_voice"], 1);
    assert_eq!(summary.user_resampled["unknown_id"], 1);
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    assert_eq!(d["messages"][1]["content"], ASK);
    assert!(
        d["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !m["content"]
                .as_str()
                .unwrap_or_default()
                .contains("acc_1009")),
        "the drawn-again lines never reach the agent: {d}"
    );

    // The bound holds: a user who never leaves the agent's voice is sent as sampled, and
    // the conversation is not kept.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &[&get_1002(), &transfer(250.5), "Done."],
        &[
            "How can I help you?",
            "How can I help you?",
            ASK,
            "###STOP###",
        ],
    );
    s.resample = 1;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.user_resampled["agent_voice"], 1);
    assert_eq!(summary.kept, 0);
    assert_eq!(summary.faults["user"], 1, "{summary:?}");
}

#[test]
fn a_premature_write_becomes_the_read_or_the_question_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    // The agent calls the transfer at once; it is not made. Under a note the record never
    // shows, the next reply is the gold read; the transfer called again becomes the question;
    // the customer says yes, and the transfer called a third time is made.
    let s = guarded(
        &[
            &transfer(250.5),
            &get_1002(),
            &transfer(250.5),
            CONFIRM,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        3,
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (1, 1), "{summary:?}");
    // The customer's answer to the question cannot stop (the transfer is pending); the line
    // after the transfer can.
    let user = s.user.requests();
    let no_stop = Some(apigen_mt::llm::Constraint::Regex(
        apigen_mt::rollout::NO_STOP.into(),
    ));
    assert_eq!(user[1].constraint, no_stop);
    assert_eq!(user[2].constraint, None);
    assert_eq!(summary.agent_resampled["reads_first"], 1, "{summary:?}");
    assert_eq!(summary.agent_resampled["unconfirmed_write"], 1);
    let requests = s.agent.requests();
    let read = &requests[1];
    assert!(
        read.messages
            .last()
            .unwrap()
            .content
            .contains("Call get_account now"),
        "{:?}",
        read.messages.last()
    );
    match &read.constraint {
        Some(apigen_mt::llm::Constraint::CallTo(tools)) => {
            assert_eq!(tools.len(), 1);
            assert_eq!(tools[0]["function"]["name"], "get_account");
        }
        other => panic!("the read is a call: {other:?}"),
    }
    let asked = &requests[3];
    let note = &asked.messages.last().unwrap().content;
    assert!(note.contains("before you call transfer_funds"), "{note}");
    assert_eq!(
        asked.constraint,
        Some(apigen_mt::llm::Constraint::TextOrCallTo(vec![])),
        "the question is words"
    );
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    let text = d["messages"].to_string();
    assert!(!text.contains("Note to the agent"), "{text}");
    assert!(text.contains("Shall I?"), "{text}");
}

#[test]
fn an_agent_call_that_would_spoil_the_conversation_is_drawn_again() {
    let dir = tempfile::tempdir().unwrap();
    let invented = call("get_account", json!({"account_id": "acc_1009"}));
    let handover = call(
        "transfer_to_human_agents",
        json!({"summary": "wants money moved"}),
    );
    let mut s = Setup::new(
        &[
            &invented,
            &get_1002(),
            CONFIRM,
            &transfer(25.0),
            &handover,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[ASK, "Yes, please.", "Thanks! ###STOP###"],
    );
    s.agent_resample = 3;
    s.require_gold_tools = true;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (1, 1), "{summary:?}");
    assert_eq!(summary.agent_resampled["invented_id"], 1);
    assert_eq!(summary.agent_resampled["write_off_gold"], 1);
    assert_eq!(summary.agent_resampled["needless_transfer"], 1);
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    let text = d["messages"].to_string();
    for gone in ["acc_1009", "transfer_to_human_agents", "25.0"] {
        assert!(
            !text.contains(gone),
            "a drawn-again reply reached the record: {gone} in {text}"
        );
    }

    // Bounded: past the bound a hand-over is used as sampled, and ends the conversation.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &[&get_1002(), &handover, &handover, "unused"],
        &[ASK, "###STOP###"],
    );
    s.agent_resample = 1;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.agent_resampled["needless_transfer"], 1);
    assert_eq!(summary.failures[code::DB_MISMATCH], 1, "{summary:?}");

    // Past the bound, the gold write's tool with other values is not made: the agent puts it
    // to the customer under the confirmation note, the customer sets it right, and the gold
    // write follows their yes.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(
        &[
            &get_1002(),
            &transfer(25.0),
            &transfer(25.0),
            "I will move 25.00 from acc_1002 to acc_1001, memo rent share. Shall I?",
            CONFIRM,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[ASK, "No, I said 250.50.", "Yes, please.", "###STOP###"],
    );
    s.agent_resample = 1;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.agent_resampled["write_off_gold"], 1, "{summary:?}");
    assert_eq!(summary.agent_resampled["off_gold_put"], 1, "{summary:?}");
    assert_eq!(summary.verified, 1, "{summary:?}");
}

#[test]
fn past_the_bound_a_premature_gold_write_still_waits_and_a_repeated_answer_is_drawn_again() {
    let dir = tempfile::tempdir().unwrap();
    // One draw again per step: the off-gold transfer spends it; the gold transfer made at
    // once, past the bound, still becomes the read under a note. After the customer's yes the
    // agent asks again word for word (drawn again), then transfers.
    let s = guarded(
        &[
            &transfer(25.0),
            &transfer(250.5),
            &get_1002(),
            CONFIRM,
            CONFIRM,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        1,
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (1, 1), "{summary:?}");
    assert_eq!(summary.agent_resampled["write_off_gold"], 1, "{summary:?}");
    assert_eq!(summary.agent_resampled["reads_first"], 1);
    assert_eq!(summary.agent_resampled["repeated_reply"], 1);
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    let text = d["messages"].to_string();
    assert_eq!(text.matches("Shall I?").count(), 1, "{text}");
}

#[test]
fn an_answer_in_words_after_the_customers_yes_becomes_the_write() {
    let dir = tempfile::tempdir().unwrap();
    // The customer says yes; the agent only says it will proceed. Under a note the record
    // never shows, the reply drawn again is the transfer, offered alone.
    let s = guarded(
        &[
            &get_1002(),
            CONFIRM,
            "I will proceed with the transfer now.",
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        3,
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (1, 1), "{summary:?}");
    assert_eq!(summary.agent_resampled["words_after_yes"], 1, "{summary:?}");
    let requests = s.agent.requests();
    let noted = &requests[3];
    assert!(
        noted
            .messages
            .last()
            .unwrap()
            .content
            .contains("Call transfer_funds now"),
        "{:?}",
        noted.messages.last()
    );
    match &noted.constraint {
        Some(apigen_mt::llm::Constraint::CallTo(tools)) => {
            assert_eq!(tools.len(), 1);
            assert_eq!(tools[0]["function"]["name"], "transfer_funds");
        }
        other => panic!("the write is a call: {other:?}"),
    }
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    let text = d["messages"].to_string();
    assert!(!text.contains("proceed with the transfer now"), "{text}");
    assert!(!text.contains("Note to the agent"), "{text}");
}

#[test]
fn a_noted_write_with_other_values_is_put_to_the_customer_instead() {
    let dir = tempfile::tempdir().unwrap();
    // Under the note after the yes, the agent twice calls the transfer with another amount:
    // not made; the reply drawn under the confirmation note puts it to the customer, who sets
    // it right, and the gold transfer follows their next yes.
    let mut s = Setup::new(
        &[
            &get_1002(),
            CONFIRM,
            "I will proceed with the transfer now.",
            &transfer(25.0),
            &transfer(25.0),
            "I will move 25.00 from acc_1002 to acc_1001, memo rent share. Shall I?",
            CONFIRM,
            &transfer(250.5),
            "The transfer of 250.50 is done.",
        ],
        &[
            ASK,
            "Yes, please.",
            "No, I said 250.50.",
            "Yes, please.",
            "###STOP###",
        ],
    );
    s.agent_resample = 3;
    s.require_gold_tools = true;
    let summary = s.run(dir.path(), &one(0));
    assert_eq!(summary.verified, 1, "{summary:?}");
    assert_eq!(summary.agent_resampled["words_after_yes"], 1, "{summary:?}");
    assert_eq!(summary.agent_resampled["off_gold_put"], 1, "{summary:?}");
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    let calls = t["messages"].to_string();
    assert!(!calls.contains("\\\"amount\\\": 25.0"), "{calls}");
}

#[test]
fn a_confirmation_asked_after_the_write_becomes_the_closing() {
    let dir = tempfile::tempdir().unwrap();
    // The transfer is made; the agent asks to confirm it again. Under a note, the reply drawn
    // again says what was done, and the conversation is kept.
    let s = guarded(
        &[
            &get_1002(),
            CONFIRM,
            &transfer(250.5),
            "Please confirm the transfer of 250.50 from acc_1002 to acc_1001.",
            "The transfer of 250.50 is done.",
        ],
        3,
    );
    let summary = s.run(dir.path(), &one(0));
    assert_eq!((summary.verified, summary.kept), (1, 1), "{summary:?}");
    assert_eq!(
        summary.agent_resampled["confirm_after_done"], 1,
        "{summary:?}"
    );
    let requests = s.agent.requests();
    let noted = requests[4].messages.last().unwrap();
    assert!(
        noted.content.contains("tell the customer what was done"),
        "{noted:?}"
    );
    let d = &lines(&dir.path().join("dataset.jsonl"))[0];
    let text = d["messages"].to_string();
    assert!(!text.contains("Please confirm the transfer"), "{text}");
    assert!(text.contains("The transfer of 250.50 is done."), "{text}");
}

/// One attempt of `task` with these scripts; its fault label and evidence.
fn fault_of(agent: &[&str], user: &[&str], task: Task) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Setup::new(agent, user);
    s.max_steps = 4;
    s.run(dir.path(), &[("bp-0".into(), task)]);
    let t = &lines(&dir.path().join("trajectories.jsonl"))[0];
    (
        t["fault"]["fault"].as_str().unwrap_or_default().to_owned(),
        t["fault"]["evidence"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[test]
fn each_fault_label_comes_from_its_signal() {
    let task = tasks()[0].clone();
    // agent: the wrong amount, though the user said the right one.
    let (f, e) = fault_of(
        &[&get_1002(), &transfer(25.05), "Done."],
        &[ASK, "###STOP###"],
        task.clone(),
    );
    assert_eq!(
        (f.as_str(), e.as_str()),
        ("agent", "the agent's changes differ from the gold actions'")
    );
    // user: ends the conversation before the agent could act.
    let (f, e) = fault_of(&["unused"], &["###STOP###"; 3], task.clone());
    assert_eq!(f, "user", "{e}");
    assert!(e.contains("ended the conversation"), "{e}");
    // task: the gold transfer's memo is nowhere in the instruction.
    let mut vague = task.clone();
    vague.instruction =
        "You are Barbara Allen. You want to move 250.50 from acc_1002 to acc_1001.".into();
    let no_memo = call(
        "transfer_funds",
        json!({"from_account_id": "acc_1002", "to_account_id": "acc_1001", "amount": 250.5}),
    );
    let (f, e) = fault_of(
        &[&get_1002(), &no_memo, "Done."],
        &["Move 250.50 from acc_1002 to acc_1001.", "###STOP###"],
        vague,
    );
    assert_eq!(f, "task", "{e}");
    assert!(e.contains("memo"), "{e}");
    // unclear: the right calls, then an agent that never finishes, and no other signal.
    let (f, e) = fault_of(
        &[&get_1002(), CONFIRM, &transfer(250.5), "Anything else?"],
        &[ASK, "Yes.", "Hm.", "Let me think."],
        task,
    );
    assert_eq!(
        (f.as_str(), e.as_str()),
        ("unclear", "failed with rollout.max_steps")
    );
}

/// Replies chosen by the conversation, not by call order: the script of the first marker found
/// in the request's messages, at the index of the reply (the assistant messages so far).
fn keyed(scripts: Vec<(String, Vec<String>)>) -> Arc<dyn Backend> {
    Arc::new(util::Pure(move |request: &apigen_mt::llm::ChatRequest| {
        let text = util::request_text(request);
        scripts
            .iter()
            .find(|(marker, _)| text.contains(marker.as_str()))
            .and_then(|(_, replies)| replies.get(util::assistant_turns(request)))
            .cloned()
            .unwrap_or_else(|| "###STOP###".into())
    }))
}

/// Eight tasks, two trials each, at one attempt in flight and at eight: the same files, line for
/// line (timings aside); every attempt is in the log once.
#[test]
fn concurrent_attempts_give_the_files_of_one_at_a_time() {
    let base = tasks()[0].clone();
    let tasks: Vec<(String, Task)> = (0..8)
        .map(|k| {
            let mut t = base.clone();
            t.instruction = format!("{} Your customer number is K-{k}.", t.instruction);
            (format!("bp-{k}"), t)
        })
        .collect();
    // Task k's user opens with its marker, so the agent's requests carry it too; odd tasks
    // send a wrong amount (not verified), even ones the right one.
    let user = keyed(
        (0..8)
            .map(|k| {
                (
                    format!("K-{k}."),
                    vec![format!("I am K-{k}: {ASK}"), "###STOP###".into()],
                )
            })
            .collect(),
    );
    let agent = keyed(
        (0..8)
            .map(|k| {
                let amount = if k % 2 == 0 { 250.5 } else { 3.0 };
                (
                    format!("I am K-{k}:"),
                    vec![transfer(amount), format!("Done for K-{k}.")],
                )
            })
            .collect(),
    );
    let mut s = Setup::new(&[], &[]);
    s.trials = 2;
    let read = |dir: &Path| -> (String, Vec<Value>) {
        let dataset = std::fs::read_to_string(dir.join("dataset.jsonl")).unwrap();
        let t = lines(&dir.join("trajectories.jsonl"))
            .into_iter()
            .map(|mut v| {
                v["seconds"] = json!(null);
                v
            })
            .collect();
        (dataset, t)
    };
    let one = tempfile::tempdir().unwrap();
    let a = s.run_with(one.path(), &tasks, agent.clone(), user.clone(), 1);
    let eight = tempfile::tempdir().unwrap();
    let b = s.run_with(eight.path(), &tasks, agent, user, 8);
    assert_eq!((a.rollouts, a.verified), (16, 8));
    assert_eq!(
        (b.rollouts, b.verified, b.kept),
        (a.rollouts, a.verified, a.kept)
    );
    let (d1, t1) = read(one.path());
    let (d8, t8) = read(eight.path());
    assert!(!d1.is_empty());
    assert_eq!(d1, d8);
    assert_eq!(t1, t8);
}

/// The report of a scripted run, opened in headless Chromium: the funnel and the conversations
/// it shows are the run's, and a conversation opens with its tool calls and its database
/// changes against the gold ones.
#[test]
fn the_report_shows_the_runs_funnel_and_opens_a_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let train = util::root().join("domains/mock/tasks/train.json");
    let task = apigen_mt::cli::rollouts::read_identified_tasks(&train).unwrap()[..1].to_vec();
    // Trial 0 moves the right amount (kept); trial 1 moves 3.00 (the database differs).
    let mut s = Setup::new(
        &[&transfer(250.5), "Done.", &transfer(3.0), "Done."],
        &[ASK, "###STOP###", ASK, "###STOP###"],
    );
    s.trials = 2;
    let summary = s.run(dir.path(), &task);
    assert_eq!((summary.rollouts, summary.kept), (2, 1));
    // What `rollouts` pins beside its records: the task file it rolled out, so the report can
    // replay the gold.
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "blueprints = {:?}\n\n[domain]\nname = \"mock\"\n",
            train.display().to_string()
        ),
    )
    .unwrap();
    let page = dir.path().join("report.html");
    let root = util::root();
    let (code, _, err) = util::run(
        &[
            "report",
            dir.path().to_str().unwrap(),
            "--domain",
            root.join("domains/mock").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 conversations (2 replayed"), "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    for fetch in ["<script src", "<link", "<img", "@import", "url("] {
        assert!(!html.contains(fetch), "the page loads nothing ({fetch})");
    }

    let Some(browser) = util::chromium() else {
        return;
    };
    let dom = util::dump_dom(&browser, &page, "conversations=0%231");
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    let r = &s["rollouts"];
    for stage in ["rollouts", "verified", "kept"] {
        assert!(
            dom.contains(&format!(
                "data-stage=\"{stage}\" data-count=\"{}\"",
                r[stage]
            )),
            "funnel stage {stage} shows {}",
            r[stage]
        );
    }
    let attempts = lines(&dir.path().join("trajectories.jsonl")).len();
    assert!(dom.contains(&format!(
        "data-kind=\"conversations\" data-total=\"{attempts}\""
    )));
    assert_eq!(
        dom.matches("class=\"row\" data-id=").count()
            + dom.matches("class=\"row sel\" data-id=").count(),
        attempts
    );
    // The failed trial is open: its call, and the balance it moved that the gold does not.
    assert!(
        dom.contains("data-open=\"conversations:0#1\""),
        "the conversation opened"
    );
    assert!(dom.contains("class=\"tool-call\" data-tool=\"transfer_funds\""));
    assert!(dom.contains("rollout.db_mismatch"));
    assert!(dom.contains("data-side=\"agent only\"") && dom.contains("data-side=\"gold only\""));

    let png = dir.path().join("report.png");
    util::screenshot(&browser, &page, "conversations=0%231", &png, (1280, 3000));
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "a screenshot with something drawn"
    );
    if let Some(keep) = std::env::var_os("APIGEN_MT_KEEP_SCREENSHOTS") {
        std::fs::copy(&png, Path::new(&keep).join("report-rollouts.png")).unwrap();
    }
}

/// `generate` with a domain that does not exist stops before any model loads.
#[test]
fn generate_reports_a_missing_domain_before_loading_a_model() {
    let out = tempfile::tempdir().unwrap();
    let (code, _, err) = util::run(
        &[
            "generate",
            "--domain",
            "no/such/domain",
            "--count",
            "1",
            "--out",
            out.path().join("run").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot load domain no/such/domain"), "{err}");
    assert!(!err.contains("loaded "), "no model was loaded: {err}");
}

/// A re-run of `generate` with other settings is refused, naming the setting, before any model
/// loads (the run directory is pinned first).
#[test]
fn generate_refuses_other_settings_before_loading_a_model() {
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let run = run.to_str().unwrap();
    let args = |seed: &str| {
        util::run(
            &[
                "generate",
                "--domain",
                "domains/mock",
                "--count",
                "1",
                "--out",
                run,
                "--seed",
                seed,
                "--proposer",
                "no-such-model",
                "--agent",
                "no-such-model",
                "--user",
                "no-such-model",
            ],
            "",
        )
    };
    let (code, _, err) = args("1");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such-model"), "{err}");
    let (code, _, err) = args("5");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("different settings") && err.contains("seed"),
        "{err}"
    );
    assert!(
        !err.contains("no-such-model") && !err.contains("loaded "),
        "refused before any model: {err}"
    );
}
