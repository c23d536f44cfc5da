#!/usr/bin/env bash
# Crash safety: `generate` on the mock domain, killed with SIGKILL at KILLS random moments and
# resumed each time, must end with the same files as a run never interrupted: nothing lost,
# nothing written twice.
#
#   scripts/crash-resume.sh [KILLS] [MODEL] [COUNT] [CONCURRENCY] [SEED]
#
# Defaults: 20 kills, smollm2-135m in every role (fast enough for 20 kills in minutes; any
# model tests the same journal), 8 blueprint tasks, concurrency 8, seed 1 (the kill moments'
# seed). Needs a release build and the model
# (scripts/fetch-model.sh MODEL). Prints the figures and exits non-zero on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-20}
model=${2:-smollm2-135m}
count=${3:-8}
concurrency=${4:-8}
RANDOM=${5:-1}
bin=target/release/apigen-mt
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() {
    "$bin" generate --domain domains/mock --count "$count" --proposer "$model" \
        --reviewers "$model,$model,$model" --agent "$model" --user "$model" --trials 2 \
        --concurrency "$concurrency" --out "$1" >/dev/null 2>>"$1.log"
}

start=$(date +%s)
run "$work/whole"
whole=$(( $(date +%s) - start ))
echo "uninterrupted: ${whole} s"

# Kill moments: each a random 1..WHOLE seconds after its (re)start, WHOLE the uninterrupted run's
# length. Units in flight take long at high concurrency (they share the engine), so shorter
# segments would often end before anything commits; these let some commit and some not.
span=$(( whole > 2 ? whole : 2 ))
landed=0
start=$(date +%s)
for k in $(seq 1 "$kills"); do
    run "$work/cut" &
    pid=$!
    sleep $(( 1 + RANDOM % span ))
    if kill -0 "$pid" 2>/dev/null; then
        # SIGKILL the process group member that writes (the binary), not only the subshell.
        pkill -KILL -P "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
        landed=$((landed + 1))
    fi
    wait "$pid" 2>/dev/null || true
    items=$( (cat "$work/cut/items.jsonl" 2>/dev/null || true) | wc -l)
    attempts=$( (cat "$work/cut/trajectories.jsonl" 2>/dev/null || true) | wc -l)
    echo "kill $k: after $items items, $attempts attempts committed"
done
echo "killed $landed times while running; the interrupted series took $(( $(date +%s) - start )) s"

# Ctrl-C: the process says how to resume and exits 130, and the run resumes like the others.
run "$work/cut" &
pid=$!
sleep $(( 1 + RANDOM % span ))
interrupted=no
if kill -0 "$pid" 2>/dev/null; then
    pkill -INT -P "$pid" 2>/dev/null || true
    interrupted=yes
fi
wait "$pid" 2>/dev/null && code=0 || code=$?
if [ "$interrupted" = yes ]; then
    if grep -q "to resume, run the same command again" "$work/cut.log"; then
        echo "Ctrl-C: exit status $code, resume command printed"
    else
        echo "Ctrl-C: no resume message (exit status $code)"
        status_int=1
    fi
fi
run "$work/cut"
echo "the series took $(( $(date +%s) - start )) s in all"

status=${status_int:-0}
scripts/compare-runs.sh "$work/whole" "$work/cut" || status=1
exit $status
