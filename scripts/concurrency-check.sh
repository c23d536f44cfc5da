#!/usr/bin/env bash
# Phase 1 and phase 2 on the mock domain with a real model at two concurrencies: the files must
# be the same (timings aside). Prints the wall time of each run.
#
#   scripts/concurrency-check.sh [MODEL] [COUNT] [LOW] [HIGH]
#
# MODEL (default qwen2.5-coder-0.5b) plays every role; COUNT blueprint tasks (default 6); LOW and
# HIGH are the two --concurrency values (default 1 and 4). Needs a release build and the model
# (scripts/fetch-model.sh MODEL). Exits non-zero if any file differs.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-qwen2.5-coder-0.5b}
count=${2:-6}
low=${3:-1}
high=${4:-4}
bin=target/release/apigen-mt
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for n in "$low" "$high"; do
    start=$(date +%s)
    "$bin" blueprints --domain domains/mock --count "$count" --proposer "$model" \
        --reviewers "$model,$model,$model" --concurrency "$n" --out "$work/c$n" >/dev/null 2>"$work/c$n.log"
    mid=$(date +%s)
    "$bin" rollouts --blueprints "$work/c$n/blueprints.jsonl" --agent "$model" --user "$model" \
        --trials 2 --concurrency "$n" --out "$work/c$n/rollouts" >/dev/null 2>>"$work/c$n.log"
    end=$(date +%s)
    echo "concurrency $n: blueprints $((mid - start)) s, rollouts $((end - mid)) s"
done

# Timings are the only lines allowed to differ.
scripts/compare-runs.sh "$work/c$low" "$work/c$high" blueprints.jsonl rejected.jsonl items.jsonl \
    rollouts/trajectories.jsonl rollouts/dataset.jsonl
