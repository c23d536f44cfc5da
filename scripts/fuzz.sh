#!/usr/bin/env bash
# Fuzz every reader of model output, user files and journals (src/fuzz.rs) for a while each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 seconds, every target)
#
# Seeds: tests/fuzz/<target>/. Inputs that panicked land in target/fuzz-findings/ with their
# messages. Prints one JSON line per target and a total; exits 1 when anything panicked.
# Needs only a stable Rust toolchain (the loop is the project's own, not cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
cargo build --release --quiet --example fuzz
exec target/release/examples/fuzz --seconds "$seconds" "$@"
