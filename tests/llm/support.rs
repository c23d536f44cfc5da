//! Finding the real models and the shared llama.cpp reference outputs; skipping visibly when
//! they are absent.

use std::io::Write;
use std::path::PathBuf;

use apigen_mt::llm::profile::Profile;

/// Print a skip notice that the test harness does not swallow.
pub fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// The shared reference directory (`APIGEN_MT_SHARED`, else `../shared` beside the repository).
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("APIGEN_MT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("shared")
        });
    dir.is_dir().then_some(dir)
}

/// llama.cpp's reference output for a model (`shared/inference/FILE`), parsed.
pub fn reference(file: &str) -> Option<serde_json::Value> {
    let Some(dir) = shared_dir() else {
        skip(&format!(
            "no shared directory, so no llama.cpp reference {file}"
        ));
        return None;
    };
    let path = dir.join("inference").join(file);
    let Ok(text) = std::fs::read_to_string(&path) else {
        skip(&format!("{} is missing", path.display()));
        return None;
    };
    Some(serde_json::from_str(&text).expect("reference file is valid JSON"))
}

/// The main file of a fetched profile, or `None` (with a notice) when not fetched.
pub fn model_file(profile: &str) -> Option<PathBuf> {
    let p = Profile::find(profile).expect("built-in profile");
    match p.model_path() {
        Ok(path) => Some(path),
        Err(e) => {
            skip(&format!("{profile}: {e}"));
            None
        }
    }
}

/// The two real models with llama.cpp references: (profile, reference file).
pub const REFERENCED: &[(&str, &str)] = &[
    ("smollm2-135m", "smollm2-135m-q4_1.json"),
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-q4_k_m.json"),
];

/// Serializes tests that run real models: on a small machine, two at once fight over the cores
/// and both crawl.
pub fn model_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
