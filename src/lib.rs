//! apigen-mt: verified multi-turn tool-use data from executable domains and local models.
//!
//! Pipeline map (dependencies point downward):
//!
//! - [`cli`]: argument parsing and one file per subcommand; the binary is a thin shell over it.
//! - [`blueprint`]: phase 1, task blueprints: stage-1 checks (format, execution and diff, policy
//!   rules, duplicates) with stable rejection codes.
//! - [`llm`]: local inference with candle: GGUF and safetensors checkpoints, tokenizers, chat
//!   templates, generation with per-conversation KV caches, model profiles. It never touches
//!   domains.
//! - [`dataset`]: the canonical training record (OpenAI chat form) and its exports (APIGen-MT,
//!   OpenAI, ShareGPT), with the conversation rules they must satisfy.
//! - [`eval`]: scoring checkpoints on tasks: tau-bench's pass^k.
//! - [`run`]: run directories: append-only JSON Lines records that survive a crash, pinned
//!   settings, atomic summaries — what makes long jobs resumable.
//! - [`domain`]: executable domains: manifest, database, tool schemas, sandboxed Starlark tool
//!   bodies, the tau-bench style environment (`reset`, `step`), tasks and the canonical hash.
//!   It never touches models.
//! - [`fuzz`]: fuzz targets for every reader of model output, user files and journals, and the
//!   mutation loop that drives them.
//! - [`guard`]: the last line of defence: a panic in one unit of work becomes that unit's error.
//! - [`report`]: a run directory as one self-contained HTML page (funnels, codes, cost,
//!   diversity, pass^k, and a viewer of every blueprint and conversation).
//! - [`pyjson`]: Python's `json.dumps` and float `repr`, byte for byte, shared by tool results,
//!   the database hash and chat templates' `tojson`.

pub mod blueprint;
pub mod cli;
pub mod dataset;
pub mod domain;
pub mod eval;
pub mod fuzz;
pub mod guard;
pub mod llm;
pub mod pyjson;
pub mod report;
pub mod role;
pub mod rollout;
pub mod run;
