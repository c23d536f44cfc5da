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
strip() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    for k in ("seconds", "elapsed"):
        v.pop(k, None)
    print(json.dumps(v, sort_keys=True))
' "$1"; }
status=0
for f in blueprints.jsonl rejected.jsonl items.jsonl rollouts/trajectories.jsonl rollouts/dataset.jsonl; do
    a="$work/c$low/$f"
    b="$work/c$high/$f"
    if [ ! -f "$a" ] && [ ! -f "$b" ]; then
        echo "$f: absent in both"
        continue
    fi
    if cmp -s <(strip "$a") <(strip "$b"); then
        echo "$f: identical ($(wc -l <"$a") lines)"
    else
        echo "$f: DIFFERS"
        diff <(strip "$a") <(strip "$b") | head -5
        status=1
    fi
done
exit $status
