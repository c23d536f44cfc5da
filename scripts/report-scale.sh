#!/usr/bin/env bash
# How a report of a large run opens: copies a run directory's records into a synthetic run of N
# conversations (each trajectory repeated under new ids, summary counts scaled to match), writes
# its report, and opens it in headless Chromium with the network off. Prints the page's size,
# the time `report` took, the script's own render time (performance.now() when the page is
# drawn) and the wall time of the whole browser run (start-up included).
#
#   scripts/report-scale.sh RUN [N] [OUT]
#
# RUN: a run directory with trajectories (e.g. a `generate` run); N: conversations (10000);
# OUT: where the synthetic run goes (a temporary folder). Needs a release build, python3 and
# chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/report-scale.sh RUN [N] [OUT]}
n=${2:-10000}
out=${3:-$(mktemp -d)/synthetic}
bin=target/release/apigen-mt
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) ||
    { echo "no chromium found" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
python3 - "$run" "$out" "$n" <<'EOF'
import json, os, shutil, sys
run, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for f in ["config.toml", "rollouts.toml", "items.jsonl", "blueprints.jsonl", "rejected.jsonl"]:
    if os.path.exists(os.path.join(run, f)):
        shutil.copy(os.path.join(run, f), os.path.join(out, f))
src = [json.loads(l) for l in open(os.path.join(run, "trajectories.jsonl"))]
if not src:
    sys.exit(f"{run}: no trajectories to copy")
with open(os.path.join(out, "trajectories.jsonl"), "w") as f:
    for i in range(n):
        t = dict(src[i % len(src)])
        t["trial"] = i // len(src)
        t["id"] = f"{t['blueprint_id']}#{t['trial']}"
        f.write(json.dumps(t) + "\n")
s = json.load(open(os.path.join(run, "summary.json")))
r = s.get("rollouts", {})
scale = n / len(src)
for k in ["rollouts", "verified", "kept", "filtered"]:
    if k in r:
        r[k] = round(r[k] * scale)
for group in ["failures", "faults", "not_kept"]:
    for k in r.get(group, {}):
        r[group][k] = round(r[group][k] * scale)
json.dump(s, open(os.path.join(out, "summary.json"), "w"))
EOF
start=$(date +%s.%N)
"$bin" report "$out" --out "$out/report.html"
end=$(date +%s.%N)
profile=$(mktemp -d)
bstart=$(date +%s.%N)
dom=$("$browser" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --proxy-server=127.0.0.1:9 --user-data-dir="$profile" --dump-dom "file://$(realpath "$out/report.html")" 2>/dev/null)
bend=$(date +%s.%N)
rm -rf "$profile"
render=$(grep -o 'data-render-ms="[0-9]*"' <<<"$dom" | grep -o '[0-9]*' || echo "?")
rows=$(grep -o 'class="row"' <<<"$dom" | wc -l)
python3 - "$out/report.html" "$start" "$end" "$bstart" "$bend" "$render" "$rows" "$n" <<'EOF'
import json, os, sys
page, s, e, bs, be, render, rows, n = sys.argv[1:]
print(json.dumps({
    "conversations": int(n),
    "page_mb": round(os.path.getsize(page) / 1e6, 1),
    "report_s": round(float(e) - float(s), 2),
    "render_ms": int(render) if render.isdigit() else None,
    "browser_wall_s": round(float(be) - float(bs), 2),
    "rows_drawn": int(rows),
}))
EOF
