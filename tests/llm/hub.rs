//! `apigen-mt models fetch` against a local server laid out like the Hugging Face Hub's
//! `resolve` URLs: the file lands in the standard hub cache, a cut download resumes, and a file
//! whose sha256 differs from the profile's is refused.

use crate::util;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub lookalike serving `body` at `/org/tiny/resolve/main/tiny.gguf`: byte ranges as the hub
/// answers them (206, `Content-Range`, `ETag`, `x-repo-commit`). The first full download is cut
/// off half way, as a dropped connection would. Returns the base URL and the ranges asked for.
fn serve(body: Vec<u8>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        let mut cut_one = false;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h
                    .strip_prefix("range:")
                    .or_else(|| h.strip_prefix("Range:"))
                {
                    range = Some(v.trim().to_owned());
                }
            }
            if path != "/org/tiny/resolve/main/tiny.gguf" {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let range = range.unwrap_or_else(|| "bytes=0-".into());
            seen.lock().unwrap().push(range.clone());
            let spec = range.trim_start_matches("bytes=");
            let (a, b) = spec.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                body.len() - 1
            } else {
                b.parse().unwrap()
            };
            let part = &body[a..=b];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\nETag: \"tinyetag\"\r\nx-repo-commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                part.len(),
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if part.len() > 1 && a == 0 && !cut_one {
                cut_one = true;
                let _ = stream.write_all(&part[..part.len() / 2]);
                continue; // dropped half way
            }
            let _ = stream.write_all(part);
        }
    });
    (url, ranges)
}

fn profile(dir: &Path, size: usize, sha256: &str) {
    std::fs::write(
        dir.join("tiny.toml"),
        format!(
            "name = \"tiny\"\ndisplay_name = \"tiny\"\narchitecture = \"llama\"\nformat = \"gguf\"\nlicense = \"MIT\"\n\
             chat_template = \"gguf\"\ntool_format = \"hermes\"\n\n[[files]]\nname = \"tiny.gguf\"\nsize = {size}\n\
             sha256 = \"{sha256}\"\nhub = {{ repo = \"org/tiny\", file = \"tiny.gguf\" }}\n"
        ),
    )
    .unwrap();
}

fn fetch(url: &str, home: &Path, profiles: &Path) -> (bool, String) {
    let out = util::bin()
        .args(["models", "fetch", "tiny"])
        .env("HF_ENDPOINT", url)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env("APIGEN_MT_PROFILES", profiles)
        .env("APIGEN_MT_MODELS", home.join("apigen-models"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn models_fetch_downloads_into_the_hub_cache_resumes_and_checks_sha256() {
    let body: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sha: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (url, ranges) = serve(body.clone());
    let home = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    profile(profiles.path(), body.len(), &sha);

    let (ok, err) = fetch(&url, home.path(), profiles.path());
    assert!(ok, "{err}");
    let file = home.path().join(format!(
        "hub/models--org--tiny/snapshots/{COMMIT}/tiny.gguf"
    ));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        body,
        "the standard hub cache layout"
    );
    assert!(err.contains("size and sha256 checked"), "{err}");
    let asked = ranges.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|r| r.starts_with("bytes=") && r != "bytes=0-0" && r != "bytes=0-"),
        "the cut download resumed from where it stopped: {asked:?}"
    );

    // The profile now finds its file there.
    let out = util::bin()
        .args(["models", "show", "tiny"])
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .env("APIGEN_MT_PROFILES", profiles.path())
        .env("APIGEN_MT_MODELS", home.path().join("apigen-models"))
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        Path::new(shown["resolved"]["files"][0]["path"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        file.canonicalize().unwrap()
    );

    // A file that is not the one the profile pins is refused.
    let other = tempfile::tempdir().unwrap();
    profile(profiles.path(), body.len(), &"0".repeat(64));
    let (ok, err) = fetch(&url, other.path(), profiles.path());
    assert!(!ok);
    assert!(
        err.contains("sha256") && err.contains("the profile pins"),
        "{err}"
    );
}
