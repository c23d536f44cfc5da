#!/usr/bin/env bash
# Verify a run directory with the binary's own domain tools, independently of the pipeline:
#   - every accepted blueprint (RUN/blueprints.jsonl) replays through `apigen-mt domain replay`
#     without an error observation, and passes `apigen-mt domain check --tasks` (the rules);
#   - every kept conversation (RUN/dataset.jsonl), its tool calls replayed in order, ends in the
#     same database hash as its blueprint's actions.
# Usage: scripts/verify-run.sh RUN DOMAIN_DIR [--db DATA]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 RUN DOMAIN_DIR [--db DATA]" >&2
  exit 2
fi
run=$1 domain=$2
shift 2
bin=${APIGEN_MT_BIN:-target/release/apigen-mt}
[ -x "$bin" ] || { echo "$bin not found: build with cargo build --release" >&2; exit 2; }
[ -f "$run/blueprints.jsonl" ] || { echo "$run/blueprints.jsonl not found" >&2; exit 2; }

echo "== rules and replays of the accepted blueprints (domain check --tasks)"
"$bin" domain check "$domain" "$@" --tasks "$run/blueprints.jsonl"

python3 - "$bin" "$run" "$domain" "$@" <<'PY'
import json, subprocess, sys
bin_, run, domain, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

def replay(actions):
    """Replay actions through `apigen-mt domain replay`; return (observations, final hash)."""
    text = "".join(json.dumps({"name": a["name"], "arguments": a["arguments"]}) + "\n" for a in actions)
    out = subprocess.run([bin_, "domain", "replay", domain, *extra], input=text,
                         capture_output=True, text=True, check=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    return [l["observation"] for l in lines if "observation" in l], lines[-1]["db_hash"]

gold = {}
bad = 0
blueprints = [json.loads(l) for l in open(f"{run}/blueprints.jsonl") if l.strip()]
for b in blueprints:
    obs, h = replay(b["actions"])
    errors = [o for o in obs if o.startswith("Error") or o.startswith("Unknown action")]
    gold[b["id"]] = h
    status = "ok" if not errors else f"ERROR {errors[0][:80]}"
    bad += bool(errors)
    print(f"blueprint {b['id']}: {len(b['actions'])} actions, hash {h[:12]}, {status}")

try:
    kept = [json.loads(l) for l in open(f"{run}/dataset.jsonl") if l.strip()]
except FileNotFoundError:
    kept = []
for k in kept:
    calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
             for m in k["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    _, h = replay(calls)
    want = gold.get(k["blueprint_id"])
    same = h == want
    bad += not same
    print(f"conversation {k['id']}: {len(calls)} tool calls, hash {h[:12]}, "
          f"{'equals' if same else 'DIFFERS from'} blueprint {k['blueprint_id']} ({(want or '?')[:12]})")
print(f"{len(blueprints)} blueprints, {len(kept)} kept conversations, {bad} problems")
sys.exit(1 if bad else 0)
PY
