#!/usr/bin/env bash
# The main job at several concurrencies, one after another: wall time of each phase, phase-2
# attempts and kept conversations per hour, and whether the files agree.
#
#   scripts/generate-throughput.sh OUT [DOMAIN] [COUNT] [CONCURRENCY...]
#
# Defaults: domains/retail, 10 tasks, concurrency 1 then 16, default models. Run directories
# are kept under OUT (OUT/c1, OUT/c16, ...) so their data can be read afterwards. Needs a
# release build and the default models (see the README). GENERATE_ARGS adds flags to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/generate-throughput.sh OUT [DOMAIN] [COUNT] [CONCURRENCY...]}
domain=${2:-domains/retail}
count=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(1 16)
bin=target/release/apigen-mt
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
mkdir -p "$out"

for n in "${levels[@]}"; do
    dir="$out/c$n"
    start=$(date +%s)
    # shellcheck disable=SC2086 # GENERATE_ARGS: extra flags, e.g. "--threads 2"
    "$bin" generate --domain "$domain" --count "$count" --concurrency "$n" --out "$dir" ${GENERATE_ARGS:-} \
        >"$dir.json" 2>"$dir.log"
    end=$(date +%s)
    python3 - "$dir" "$start" "$end" "$n" <<'EOF'
import json, os, sys
d, start, end, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Phase 2 starts when it pins its settings.
mid = int(os.path.getmtime(os.path.join(d, "rollouts.toml")))
s = json.load(open(os.path.join(d, "summary.json")))
r = s.get("rollouts", {})
p1, p2 = mid - start, end - mid
attempts, kept = r.get("rollouts", 0), r.get("kept", 0)
print(f"concurrency {n}: wall {end - start} s; phase 1 {p1} s, {s.get('items', 0)} items, "
      f"{s.get('accepted', 0)} accepted, {s['funnel']['proposed']} proposals "
      f"({3600 * s['funnel']['proposed'] / max(p1, 1):.1f} proposals/h); "
      f"phase 2 {p2} s, {attempts} attempts ({3600 * attempts / max(p2, 1):.1f}/h), "
      f"{r.get('verified', 0)} verified, {kept} kept ({3600 * kept / max(end - start, 1):.2f} kept/h overall)")
EOF
done

# The files must not depend on the concurrency (timings aside).
first="$out/c${levels[0]}"
for n in "${levels[@]:1}"; do
    echo "c$n against c${levels[0]}:"
    scripts/compare-runs.sh "$first" "$out/c$n" || true
done
