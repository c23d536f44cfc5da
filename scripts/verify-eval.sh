#!/usr/bin/env bash
# Check an eval run's results.json against the per-trial rewards it wrote, independently of the
# binary: per_task must list each task's trial rewards from RUN/trajectories.jsonl (in trial
# order), pass_k[k] must be the mean over tasks of C(c,k)/C(n,k) (tau-bench's pass^k, c
# successes in n trials), and average_reward the mean of all rewards. Prints the recomputed
# table; exits 1 on any disagreement.
# Usage: scripts/verify-eval.sh RUN
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 RUN" >&2
  exit 2
fi
python3 - "$1" <<'PY'
import json, math, sys
run = sys.argv[1]
trials = {}
with open(f"{run}/trajectories.jsonl") as f:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            t = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"{run}/trajectories.jsonl:{n}: not JSON (a torn last line is dropped on resume)")
        trials.setdefault(t["blueprint_id"], {})[t["trial"]] = float(t["reward"])
with open(f"{run}/results.json") as f:
    results = json.load(f)

problems = []
per_task = {tid: [r for _, r in sorted(ts.items())] for tid, ts in trials.items()}
if {k: [float(x) for x in v] for k, v in results["per_task"].items()} != per_task:
    problems.append(f"per_task differs: results.json {results['per_task']} vs trajectories {per_task}")
n = min(len(v) for v in per_task.values())
for k in range(1, n + 1):
    want = sum(math.comb(int(sum(v)), k) / math.comb(len(v), k) for v in per_task.values()) / len(per_task)
    got = results["pass_k"].get(str(k))
    ok = got is not None and abs(got - want) < 1e-9
    print(f"pass^{k}: results.json {got}, recomputed {want:.6f} {'ok' if ok else 'DIFFERS'}")
    if not ok:
        problems.append(f"pass^{k}")
avg = sum(sum(v) for v in per_task.values()) / sum(len(v) for v in per_task.values())
ok = abs(results["average_reward"] - avg) < 1e-9
print(f"average reward: results.json {results['average_reward']}, recomputed {avg:.6f} {'ok' if ok else 'DIFFERS'}")
if not ok:
    problems.append("average_reward")
for tid, v in per_task.items():
    print(f"  task {tid}: rewards {v}")
if problems:
    sys.exit("verify-eval: " + "; ".join(problems))
print(f"verify-eval: {len(per_task)} tasks x {n} trials agree")
PY
