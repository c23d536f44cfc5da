//! Model profiles (`models/*.toml`) and where their files live.
//!
//! A profile names a checkpoint, its architecture and format, the files it is made of (with
//! sizes, sha256 and sources, which `scripts/fetch-model.sh` reads), its chat template, tool-call
//! format and stop strings. The profiles shipped in `models/` are compiled in; a directory named
//! by `APIGEN_MT_PROFILES` adds to or overrides them. Files are looked up in the model cache
//! (`APIGEN_MT_MODELS`, else `$XDG_CACHE_HOME/apigen-mt/models`, else
//! `~/.cache/apigen-mt/models`, one subdirectory per profile), then in the Hugging Face cache.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::llm::error::{LlmError, Result};

/// Profiles compiled into the binary: (file stem, TOML text).
const BUILTIN: &[(&str, &str)] = &[
    (
        "qwen2.5-coder-0.5b",
        include_str!("../../models/qwen2.5-coder-0.5b.toml"),
    ),
    (
        "qwen2.5-coder-1.5b",
        include_str!("../../models/qwen2.5-coder-1.5b.toml"),
    ),
    (
        "smollm2-135m",
        include_str!("../../models/smollm2-135m.toml"),
    ),
    ("xlam-2-1b", include_str!("../../models/xlam-2-1b.toml")),
    ("xlam-2-3b", include_str!("../../models/xlam-2-3b.toml")),
    ("xlam-2-8b", include_str!("../../models/xlam-2-8b.toml")),
];

/// Checkpoint file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
}

/// A pip package member that is one chunk of a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipPart {
    pub package: String,
    /// Glob of the member inside the wheel.
    pub member: String,
}

/// Hub location of a file or of a whole checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSource {
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<PipPart>,
    /// This file is a safetensors index; the shards it names are part of the checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shards: bool,
}

/// The model roles a profile can be the default for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    /// Phase 1's task writer.
    Proposer,
    /// Phase 1's committee.
    Reviewer,
    /// The tool-calling agent of rollouts and eval.
    Agent,
    /// The simulated user (and its best-of-n judge).
    User,
}

impl ModelRole {
    /// The role as profiles spell it in `default_for`.
    pub fn name(self) -> &'static str {
        match self {
            ModelRole::Proposer => "proposer",
            ModelRole::Reviewer => "reviewer",
            ModelRole::Agent => "agent",
            ModelRole::User => "user",
        }
    }
}

/// A model profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub display_name: String,
    /// `llama`, `qwen2` or `qwen3`.
    pub architecture: String,
    pub format: Format,
    pub license: String,
    /// The default model: used for every role no profile's `default_for` claims.
    #[serde(default)]
    pub default: bool,
    /// Roles this profile is the default for, ahead of the `default` profile (e.g. a larger
    /// model for the agent and the simulated user, whose conversations are the data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_for: Vec<ModelRole>,
    /// `gguf` (the file's `tokenizer.chat_template`), `tokenizer_config` (from
    /// `tokenizer_config.json`) or a file name under `models/templates/`.
    pub chat_template: String,
    /// `hermes`, `xlam` or `llama3-json`.
    pub tool_format: String,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSource>,
    pub files: Vec<FileSpec>,
}

impl Profile {
    /// Parse a profile from TOML text.
    pub fn from_toml(name_hint: &str, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| LlmError::Profile {
            name: name_hint.to_string(),
            detail: e.to_string(),
        })
    }

    /// Every known profile, sorted by name: built-ins, then `APIGEN_MT_PROFILES` overrides.
    pub fn all() -> Result<Vec<Profile>> {
        let mut out: Vec<Profile> = BUILTIN
            .iter()
            .map(|(n, t)| Profile::from_toml(n, t))
            .collect::<Result<_>>()?;
        if let Some(dir) = std::env::var_os("APIGEN_MT_PROFILES") {
            let dir = PathBuf::from(dir);
            let rd = std::fs::read_dir(&dir).map_err(|e| LlmError::io(&dir, e))?;
            for entry in rd {
                let path = entry.map_err(|e| LlmError::io(&dir, e))?.path();
                if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).map_err(|e| LlmError::io(&path, e))?;
                let p = Profile::from_toml(&path.display().to_string(), &text)?;
                out.retain(|q| q.name != p.name);
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The profile called `name`.
    pub fn find(name: &str) -> Result<Profile> {
        let all = Profile::all()?;
        let known: Vec<String> = all.iter().map(|p| p.name.clone()).collect();
        all.into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| LlmError::Profile {
                name: name.to_string(),
                detail: format!("no such profile (known: {})", known.join(", ")),
            })
    }

    /// The default profile for `role`: the one whose `default_for` lists it, else the default.
    pub fn default_for_role(role: ModelRole) -> Result<Profile> {
        default_among(&Profile::all()?, role)
    }

    /// The directory this profile's files are fetched into.
    pub fn cache_dir(&self) -> PathBuf {
        models_dir().join(&self.name)
    }

    /// Where `file` is on disk, if it is anywhere we look.
    pub fn locate(&self, file: &str) -> Option<PathBuf> {
        let p = self.cache_dir().join(file);
        if p.is_file() {
            return Some(p);
        }
        let spec = self.files.iter().find(|f| f.name == file);
        let hub = spec.and_then(|f| f.hub.as_ref()).or(self.hub.as_ref())?;
        let hub_file = spec
            .and_then(|f| f.hub.as_ref())
            .and_then(|h| h.file.as_deref())
            .unwrap_or(file);
        hf_cache_lookup(&hub.repo, hub_file)
    }

    /// The main file to load: the GGUF file, or the directory holding a safetensors checkpoint.
    pub fn model_path(&self) -> Result<PathBuf> {
        let missing = |what: &str| LlmError::Profile {
            name: self.name.clone(),
            detail: format!(
                "{what} not found in {} (run scripts/fetch-model.sh {})",
                self.cache_dir().display(),
                self.name
            ),
        };
        match self.format {
            Format::Gguf => {
                let f = self.files.first().ok_or_else(|| missing("a file"))?;
                self.locate(&f.name).ok_or_else(|| missing(&f.name))
            }
            Format::Safetensors => {
                let cfg = self
                    .locate("config.json")
                    .ok_or_else(|| missing("config.json"))?;
                Ok(cfg.parent().map(Path::to_path_buf).unwrap_or_default())
            }
        }
    }
}

