//! `domain.toml`: what a domain folder contains and how to run it.

use crate::domain::script::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The manifest file name inside a domain folder.
pub const MANIFEST_FILE: &str = "domain.toml";

/// A parsed `domain.toml`. Paths are relative to the domain folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short identifier, e.g. `retail`.
    pub name: String,
    /// One paragraph on what the domain simulates.
    #[serde(default)]
    pub description: String,
    /// The licence of the domain's material (an SPDX identifier, e.g. `MIT`): what data made in
    /// the domain inherits, written into the dataset card `export` makes.
    #[serde(default)]
    pub license: Option<String>,
    /// Where the domain's material comes from, in one line, for the dataset card.
    #[serde(default)]
    pub attribution: Option<String>,
    /// The agent policy (markdown).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Tool schemas: a JSON array in OpenAI function format, each entry with a `kind`.
    #[serde(default = "default_tools")]
    pub tools: String,
    /// Folder of Starlark tool bodies.
    #[serde(default = "default_scripts")]
    pub scripts: String,
    /// Built-in tools this domain offers (`think`, `calculate`, `transfer_to_human_agents`).
    #[serde(default)]
    pub builtins: Vec<String>,
    /// The database.
    pub db: DbSection,
    /// Tools that end the episode when called.
    #[serde(default)]
    pub terminate_tools: Vec<String>,
    /// Resource bounds for every script call.
    #[serde(default)]
    pub limits: Limits,
    /// Optional folder of Starlark policy rules (used by blueprint checks).
    #[serde(default)]
    pub rules: Option<String>,
    /// Named task files, e.g. `test = "tasks/test.json"`.
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
    /// Optional seeded database generator.
    #[serde(default)]
    pub generator: Option<GeneratorSection>,
    /// Blueprint generation settings for this domain.
    #[serde(default)]
    pub blueprints: BlueprintSection,
    /// How the grounding checks read this domain's customers (`crate::domain::ground`).
    #[serde(default)]
    pub grounding: GroundingSection,
}

/// `[grounding]`: who a customer is, as an instruction would say it, and what any customer can
/// look up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroundingSection {
    /// Ways an instruction identifies its customer; any one suffices. Each way lists the values
    /// it must contain, each a space-separated list of dotted paths into the customer's record
    /// (`"name.first_name name.last_name"` is the full name); `$id` is the record's key.
    pub identity: Vec<Vec<String>>,
    /// Tables any customer can reach through the read tools (a catalogue): ids in them are never
    /// unsourced.
    pub public: Vec<String>,
    /// How a customer says who they are, with `{path}` fields of their record (`{$id}` its key):
    /// put before a planned blueprint's instruction when the proposer left the identity out.
    pub introduce: Option<String>,
    /// How a customer asks for each write tool's change, by tool: `{arg}` is the argument's
    /// value, ids described by what the reads returned. A list is tried in order, the first
    /// whose arguments are all present used (for optional arguments). Used for planned
    /// blueprints; a tool without one gets a line built from its name.
    #[serde(deserialize_with = "one_or_many")]
    pub requests: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for GroundingSection {
    fn default() -> Self {
        GroundingSection {
            identity: vec![vec![crate::domain::ground::RECORD_ID.into()]],
            public: vec![],
            introduce: None,
            requests: Default::default(),
        }
    }
}

/// `[blueprints]`: how phase 1 treats this domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlueprintSection {
    /// The table of customers a task is about.
    pub user_table: String,
    /// Proposals per task, the first included (the paper uses 3 for retail, 5 for airline).
    pub max_turns: usize,
    /// Other customers' records shown beside the customer's own, for domains whose tasks involve
    /// them (a transfer to another account); 0 where a task must stay with one customer.
    pub peers: usize,
}

impl Default for BlueprintSection {
    fn default() -> Self {
        BlueprintSection {
            user_table: "users".into(),
            max_turns: 3,
            peers: 0,
        }
    }
}

/// `[db]`: table names and where their files live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSection {
    /// Table names; each is the file `<dir>/<table>.json`, a JSON object of records.
    pub tables: Vec<String>,
    /// Folder holding the table files.
    #[serde(default = "default_data")]
    pub dir: String,
}

/// `[generator]`: a Starlark script whose `generate(size)` returns the tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSection {
    pub script: String,
    /// Default record counts per table (or any size knobs the script reads).
    #[serde(default)]
    pub size: BTreeMap<String, i64>,
    /// Resource bounds for the one `generate(size)` call (`[generator.limits]`); a bound left
    /// out keeps its generator default (see [`GeneratorSection::limits`]).
    #[serde(default, rename = "limits")]
    pub limits_set: LimitsSet,
}

/// Bounds a manifest sets explicitly.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSet {
    pub max_ticks: Option<u64>,
    pub max_heap_bytes: Option<usize>,
    pub max_call_depth: Option<usize>,
}

impl GeneratorSection {
    /// A generator builds the whole database in one call, so by default it gets two and a half
    /// times a tool call's ticks (the shipped generators need under half of that) and eight
    /// times its memory.
    pub fn limits(&self) -> Limits {
        let base = Limits::default();
        let set = self.limits_set;
        Limits {
            max_ticks: set.max_ticks.unwrap_or(base.max_ticks * 5 / 2),
            max_heap_bytes: set.max_heap_bytes.unwrap_or(base.max_heap_bytes * 8),
            max_call_depth: set.max_call_depth.unwrap_or(base.max_call_depth),
        }
    }
}

fn default_policy() -> String {
    "policy.md".into()
}
fn default_tools() -> String {
    "tools.json".into()
}
fn default_scripts() -> String {
    "tools".into()
}
fn default_data() -> String {
    "data".into()
}

impl Manifest {
    /// Read `<dir>/domain.toml`; errors name the file, line and column.
    pub fn read(dir: &std::path::Path) -> Result<Manifest, crate::domain::DomainError> {
        let path = dir.join(MANIFEST_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|error| crate::domain::DomainError::Read {
                path: path.clone(),
                error,
            })?;
        toml::from_str(&text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| crate::domain::line_col(&text, s.start))
                .unwrap_or((1, 1));
            crate::domain::DomainError::Syntax {
                path,
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }
}

/// A map whose values are a string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let m = std::collections::BTreeMap::<String, OneOrMany>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            };
            (k, v)
        })
        .collect())
}
