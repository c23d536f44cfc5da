//! Phase 2: a simulated user who knows only a task's instruction talks to a tool-calling agent
//! inside the domain, with tau-bench's episode mechanics and reward.
//!
//! - The user model sees tau-bench's user prompt (the instruction and its rules) and the
//!   conversation from its side: the agent's greeting "Hi! How can I help you today?" and every
//!   agent message arrive as `user` turns, its own lines are `assistant` turns. `###STOP###`
//!   anywhere in its line ends the episode (whitespace inside the marker is ignored).
//! - The agent sees the domain policy as system prompt and the domain's tools, in its own chat
//!   template and tool-call format. A reply with tool calls runs the first call (tau-bench's
//!   `tool_calls[:1]`; [`AgentRole::parallel_calls`] runs them all) and its observation comes
//!   back as a `tool` message; a reply without calls is said to the user. At most
//!   [`AgentRole::max_steps`] replies (tau-bench: 30).
//! - A terminate tool (`transfer_to_human_agents`) or the user's stop ends the episode; then
//!   the reward is tau-bench's ([`crate::domain::reward`]). An episode cut off by the step limit
//!   scores 0, as in tau-bench.
//!
//! Two choices beyond tau-bench, for training data: a reply that tries to call a tool but cannot
//! be read ends the episode (`rollout.agent_malformed`) rather than being sent to the user as
//! prose; and a user's opening line that already stops is sampled again (a user who has said
//! nothing cannot have reached their goal), and if it stops every time the episode scores 0
//! (`rollout.user_stopped_early`), so an empty conversation is never kept.

pub mod guide;
pub mod keep;
pub mod run;

use crate::domain::Domain;
use crate::domain::reward::{self, Reward};
use crate::domain::task::{Action, Task};
use crate::llm::{Conversation, Message, ModelOutput, ToolCall};
use crate::role::{Meter, Role};
use crate::run::Rejection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The marker a simulated user writes when its goal is met (tau-bench's).
pub const STOP: &str = "###STOP###";
/// Whether a user line ends the episode: it holds `###STOP###`, read the way small user models
/// misspell it: whitespace and underscores inside the marker ignored, any case, and one `#`
/// more or less on one side (`### STOP###`, `###Stop###`, `###_STOP###`, `##STOP###`).
pub fn is_stop(line: &str) -> bool {
    let squeezed: String = line
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    squeezed.match_indices("stop").any(|(i, _)| {
        let before = squeezed[..i]
            .chars()
            .rev()
            .take_while(|c| *c == '#')
            .count();
        let after = squeezed[i + 4..].chars().take_while(|c| *c == '#').count();
        before >= 2 && after >= 2 && before + after >= 5
    })
}

/// The agent's first line, shown to the user model (tau-bench's).
pub const GREETING: &str = "Hi! How can I help you today?";
/// A user line in which no `#` is followed by another, a space or `_`, so without any form of
/// `###STOP###` ([`is_stop`]) while `#W2378156` can still be said.
pub const NO_STOP: &str = "([^#]|#[^#\\s_])*#?";

/// User lines of a data run, at most, decoded under [`NO_STOP`] while gold writes are pending;
/// past them a stop is drawn again as `early_stop`, within the resample bound.
pub const HELD_STOPS: usize = 4;

/// Samples of the user's opening line before an episode whose user stops at once is given up.
pub const OPENING_TRIES: usize = 3;

/// The user prompt of tau-bench's `LLMUserSimulationEnv` (MIT, © 2024 Sierra), word for word —
/// typo included — so that users simulated here behave as they do there.
pub fn user_system_prompt(instruction: &str) -> String {
    format!(
        "You are an user interacting with an agent.\n\nInstruction: {instruction}\n
Rules:
- Just generate one line at a time to simulate the user's message.
- Do not give away all the instruction at once. Only provide the information that is necessary for the current step.
- Do not hallucinate information that is not provided in the instruction. For example, if the agent asks for the order id but it is not mentioned in the instruction, do not make up an order id, just say you do not remember or have it.
- If the instruction goal is satisified, generate '###STOP###' as a standalone message without anything else to end the conversation.
- Do not repeat the exact instruction in the conversation. Instead, use your own words to convey the same information.
- Try to make the conversation as natural as possible, and stick to the personalities in the instruction.
"
    )
}

/// The user prompt of the `transcript` view (ours): the same instruction and rules as
/// tau-bench's, addressed to a customer who is told they are not the agent. Small models given
/// tau-bench's arrangement, where the agent's lines arrive as user turns, answer as the
/// assistant they were trained to be ("How can I help you?").
pub fn transcript_system_prompt(instruction: &str) -> String {
    format!(
        "You are a customer writing to a customer-service agent. You are not the agent: you never offer help, you ask for it.

Your situation: {instruction}

Rules:
- Write only your next message, one short line.
- Do not give away your whole situation at once. Only provide the information that is necessary for the current step.
- Do not invent facts (ids, numbers, names) that your situation does not state. If the agent asks for one you do not have, say you do not remember or have it.
- When the agent asks you to confirm something your situation asks for, say yes.
- When your goal is met, write '###STOP###' alone, with nothing else.
- Do not repeat your situation word for word. Use your own words, and stick to the personality it describes."
    )
}

/// The one user message of the `transcript` view, from the user's tau-bench-arranged
/// conversation (`user` turns are the agent's lines, `assistant` turns the user's own; the
/// system prompt is skipped): the lines as `Agent:` and `Customer:`, then the request for the
/// next line — for the first, who the customer is and what they want: asked only for "the next
/// message", Qwen2.5-Coder-1.5B opened in the customer's role and about their situation 2–3
/// times in 16 (it answers as the agent), asked for who and what 13 in 16 — a third of them
/// a summary in the third person ("Alan Lovelace, account acc_1011, wants to move ..."), hence
/// "in the first person".
pub fn transcript_prompt(conversation: &[Message]) -> String {
    let mut s = String::from("Conversation so far:\n");
    for m in conversation.iter().filter(|m| m.role != "system") {
        s.push_str(if m.role == "user" {
            "Agent: "
        } else {
            "Customer: "
        });
        s.push_str(&m.content.replace('\n', " "));
        s.push('\n');
    }
    let opening = !conversation.iter().any(|m| m.role == "assistant");
    s.push_str(if opening {
        "\nWrite the customer's first message, in the first person (\"I\", \"my\"): say who you are and what you want, in your own words."
    } else {
        "\nWrite the customer's next message, in the first person."
    });
    s
}

/// The best-of-N judge's prompt (APIGen-MT, Fig. 12, in our words): the human's task, the
/// agent's last message and one candidate reply, scored 0–10 in `<score></score>`.
pub fn judge_prompt(instruction: &str, agent_said: &str, candidate: &str) -> String {
    format!(
        "You are a fair and detail-focused judge. A human is talking to a customer-service \
assistant. Below are the human's description (who they are and what they want), the \
assistant's last message, and one candidate reply from the human.

<description>
{instruction}
</description>

<assistant>
{agent_said}
</assistant>

<response>
{candidate}
</response>

Score the candidate reply from 0 to 10:
1. Item, order, reservation or personal details must match the description: a reply whose details all match scores 10, and each altered or invented detail lowers the score.
2. Ordinary conversation (asking for details, confirming, saying ###STOP### once the goal is met) is acceptable.
3. Replies that move the conversation forward and give the needed information properly score high; unhelpful ones (\"I don't remember\" when the description says it) score lower.

Answer with the score only, as <score>N</score>."
    )
}

/// Read a judge's score: the number in `<score>…</score>`, else the first number 0–10 in the
/// text; `None` when there is none.
pub fn parse_score(text: &str) -> Option<u32> {
    let inner = text
        .split_once("<score>")
        .map(|(_, rest)| rest.split("</score>").next().unwrap_or(rest))
        .unwrap_or(text);
    inner
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse::<u32>().ok())
        .find(|n| *n <= 10)
}

/// How the simulated user picks each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UserStrategy {
    /// One sample per turn (tau-bench's `llm` user).
    Plain,
    /// N samples per turn, each scored 0–10 by a judge; the first best one is sent (APIGen-MT).
    BestOfN,
}

/// How the simulated user's model sees the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UserView {
    /// tau-bench's: its user prompt as the system message, the agent's lines as user turns and
    /// the user's own lines as assistant turns.
    TauBench,
    /// A customer prompt and the whole conversation as one transcript to continue, asked anew
    /// each turn (the cached prefix is reused): small user models stay in the customer's role.
    Transcript,
}