/// The model cache directory.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("APIGEN_MT_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("apigen-mt").join("models")
}

/// Look a file up in the Hugging Face hub cache (`$HF_HOME/hub`, `~/.cache/huggingface/hub`).
fn hf_cache_lookup(repo: &str, file: &str) -> Option<PathBuf> {
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h)
                    .join(".cache")
                    .join("huggingface")
                    .join("hub")
            })
        })?;
    let snapshots = hub
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(file))
        .filter(|p| p.is_file())
        .collect();
    candidates.sort();
    candidates.pop()
}

/// The profile among `all` that is the default for `role`: its one claimant, else the default.
fn default_among(all: &[Profile], role: ModelRole) -> Result<Profile> {
    let claiming: Vec<&Profile> = all
        .iter()
        .filter(|p| p.default_for.contains(&role))
        .collect();
    match claiming.as_slice() {
        [] => the_default(all),
        [p] => Ok((*p).clone()),
        many => Err(LlmError::Profile {
            name: many[1].name.clone(),
            detail: format!(
                "both {} and {} are default_for {}; a role has one default",
                many[0].name,
                many[1].name,
                role.name()
            ),
        }),
    }
}

/// The one profile among `all` with `default = true`.
fn the_default(all: &[Profile]) -> Result<Profile> {
    let defaults: Vec<&Profile> = all.iter().filter(|p| p.default).collect();
    match defaults.as_slice() {
        [p] => Ok((*p).clone()),
        [] => Err(LlmError::Profile {
            name: "default".into(),
            detail: "no profile is marked default".into(),
        }),
        many => Err(LlmError::Profile {
            name: many[1].name.clone(),
            detail: format!(
                "both {} and {} say default = true; one model is the default",
                many[0].name, many[1].name
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_has_one_default() {
        let profile = |name: &str, extra: &str| {
            let text = format!(
                "name = \"{name}\"\ndisplay_name = \"x\"\narchitecture = \"qwen2\"\n\
                 format = \"gguf\"\nlicense = \"x\"\nchat_template = \"gguf\"\n\
                 tool_format = \"hermes\"\n{extra}\n[[files]]\nname = \"m.gguf\"\n"
            );
            Profile::from_toml(name, &text).unwrap()
        };
        let small = profile("small", "default = true");
        let big = profile("big", "default_for = [\"agent\", \"user\"]");
        let all = [small.clone(), big.clone()];
        let pick = |all: &[Profile], r| default_among(all, r).map(|p| p.name);
        assert_eq!(the_default(&all).unwrap().name, "small");
        assert_eq!(pick(&all, ModelRole::Proposer).unwrap(), "small");
        assert_eq!(pick(&all, ModelRole::User).unwrap(), "big");
        let rival = profile("rival", "default_for = [\"user\"]");
        let err = pick(&[small.clone(), big.clone(), rival], ModelRole::User).unwrap_err();
        assert!(err.to_string().contains("default_for user"), "{err}");
        assert!(pick(&[big.clone()], ModelRole::Reviewer).is_err());
        let bad = "name = \"b\"\ndisplay_name = \"x\"\narchitecture = \"qwen2\"\n\
                   format = \"gguf\"\nlicense = \"x\"\nchat_template = \"gguf\"\n\
                   tool_format = \"hermes\"\ndefault_for = [\"critic\"]\nfiles = []\n";
        let err = Profile::from_toml("b", bad).unwrap_err().to_string();
        assert!(err.contains("critic"), "{err}");
    }

    #[test]
    fn builtin_profiles_parse_and_one_is_default() {
        let all = Profile::all().unwrap();
        assert!(all.len() >= 6);
        let defaults: Vec<_> = all
            .iter()
            .filter(|p| p.default)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(defaults, ["qwen2.5-coder-0.5b"]);
        let by_role = |r| Profile::default_for_role(r).unwrap().name;
        assert_eq!(by_role(ModelRole::Proposer), "qwen2.5-coder-1.5b");
        assert_eq!(by_role(ModelRole::Reviewer), "qwen2.5-coder-0.5b");
        assert_eq!(by_role(ModelRole::Agent), "qwen2.5-coder-1.5b");
        assert_eq!(by_role(ModelRole::User), "qwen2.5-coder-1.5b");
        for p in &all {
            assert!(!p.files.is_empty(), "{}", p.name);
            assert!(
                ["llama", "qwen2", "qwen3"].contains(&p.architecture.as_str()),
                "{}",
                p.name
            );
            assert!(
                ["hermes", "xlam", "llama3-json"].contains(&p.tool_format.as_str()),
                "{}",
                p.name
            );
            for f in &p.files {
                if let Some(h) = &f.sha256 {
                    assert_eq!(h.len(), 64, "{}", p.name);
                }
            }
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Profile::from_toml("x", "name='x'\nbogus=1").unwrap_err();
        assert!(err.to_string().contains("x"));
    }
}
