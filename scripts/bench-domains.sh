#!/usr/bin/env bash
# Side-by-side: tau-bench's Python vs apigen-mt on tau-bench's scoring work (reset, replay every
# gold action, hash) for the test tasks of retail (115) and airline (50), same data, same machine.
# Usage: scripts/bench-domains.sh TAU_BENCH_CHECKOUT [SHARED_DIR]
# Both sides print a digest of the per-task gold hashes: equal digests mean identical end states.
set -euo pipefail
cd "$(dirname "$0")/.."
taubench=${1:?usage: scripts/bench-domains.sh TAU_BENCH_CHECKOUT [SHARED_DIR]}
shared=${2:-../shared}
cargo build --release --quiet
for domain in retail airline; do
  tasks="$shared/taubench/$domain/tasks_test.json"
  py=$(python3 scripts/bench-taubench.py "$taubench" "$domain" "$tasks" --repeat 3)
  rs=$(target/release/apigen-mt domain bench "domains/$domain" --db "$shared/taubench/$domain/data" --tasks "$tasks" --repeat 3)
  echo "tau-bench  $py"
  echo "apigen-mt  $rs"
  python3 - "$py" "$rs" <<'PY'
import json, sys
py, rs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
same = "identical" if py["gold_hashes_sha256"] == rs["gold_hashes_sha256"] else "DIFFERENT"
print(f'{py["domain"]}: {py["tasks"]} tasks, loop {py["loop_s"]:.3f}s vs {rs["loop_s"]:.3f}s = {py["loop_s"] / rs["loop_s"]:.1f}x; '
      f'with load {py["loop_s"] + py["load_s"]:.3f}s vs {rs["loop_s"] + rs["load_s"]:.3f}s = '
      f'{(py["loop_s"] + py["load_s"]) / (rs["loop_s"] + rs["load_s"]):.1f}x; end states {same}')
PY
done
