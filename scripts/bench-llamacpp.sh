#!/usr/bin/env bash
# Side-by-side decode speed: apigen-mt and llama.cpp on the same GGUF file, one thread (or more),
# runs interleaved so both see the same machine load. Prints each run and a JSON summary.
#
#   scripts/bench-llamacpp.sh [PROFILE] [RUNS] [GEN_TOKENS]     (default: qwen2.5-coder-0.5b 5 128)
#   APIGEN_MT_BENCH_THREADS=2 runs both on two threads (default one).
#
# llama.cpp comes from the npm package node-llama-cpp (its prebuilt CPU binary), installed once
# into $APIGEN_MT_BENCH_DIR (default: ~/.cache/apigen-mt/llamacpp). Builds apigen-mt in release.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${1:-qwen2.5-coder-0.5b}"
runs="${2:-5}"
gen="${3:-128}"
threads="${APIGEN_MT_BENCH_THREADS:-1}"
bench_dir="${APIGEN_MT_BENCH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/apigen-mt/llamacpp}"
version="3.22.1"

if [ ! -d "$bench_dir/node_modules/node-llama-cpp" ]; then
  mkdir -p "$bench_dir"
  (cd "$bench_dir" && npm init -y >/dev/null &&
    NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --silent --omit=optional \
      "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version" >&2)
fi
cp "$here/scripts/bench-llamacpp.mjs" "$bench_dir/"

(cd "$here" && cargo build --release --quiet)
bin="$here/target/release/apigen-mt"
model="$("$bin" models show "$profile" | python3 -c 'import json,sys; print(json.load(sys.stdin)["resolved"]["files"][0]["path"] or "")')"
if [ -z "$model" ]; then
  echo "bench-llamacpp: $profile is not fetched (scripts/fetch-model.sh $profile)" >&2
  exit 1
fi

ours=()
theirs=()
for i in $(seq 1 "$runs"); do
  o="$("$bin" bench "$profile" --threads "$threads" --runs 1 --gen-tokens "$gen" 2>/dev/null)"
  t="$(node "$bench_dir/bench-llamacpp.mjs" "$model" "$threads" "$gen" 2>/dev/null | tail -1)"
  ours+=("$(echo "$o" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["decode"]["tok_per_s"], d["prefill"]["tok_per_s"], d["decode"]["prompt_ms"])')")
  theirs+=("$(echo "$t" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["decode_tok_per_s"], d["prompt_ms"])')")
  echo "run $i: apigen-mt ${ours[-1]} | llama.cpp ${theirs[-1]}  (decode tok/s, [prefill tok/s,] 17-token prompt ms)" >&2
done

python3 - "$profile" "$threads" "$gen" "${ours[*]}" "${theirs[*]}" <<'PY'
import json, statistics, sys
profile, threads, gen, ours, theirs = sys.argv[1:]
o = [tuple(map(float, row)) for row in zip(*[iter(ours.split())] * 3)]
t = [tuple(map(float, row)) for row in zip(*[iter(theirs.split())] * 2)]
med = lambda rows, i: statistics.median(r[i] for r in rows)
print(json.dumps({
    "profile": profile, "threads": int(threads), "gen_tokens": int(gen), "runs": len(t),
    "apigen_mt": {"decode_tok_per_s": med(o, 0), "prefill_256_tok_per_s": med(o, 1), "prompt_17_ms": med(o, 2)},
    "llama_cpp": {"decode_tok_per_s": med(t, 0), "prompt_17_ms": med(t, 1)},
    "decode_ratio": round(med(o, 0) / med(t, 0), 3),
}, indent=2))
PY
