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

/// A headless Chromium for the report tests: `APIGEN_MT_CHROMIUM`, else `chromium`,
/// `chromium-browser` or `google-chrome` on the PATH. Tests that need one print SKIPPED and
/// return when there is none (`.ci/run` installs Debian's `chromium`).
pub fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("APIGEN_MT_CHROMIUM").map(PathBuf::from);
    let found = named.into_iter().chain(
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .filter_map(|name| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(name))
                        .find(|p| p.is_file())
                })
            }),
    );
    let browser = found.into_iter().next();
    if browser.is_none() {
        eprintln!(
            "SKIPPED: no Chromium found (install Debian's chromium or set APIGEN_MT_CHROMIUM)"
        );
    }
    browser
}

/// Chromium's flags for a page opened from disk, headless, with the network off.
fn headless(browser: &Path, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=10000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The DOM of `page` (opened as a file URL with `fragment` after `#`, if any) once its scripts
/// have run.
pub fn dump_dom(browser: &Path, page: &Path, fragment: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(browser, profile.path())
        .arg("--dump-dom")
        .arg(file_url(page, fragment))
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG screenshot of `page` at `width` × `height` into `png`.
pub fn screenshot(
    browser: &Path,
    page: &Path,
    fragment: &str,
    png: &Path,
    (width, height): (u32, u32),
) {
    let profile = tempfile::tempdir().unwrap();
    let status = headless(browser, profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(file_url(page, fragment))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run chromium");
    assert!(status.success(), "chromium screenshot failed: {status:?}");
}

fn file_url(page: &Path, fragment: &str) -> String {
    let path = page.canonicalize().unwrap();
    let mut url = format!("file://{}", path.display());
    if !fragment.is_empty() {
        url.push('#');
        url.push_str(fragment);
    }
    url
}
