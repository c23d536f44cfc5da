//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the checkout (tau-bench data, llama.cpp references), if present.
/// Tests that need it call this and return early, printing why, when it is absent.
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("APIGEN_MT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    if dir.join("taubench").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (set APIGEN_MT_SHARED to the shared data folder)",
            dir.display()
        );
        None
    }
}

/// The built binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apigen-mt"))
}

/// Run the binary with `args`, feeding `stdin`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = bin()
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apigen-mt");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for apigen-mt");
    writer.join().expect("stdin writer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copy a folder tree (for tests that break a domain on purpose).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A scratch copy of `domains/mock`.
pub fn mock_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("domains/mock"), dir.path());
    dir
}

/// A scratch copy of `domains/mock` with `from` replaced by `to` in `file` (which must contain it).
pub fn mock_with(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = mock_copy();
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    dir
}

/// A model whose reply is a function of the request alone, never of the order of calls, so that
/// units running at once each get their own (a scripted backend shared by them would hand one
/// unit's reply to another). The reply text goes through the scripted backend, which parses it
/// as the model's output would be.
pub struct Pure<F>(pub F);

impl<F> apigen_mt::llm::Backend for Pure<F>
where
    F: Fn(&apigen_mt::llm::ChatRequest) -> String + Send + Sync,
{
    fn name(&self) -> String {
        "pure".into()
    }

    fn reply(
        &self,
        conversation: &mut apigen_mt::llm::Conversation,
        request: &apigen_mt::llm::ChatRequest,
    ) -> apigen_mt::llm::Result<apigen_mt::llm::ChatReply> {
        let reply = (self.0)(request);
        apigen_mt::llm::scripted::ScriptedBackend::new(
            apigen_mt::llm::tools::ToolFormat::Hermes,
            [reply],
        )
        .reply(conversation, request)
    }
}

/// A request's messages, concatenated (for replies keyed by what they contain).
pub fn request_text(request: &apigen_mt::llm::ChatRequest) -> String {
    request
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect()
}

/// The assistant messages a request holds (the turn a reply is for).
pub fn assistant_turns(request: &apigen_mt::llm::ChatRequest) -> usize {
    request
        .messages
        .iter()
        .filter(|m| m.role == "assistant")
        .count()
}