/// The agent under test or generating data.
#[derive(Clone)]
pub struct AgentRole {
    /// The model, its temperature and reply length.
    pub model: Role,
    /// Replies before the episode is cut off (tau-bench: 30).
    pub max_steps: usize,
    /// Run every call of a reply instead of only the first.
    pub parallel_calls: bool,
    /// Print every message of every episode to stderr as it happens.
    pub trace: bool,
    /// Decode each reply under a grammar that admits plain text or one well-formed call to a
    /// domain tool, so a small model never writes a half-formed call.
    pub constrained: bool,
    /// End the episode (`rollout.stalled`) once this many agent replies in a row, and what
    /// answered each (the user's line or the tool's observation), are identical, or a cycle of
    /// two or three such exchanges has come round this many times; 0 or 1: never.
    pub stall_after: usize,
    /// With `constrained`: id-like arguments may only take ids a user line or a tool result
    /// has given ([`guide::grounded_tools`]).
    pub seen_ids: bool,
    /// A reply whose call would make the conversation unkeepable ([`guide::turn_problem`]) is
    /// drawn again, up to this many times; 0: every reply is used as sampled (eval).
    pub resample: usize,
    /// With `constrained`: the grammar offers a write only when a gold write of that tool is
    /// due, and a hand-over only when the gold actions hand over ([`guide::gated_tools`]).
    pub gold_writes: bool,
}

/// The simulated user (and, for best-of-N, its judge).
#[derive(Clone)]
pub struct UserRole {
    /// The model, its temperature and line length.
    pub model: Role,
    pub strategy: UserStrategy,
    pub view: UserView,
    /// Candidates per turn for best-of-N.
    pub n: usize,
    /// The judge for best-of-N (the user's model by default; greedy, a few tokens).
    pub judge: Role,
    /// Samples drawn again, at most, for a line in the agent's voice or with an id the user
    /// cannot know ([`keep::user_line_problem`]); 0: every line is sent as sampled (eval).
    pub resample: usize,
}

