#!/usr/bin/env bash
# Whether two run directories hold the same records, line for line, timings (`seconds`) aside.
#
#   scripts/compare-runs.sh A B [FILE...]
#
# FILE defaults to every journal of a run (blueprints, rejections, items, trajectories,
# dataset). Prints one line per file; exits non-zero if any differs.
set -euo pipefail
a=${1:?usage: scripts/compare-runs.sh A B [FILE...]}
b=${2:?usage: scripts/compare-runs.sh A B [FILE...]}
shift 2
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(blueprints.jsonl rejected.jsonl items.jsonl trajectories.jsonl dataset.jsonl)
strip() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    v.pop("seconds", None)
    print(json.dumps(v, sort_keys=True))
' "$1"; }
status=0
for f in "${files[@]}"; do
    if [ ! -f "$a/$f" ] && [ ! -f "$b/$f" ]; then
        echo "$f: absent in both"
    elif [ ! -f "$a/$f" ] || [ ! -f "$b/$f" ]; then
        echo "$f: in one run only"
        status=1
    elif cmp -s <(strip "$a/$f") <(strip "$b/$f"); then
        echo "$f: identical ($(wc -l <"$a/$f") lines)"
    else
        echo "$f: DIFFERS"
        diff <(strip "$a/$f") <(strip "$b/$f") | head -5 || true
        status=1
    fi
done
exit $status