/// Why an episode did not earn reward 1.
pub mod code {
    pub const DB_MISMATCH: &str = "rollout.db_mismatch";
    pub const OUTPUT_MISSING: &str = "rollout.output_missing";
    pub const MAX_STEPS: &str = "rollout.max_steps";
    pub const AGENT_MALFORMED: &str = "rollout.agent_malformed";
    pub const USER_STOPPED_EARLY: &str = "rollout.user_stopped_early";
    pub const MODEL_ERROR: &str = "rollout.model_error";
    pub const STALLED: &str = "rollout.stalled";
}

/// Longest cycle of exchanges the stall check looks for: a model that alternates two replies
/// (asking for an id, then promising to look once it has one) loops as surely as one that
/// repeats itself.
const MAX_CYCLE: usize = 3;

/// The period of the cycle (1 to [`MAX_CYCLE`] exchanges) that the last exchanges repeat `n`
/// times in a row, if any; `n` below 2 never stalls.
fn stall_cycle(exchanges: &[String], n: usize) -> Option<usize> {
    if n < 2 {
        return None;
    }
    (1..=MAX_CYCLE).find(|&p| {
        let k = n * p;
        exchanges.len() >= k
            && (exchanges.len() - k + p..exchanges.len()).all(|i| exchanges[i] == exchanges[i - p])
    })
}

/// One finished episode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Episode {
    /// The conversation in OpenAI chat form: `system` (the policy), then `user`, `assistant`
    /// (with `tool_calls`) and `tool` messages. The user's closing `###STOP###` line is left out.
    pub messages: Vec<Value>,
    pub reward: f64,
    /// Set when the reward is 0.
    pub code: Option<String>,
    pub detail: String,
    pub db_hash: String,
    pub gold_db_hash: String,
    /// Each expected output and whether the agent said it.
    pub outputs: Vec<(String, bool)>,
    /// Agent replies (tau-bench's steps).
    pub steps: usize,
    /// User lines, the closing one included.
    pub user_turns: usize,
    /// The user's closing line (the one with `###STOP###`), left out of `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_line: Option<String>,
    pub tool_calls: usize,
    /// Generated plus freshly prefilled tokens per role (`agent`, `user`, `judge`).
    pub tokens: BTreeMap<String, usize>,
    pub seconds: BTreeMap<String, f64>,
    /// User lines sampled again, by reason (`agent_voice`, `unknown_id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_resampled: BTreeMap<String, usize>,
    /// Agent replies sampled again, by reason (`write_off_gold`, `needless_transfer`,
    /// `invented_id`; [`guide::turn_problem`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_resampled: BTreeMap<String, usize>,
}

/// An episode's meter and its resampling counts (user lines, agent replies), by reason.
type Tally = (Meter, BTreeMap<String, usize>, BTreeMap<String, usize>);

/// The user side of an episode.
struct SimUser<'a> {
    role: &'a UserRole,
    instruction: String,
    messages: Vec<Message>,
    conv: Conversation,
    judge_conv: Conversation,
    seed: u64,
    turn: u64,
    /// Lines drawn again, by reason.
    resampled: BTreeMap<String, usize>,
    /// Lines decoded without a stop so far ([`HELD_STOPS`]).
    held: usize,
    /// The verbs of the domain's writes: a line promising one is the agent's
    /// ([`keep::acts_as_agent`]).
    verbs: Vec<String>,
}

impl<'a> SimUser<'a> {
    fn new(role: &'a UserRole, instruction: &str, seed: u64, verbs: Vec<String>) -> Self {
        SimUser {
            role,
            instruction: instruction.to_owned(),
            messages: vec![Message::system(user_system_prompt(instruction))],
            conv: Conversation::new(),
            judge_conv: Conversation::new(),
            seed,
            turn: 0,
            resampled: BTreeMap::new(),
            held: 0,
            verbs,
        }
    }

    /// The user's opening line. A user who has said nothing yet cannot have reached their goal,
    /// so an opening `###STOP###` is sampled again, up to [`OPENING_TRIES`] times in all.
    fn open(&mut self, meter: &mut Meter) -> Result<String, String> {
        let mut line = String::new();
        for _ in 0..OPENING_TRIES {
            self.messages.truncate(1);
            line = self.reply(GREETING, false, meter)?;
            if !is_stop(&line) {
                break;
            }
        }
        Ok(line)
    }

    /// The user's next line after the agent said `agent_said`.
    /// `goal_pending`: gold writes are still to be made, so a `###STOP###` is drawn again in a
    /// data run (`early_stop`), within the same bound.
    fn reply(
        &mut self,
        agent_said: &str,
        goal_pending: bool,
        meter: &mut Meter,
    ) -> Result<String, String> {
        self.messages.push(Message::user(agent_said));
        self.turn += 1;
        let prompt = match self.role.view {
            UserView::TauBench => self.messages.clone(),
            UserView::Transcript => vec![
                Message::system(transcript_system_prompt(&self.instruction)),
                Message::user(transcript_prompt(&self.messages)),
            ],
        };
        let n = match self.role.strategy {
            UserStrategy::Plain => 1,
            UserStrategy::BestOfN => self.role.n.max(1),
        };
        let agent_lines: Vec<String> = self
            .messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.clone())
            .collect();
        let agent_lines: Vec<&str> = agent_lines.iter().map(String::as_str).collect();
        // With the job not done, a data run's user line cannot end the conversation, for the
        // first few turns (a 1.5B user says `###STOP###` to "Shall I go ahead?").
        let answer_due = self.role.resample > 0 && goal_pending && self.held < HELD_STOPS;
        if answer_due {
            self.held += 1;
        }
        let mut best: Option<(i64, String)> = None;
        let mut draw = 0u64;
        for _ in 0..n {
            // A line in the agent's voice or with an id the user cannot know is drawn again;
            // best-of-N judges only lines that pass.
            let mut line = String::new();
            for again in 0..=self.role.resample {
                let seed = self
                    .seed
                    .wrapping_add(self.turn.wrapping_mul(1_000_003))
                    .wrapping_add(draw);
                let mut req = self.role.model.request(prompt.clone(), seed);
                if answer_due {
                    req.constraint = Some(crate::llm::Constraint::Regex(NO_STOP.into()));
                }
                draw += 1;
                let reply = self.role.model.ask(meter, "user", &mut self.conv, &req)?;
                // Data runs also drop the customer's name used as a prefix; eval sends the
                // line as tau-bench would.
                let name_in = (self.role.resample > 0).then_some(self.instruction.as_str());
                line = user_line(&reply.raw, name_in);
                if self.role.resample == 0 {
                    break;
                }
                if is_stop(&line) {
                    if goal_pending && again < self.role.resample && self.messages.len() > 2 {
                        *self.resampled.entry("early_stop".into()).or_default() += 1;
                        continue;
                    }
                    break;
                }
                // The opening (only the greeting before it) must also be about the situation.
                let problem = if self.messages.len() == 2 {
                    keep::opening_problem(&line, &self.instruction)
                } else {
                    None
                };
                let problem = problem.or_else(|| {
                    keep::user_line_problem(&line, &self.instruction, &agent_lines, &self.verbs)
                });
                match problem {
                    Some(why) if again < self.role.resample => tally(&mut self.resampled, &why),
                    _ => break,
                }
            }
            // Past the bound, a line whose other sentences are the customer's is sent without
            // the ones in the agent's voice.
            if self.role.resample > 0 && !is_stop(&line) && keep::out_of_role(&line).is_some() {
                if let Some(cut) = keep::without_agent_voice(&line) {
                    *self.resampled.entry("agent_voice_cut".into()).or_default() += 1;
                    line = cut;
                }
            }
            if n == 1 {
                best = Some((0, line));
                break;
            }
            let mut jreq = self.role.judge.request(
                vec![Message::user(judge_prompt(
                    &self.instruction,
                    agent_said,
                    &line,
                ))],
                0,
            );
            jreq.stop = vec!["</score>".into()];
            let judged = self
                .role
                .judge
                .ask(meter, "judge", &mut self.judge_conv, &jreq)?;
            let score = parse_score(&judged.raw).map_or(-1, i64::from);
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, line));
            }
        }
        let line = best.map(|(_, l)| l).unwrap_or_default();
        self.messages.push(Message::assistant(line.clone()));
        Ok(line)
    }
}

/// A user model's reply as one line to send: its first non-empty line ("one line at a time"),
/// trimmed, without a role prefix, and with `instruction` also without the customer's own name
/// as one ("Barbara Allen: Hi!", the name written so in the instruction).
fn user_line(raw: &str, instruction: Option<&str>) -> String {
    let mut s = raw
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    for prefix in ["User:", "user:", "Customer:"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest.trim_start();
        }
    }
    if let (Some(instruction), Some((name, rest))) = (instruction, s.split_once(": ")) {
        let words = name.split_whitespace().count();
        let named = name.chars().next().is_some_and(char::is_uppercase)
            && name
                .chars()
                .all(|c| c.is_alphabetic() || c == ' ' || c == '-' || c == '\'');
        let in_instruction = instruction.match_indices(name).any(|(i, _)| {
            let before = instruction[..i].chars().next_back();
            let after = instruction[i + name.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        });
        if (1..=3).contains(&words) && named && in_instruction && !rest.trim().is_empty() {
            s = rest.trim_start();
        }
    }
    s.to_owned()
}

/// Canonical OpenAI-form messages from the agent's message list: tool calls get ids `call_0`,
/// `call_1`, … and the tool messages that follow answer them in order.
pub fn openai_messages(messages: &[Message]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = 0usize;
    let mut pending: std::collections::VecDeque<String> = Default::default();
    for m in messages {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let id = format!("call_{next}");
                        next += 1;
                        pending.push_back(id.clone());
                        json!({"id": id, "type": "function", "function": {
                            "name": c.name,
                            "arguments": serde_json::to_string(&c.arguments).unwrap_or_default(),
                        }})
                    })
                    .collect();
                out.push(json!({"role": "assistant", "content": m.content, "tool_calls": calls}));
            }
            "tool" => {
                let id = pending.pop_front().unwrap_or_default();
                out.push(json!({"role": "tool", "tool_call_id": id, "name": m.name, "content": m.content}));
            }
            role => out.push(json!({"role": role, "content": m.content})),
        }
    }
    out
}

/// Everything one episode needs.
pub struct EpisodeSpec<'a> {
    pub domain: &'a Domain,
    pub task: &'a Task,
    pub agent: &'a AgentRole,
    pub user: &'a UserRole,
    /// Seeds the user's (and a sampling agent's) choices.
    pub seed: u64,
    /// A conversation whose cache already holds the agent's system prompt and tools (see
    /// [`prime_agent`]); cloned, never modified.
    pub agent_prefix: Option<&'a Conversation>,
}

/// The agent's opening request: the policy as system prompt and the domain's tools.
fn agent_request(
    tools: &[Value],
    messages: Vec<Message>,
    agent: &AgentRole,
    seed: u64,
) -> crate::llm::ChatRequest {
    let mut req = agent.model.request(messages, seed);
    req.tools = tools.to_vec();
    req
}

/// A conversation with the agent's system prompt and tools already in its cache, to clone for
/// each episode (the prompt is the same for every task of a domain).
pub fn prime_agent(domain: &Domain, agent: &AgentRole) -> Result<Conversation, String> {
    let mut conv = Conversation::new();
    let req = agent_request(
        &domain.tool_schemas(),
        vec![Message::system(domain.policy.clone())],
        agent,
        0,
    );
    agent
        .model
        .backend
        .prime(&mut conv, &req)
        .map_err(|e| format!("agent: {e}"))?;
    Ok(conv)
}

/// Run one episode to its end and score it.
pub fn run_episode(spec: &EpisodeSpec) -> Episode {
    let EpisodeSpec {
        domain,
        task,
        agent,
        user,
        seed,
        ..
    } = *spec;
    let mut meter = Meter::default();
    let mut env = domain.env();
    let verbs = keep::write_verbs(
        domain
            .tools()
            .iter()
            .filter(|t| t.kind == crate::domain::tools::ToolKind::Write)
            .map(|t| t.name.as_str()),
    );
    let mut sim = SimUser::new(user, &task.instruction, seed, verbs);
    let tools = domain.tool_schemas();
    let mut messages = vec![Message::system(domain.policy.clone())];
    let mut said: Vec<String> = Vec::new();
    let mut conv = spec.agent_prefix.cloned().unwrap_or_default();
    let (mut steps, mut user_turns, mut tool_calls) = (0usize, 0usize, 0usize);
    // How the loop ended: None = done normally (stop or terminate tool), Some(code, detail).
    let mut cut: Option<Rejection> = None;

    let mut stop_line: Option<String> = None;
    // The writes run so far, and the agent replies drawn again, by reason.
    let mut writes: Vec<Action> = Vec::new();
    let mut agent_resampled: BTreeMap<String, usize> = BTreeMap::new();
    let is_write = |n: &str| domain.is_write(n);
    let aside: Vec<String> = domain
        .tools()
        .iter()
        .filter(|t| {
            matches!(
                t.kind,
                crate::domain::tools::ToolKind::Think | crate::domain::tools::ToolKind::Generic
            ) && !domain.manifest.terminate_tools.contains(&t.name)
        })
        .map(|t| t.name.clone())
        .collect();
    // One entry per agent reply: the reply and what answered it, for stall detection.
    let mut exchanges: Vec<String> = Vec::new();
    let finish = |messages: &[Message],
                  stop_line: Option<String>,
                  said: &[String],
                  env: &crate::domain::env::Env,
                  cut: Option<Rejection>,
                  (meter, resampled, agent_resampled): Tally,
                  counts: (usize, usize, usize)| {
        let refs: Vec<&str> = said.iter().map(String::as_str).collect();
        let r: Reward = reward::score(domain, task, &env.hash(), &refs);
        let (reward, code, detail) = match cut {
            Some(r) => (0.0, Some(r.code), r.detail),
            None if r.reward == 1.0 => (1.0, None, String::new()),
            None if !r.db_match => (
                0.0,
                Some(code::DB_MISMATCH.to_owned()),
                format!(
                    "final database {} differs from the gold {}",
                    short(&r.db_hash),
                    short(&r.gold_db_hash)
                ),
            ),
            None => (
                0.0,
                Some(code::OUTPUT_MISSING.to_owned()),
                format!(
                    "never said: {}",
                    r.outputs
                        .iter()
                        .filter(|(_, ok)| !ok)
                        .map(|(o, _)| format!("{o:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        };
        Episode {
            messages: openai_messages(messages),
            reward,
            code,
            detail,
            db_hash: r.db_hash,
            gold_db_hash: r.gold_db_hash,
            outputs: r.outputs,
            steps: counts.0,
            user_turns: counts.1,
            stop_line,
            tool_calls: counts.2,
            tokens: meter.tokens,
            seconds: meter.seconds,
            user_resampled: resampled,
            agent_resampled,
        }
    };

    let first = match sim.open(&mut meter) {
        Ok(line) => line,
        Err(e) => {
            return finish(
                &messages,
                None,
                &said,
                &env,
                Some(Rejection::new(code::MODEL_ERROR, e)),
                (meter, sim.resampled.clone(), BTreeMap::new()),
                (0, 0, 0),
            );
        }
    };
    user_turns += 1;
    trace(agent.trace, "user", &first);
    if is_stop(&first) {
        let cut = Some(Rejection::new(
            code::USER_STOPPED_EARLY,
            format!("the user's opening line was {STOP} in all {OPENING_TRIES} samples"),
        ));
        let tally = (meter, sim.resampled.clone(), BTreeMap::new());
        return finish(&messages, Some(first), &said, &env, cut, tally, (0, 1, 0));
    }
    messages.push(Message::user(first));

    let mut done = false;
    while !done {
        let n = agent.stall_after;
        if let Some(p) = stall_cycle(&exchanges, n) {
            let detail = if p == 1 {
                format!("the last {n} agent replies, and the answers to them, were identical")
            } else {
                format!(
                    "the last {} agent replies, and the answers to them, were one cycle of {p} repeated {n} times",
                    n * p
                )
            };
            cut = Some(Rejection::new(code::STALLED, detail));
            break;
        }
        if steps >= agent.max_steps {
            cut = Some(Rejection::new(
                code::MAX_STEPS,
                format!("no end after {} agent replies", agent.max_steps),
            ));
            break;
        }
        steps += 1;
        crate::run::progress::doing(format!("step {steps}: agent"));
        let mut again = 0u64;
        let mut noted = 0u64;
        let reply = loop {
            let cx = guide::Context {
                messages: &messages,
                tools: &tools,
                task,
                done: &writes,
                is_write,
                terminate: &domain.manifest.terminate_tools,
                aside: &aside,
            };
            let mut req = agent_request(
                &tools,
                messages.clone(),
                agent,
                seed ^ 0x9e37_79b9_7f4a_7c15 ^ steps as u64 ^ (again << 40),
            );
            if agent.constrained {
                req.constraint = Some(if agent.seen_ids || agent.gold_writes {
                    let mut offered = tools.clone();
                    if agent.gold_writes {
                        offered = guide::gated_tools(&offered, &cx);
                    }
                    if agent.seen_ids {
                        offered = guide::grounded_tools(&offered, &guide::seen_ids(&messages));
                    }
                    crate::llm::Constraint::TextOrCallTo(offered)
                } else {
                    crate::llm::Constraint::TextOrToolCall
                });
            }
            let reply = match agent.model.ask(&mut meter, "agent", &mut conv, &req) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            if agent.model.temperature <= 0.0 {
                break Ok(reply);
            }
            // Past the bound a reply is taken as it is, except a gold write made before the
            // step it needs (its gold read, the customer's yes): that one still becomes the step
            // under a note, within the notes' own bound, so no kept conversation writes first.
            let exhausted = again as usize >= agent.resample;
            let problem = match &reply.output {
                ModelOutput::ToolCalls { calls, .. } => calls
                    .iter()
                    .take(if agent.parallel_calls { calls.len() } else { 1 })
                    .find_map(|c| {
                        let arguments = call_arguments(c);
                        let turn = guide::Turn {
                            name: &c.name,
                            arguments: &arguments,
                        };
                        guide::turn_problem(turn, &cx)
                    }),
                ModelOutput::Text { content } => guide::text_problem(
                    content,
                    &tools,
                    &messages,
                    !guide::writes_pending(task, &writes, is_write),
                )
                .or_else(|| guide::words_after_yes(&cx)),
                // A call the parser cannot read (a fenced block of JSON in place of the call
                // syntax) ends the attempt when taken: drawn again first.
                ModelOutput::Malformed { .. } => Some("malformed".to_owned()),
            };
            // Past the bound, a gold write's tool called with other values than the gold ones
            // (a passenger's birth date from the reservation instead of the one the customer
            // gave) is not made: the agent puts it to the customer under the confirmation note,
            // and the customer, who knows what they asked for, can set it right.
            let problem = problem.map(|why| match why.strip_prefix("write_off_gold: ") {
                Some(tool) if exhausted && cx.task.actions.iter().any(|a| a.name == tool) => {
                    format!("off_gold_put: {tool}")
                }
                _ => why,
            });
            match problem {
                // A write before what it needs (a gold read, the customer's yes), or words where
                // the agreed write is due: the model makes that step instead, under a note the
                // record never shows.
                Some(why) if noted < agent.resample as u64 && guide::noted_problem(&why) => {
                    // The call the note is about: the reply's, or none (an answer in words).
                    let (name, arguments) = match &reply.output {
                        ModelOutput::ToolCalls { calls, .. } => {
                            (calls[0].name.clone(), call_arguments(&calls[0]))
                        }
                        _ => (String::new(), serde_json::Map::new()),
                    };
                    let Some(note) = guide::note_for(&why, &name, &arguments) else {
                        break Ok(reply);
                    };
                    let (text, constraint) = match &note {
                        guide::Note::Read { tool, text } => {
                            let read: Vec<Value> = tools
                                .iter()
                                .filter(|t| {
                                    t.get("function").unwrap_or(t)["name"].as_str()
                                        == Some(tool.as_str())
                                })
                                .cloned()
                                .collect();
                            // The read of the ids the gold read is of, where they were given.
                            let seen = guide::seen_ids(&messages);
                            let ids: BTreeSet<String> = guide::read_ids(
                                task,
                                guide::Turn {
                                    name: &name,
                                    arguments: &arguments,
                                },
                                &messages,
                                is_write,
                                &domain.manifest.terminate_tools,
                            )
                            .into_iter()
                            .filter(|v| seen.contains(v))
                            .collect();
                            let read = guide::grounded_tools(&read, &ids);
                            if read.is_empty() {
                                // The read's id is not given yet: draw the reply again.
                                tally(&mut agent_resampled, &why);
                                again += 1;
                                continue;
                            }
                            (text, crate::llm::Constraint::CallTo(read))
                        }
                        guide::Note::Confirm { text } | guide::Note::Done { text } => {
                            (text, crate::llm::Constraint::TextOrCallTo(vec![]))
                        }
                        guide::Note::Act { tool, text } => {
                            // The gated write, its ids among those given.
                            let mut write: Vec<Value> = guide::gated_tools(&tools, &cx)
                                .into_iter()
                                .filter(|t| {
                                    t.get("function").unwrap_or(t)["name"].as_str()
                                        == Some(tool.as_str())
                                })
                                .collect();
                            if agent.seen_ids {
                                write = guide::grounded_tools(&write, &guide::seen_ids(&messages));
                            }
                            if write.is_empty() {
                                break Ok(reply);
                            }
                            (text, crate::llm::Constraint::CallTo(write))
                        }
                    };
                    tally(&mut agent_resampled, &why);
                    trace(agent.trace, "agent, noted", text);
                    noted += 1;
                    let mut draw = |text: &str, constraint: &crate::llm::Constraint, d: u64| {
                        let mut with_note = messages.clone();
                        with_note.push(Message::user(text.to_owned()));
                        let mut req = agent_request(
                            &tools,
                            with_note,
                            agent,
                            seed ^ 0x5bd1_e995_c0f1_7e11 ^ steps as u64 ^ (noted << 20) ^ (d << 44),
                        );
                        req.constraint = Some(constraint.clone());
                        agent.model.ask(&mut meter, "agent", &mut conv, &req)
                    };
                    // A reply that repeats the note, or is not an answer, is drawn once more.
                    let writes_done = !guide::writes_pending(task, &writes, is_write);
                    let bad = |r: &Result<crate::llm::ChatReply, String>| {
                        matches!(r, Ok(crate::llm::ChatReply { output: ModelOutput::Text { content }, .. })
                            if guide::echoes_note(content) || guide::text_problem(content, &tools, &messages, writes_done).is_some())
                    };
                    // The call a note asked for, with other values than the gold write's (the
                    // customer's old street for the new one): `write_off_gold`.
                    let off_gold = |r: &Result<crate::llm::ChatReply, String>| match r {
                        Ok(crate::llm::ChatReply {
                            output: ModelOutput::ToolCalls { calls, .. },
                            ..
                        }) => calls.first().and_then(|c| {
                            let arguments = call_arguments(c);
                            let turn = guide::Turn {
                                name: &c.name,
                                arguments: &arguments,
                            };
                            guide::turn_problem(turn, &cx)
                                .filter(|p| p.starts_with("write_off_gold"))
                                .map(|_| (c.name.clone(), arguments))
                        }),
                        _ => None,
                    };
                    let mut r = draw(&text, &constraint, 0);
                    if bad(&r) || off_gold(&r).is_some() {
                        tally(&mut agent_resampled, "note_echo");
                        r = draw(&text, &constraint, 1);
                    }
                    // Still off the gold values: not made, but put to the customer as it would
                    // be made, who can set it right (as `off_gold_put` past the bound).
                    if let Some((name, arguments)) = off_gold(&r) {
                        if let Some(guide::Note::Confirm { text }) =
                            guide::note_for(&format!("off_gold_put: {name}"), &name, &arguments)
                        {
                            tally(&mut agent_resampled, &format!("off_gold_put: {name}"));
                            r = draw(&text, &crate::llm::Constraint::TextOrCallTo(vec![]), 2);
                        }
                    }
                    break r;
                }
                Some(why) if !exhausted => {
                    tally(&mut agent_resampled, &why);
                    trace(agent.trace, "agent, drawn again", &why);
                    again += 1;
                }
                _ => break Ok(reply),
            }
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                cut = Some(Rejection::new(code::MODEL_ERROR, e));
                break;
            }
        };
        trace(
            agent.trace,
            &format!(
                "agent {steps}, {} tokens, {:.1}s",
                reply.usage.completion_tokens,
                (reply.usage.prefill_ms + reply.usage.decode_ms) / 1e3
            ),
            &reply.raw,
        );
        match reply.output {
            ModelOutput::Malformed { reason, raw } => {
                messages.push(Message::assistant(raw));
                cut = Some(Rejection::new(code::AGENT_MALFORMED, reason));
                break;
            }
            ModelOutput::ToolCalls { calls, content } => {
                let run: Vec<ToolCall> = if agent.parallel_calls {
                    calls
                } else {
                    calls.into_iter().take(1).collect()
                };
                let mut observations = Vec::new();
                for call in &run {
                    tool_calls += 1;
                    let action = Action::new(call.name.clone(), call_arguments(call));
                    let step = env.step(&action);
                    if is_write(&action.name) && !step.observation.starts_with("Error") {
                        writes.push(action);
                    }
                    trace(agent.trace, "tool", &step.observation);
                    observations.push(Message::tool(&call.name, step.observation));
                    if step.done {
                        done = true;
                        break;
                    }
                }
                // Calls after a terminate tool are not run; the record keeps only the calls
                // that were, so each has its observation.
                let mut msg = Message::assistant_calls(run[..observations.len()].to_vec());
                msg.content = content;
                exchanges.push(format!(
                    "{}\u{1}{}",
                    reply.raw,
                    observations
                        .iter()
                        .map(|o| o.content.as_str())
                        .collect::<Vec<_>>()
                        .join("\u{1}")
                ));
                messages.push(msg);
                messages.extend(observations);
            }
            ModelOutput::Text { content } => {
                said.push(content.clone());
                messages.push(Message::assistant(content.clone()));
                crate::run::progress::doing(format!("step {steps}: user"));
                let pending = guide::writes_pending(task, &writes, is_write);
                match sim.reply(&content, pending, &mut meter) {
                    Ok(line) => {
                        trace(agent.trace, "user", &line);
                        user_turns += 1;
                        if is_stop(&line) {
                            stop_line = Some(line);
                            done = true;
                        } else {
                            exchanges.push(format!("{content}\u{1}{line}"));
                            messages.push(Message::user(line));
                        }
                    }
                    Err(e) => {
                        cut = Some(Rejection::new(code::MODEL_ERROR, e));
                        break;
                    }
                }
            }
        }
    }
    finish(
        &messages,
        stop_line,
        &said,
        &env,
        cut,
        (meter, sim.resampled, agent_resampled),
        (steps, user_turns, tool_calls),
    )
}

/// A call's arguments as a map (the parsers give objects; anything else is no arguments).
fn call_arguments(call: &ToolCall) -> serde_json::Map<String, Value> {
    match &call.arguments {
        Value::Object(m) => m.clone(),
        _ => Default::default(),
    }
}

/// Count a draw made again under its reason, the part of `why` before the first `:`.
fn tally(counts: &mut BTreeMap<String, usize>, why: &str) {
    let reason = why.split(':').next().unwrap_or_default().to_owned();
    *counts.entry(reason).or_default() += 1;
}

/// One message on stderr (for `--trace`).
fn trace(on: bool, who: &str, text: &str) {
    if on {
        let one_line: String = text.replace('\n', " ");
        let cut: String = one_line.chars().take(300).collect();
        eprintln!("  [{who}] {cut}");
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_are_read_through_stray_spaces() {
        assert!(is_stop("###STOP###"));
        assert!(is_stop("Thanks, bye! ### STOP###"));
        // Misspellings the 1.5B user wrote in real runs.
        assert!(is_stop("###Stop###"));
        assert!(is_stop("###_STOP###"));
        assert!(is_stop("##STOP###"));
        assert!(!is_stop("STOP"));
        assert!(!is_stop("Please stop the order."));
        assert!(!is_stop("## STOP ##"));
        assert!(!is_stop("#STOP###"));
        assert!(!is_stop("###STOPPED"));
    }

    #[test]
    fn a_user_line_loses_its_role_prefix_and_the_customers_name_as_one() {
        let ins = Some("You are Barbara Allen, account acc_1002. Your order is late.");
        assert_eq!(user_line("\n Customer: Hi there\nmore", ins), "Hi there");
        assert_eq!(
            user_line("Barbara Allen: Hi! Move 250.50.", ins),
            "Hi! Move 250.50."
        );
        assert_eq!(user_line("Allen: Hi!", ins), "Hi!");
        // Not the customer's name, or not a name: kept as written.
        assert_eq!(user_line("Note: it is urgent", ins), "Note: it is urgent");
        assert_eq!(user_line("Order: #W1", ins), "Order: #W1");
        assert_eq!(user_line("Barbara Allen:", ins), "Barbara Allen:");
        // Eval: as tau-bench sends it.
        assert_eq!(user_line("Barbara Allen: Hi!", None), "Barbara Allen: Hi!");
    }

    #[test]
    fn scores_are_read_leniently() {
        assert_eq!(parse_score("<score>7</score>"), Some(7));
        assert_eq!(parse_score("I'd say <score> 10 "), Some(10));
        assert_eq!(parse_score("score: 42 or 3"), Some(3));
        assert_eq!(parse_score("no idea"), None);
    }

    #[test]
    fn tool_calls_get_ids_their_answers_follow() {
        let mut call = Message::assistant_calls(vec![ToolCall {
            name: "get".into(),
            arguments: json!({"id": "a"}),
        }]);
        call.content = String::new();
        let m = openai_messages(&[
            Message::system("p"),
            Message::user("hi"),
            call,
            Message::tool("get", "{}"),
            Message::assistant("done"),
        ]);
        assert_eq!(m[2]["tool_calls"][0]["id"], "call_0");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"id\":\"a\"}"
        );
        assert_eq!(m[3]["tool_call_id"], "call_0");
        assert!(crate::dataset::validate(&json!({"messages": m})).is_ok());
    }
}
