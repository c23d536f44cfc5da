#!/usr/bin/env bash
# One prepared check of a CUDA build on a GPU machine with no network, under 8 minutes on one GPU:
# what the machine has, greedy agreement with llama.cpp and batch invariance on the 0.5B,
# `bench` of the 0.5B and 1.5B at batch 1, 8, 64 and 256, and a small `generate` on mock.
#
#   scripts/gpu-check.sh [OUT]
#
# Brings nothing from the network: the binary ($APIGEN_MT_BIN, default the first of
# target/cuda-sm90, target/cuda-sm80 and target/release), its CUDA libraries
# ($APIGEN_MT_CUDA_LIB, default ~/.cache/apigen-mt/cuda-13.0/tree/nvidia/cu13/lib, else the
# nvidia/cu13/lib of python3's NVIDIA wheels, as a PyTorch install has them; put on
# LD_LIBRARY_PATH), the models ($APIGEN_MT_MODELS) and llama.cpp's reference outputs
# ($APIGEN_MT_SHARED/inference, default ../shared) must be there. DEVICE (default cuda) picks the
# device: DEVICE=cpu runs the same steps on a CPU build, for trying the script itself (with
# BATCHES=1,2: the batch sizes of the bench step, default 1,8,64,256). Needs
# python3 for the JSON. Writes OUT/gpu-check.json (default OUT: gpu-check) and one log per step;
# a step that fails is recorded as failed and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
device=${DEVICE:-cuda}
bin=${APIGEN_MT_BIN:-}
if [ -z "$bin" ]; then
    for b in target/cuda-sm90/release/apigen-mt target/cuda-sm80/release/apigen-mt target/release/apigen-mt; do
        [ -x "$b" ] && { bin=$b; break; }
    done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "gpu-check: no apigen-mt binary (APIGEN_MT_BIN)" >&2; exit 2; }
lib=${APIGEN_MT_CUDA_LIB:-$HOME/.cache/apigen-mt/cuda-13.0/tree/nvidia/cu13/lib}
if [ ! -d "$lib" ] && command -v python3 >/dev/null; then
    lib=$(python3 -c 'import site, os
for d in site.getsitepackages():
    p = os.path.join(d, "nvidia", "cu13", "lib")
    if os.path.isdir(p):
        print(p); break' 2>/dev/null)
fi
[ -n "$lib" ] && [ -d "$lib" ] && export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# DEVICE=cpu TENSOR_ATTENTION=1 tries the GPU's attention path on the CPU.
extra=()
[ -n "${TENSOR_ATTENTION:-}" ] && extra=(--tensor-attention)
shared=${APIGEN_MT_SHARED:-../shared}
small=qwen2.5-coder-0.5b
large=qwen2.5-coder-1.5b
say() { echo "gpu-check: $*" >&2; }
steps=()
record() { steps+=("$(printf '{"step": "%s", "rc": %s, "seconds": %s}' "$1" "$2" "$3")"); }
step() {
    local name=$1 limit=$2
    shift 2
    say "$name"
    local start rc
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.out" 2>"$out/$name.log"
    rc=$?
    record "$name" "$rc" "$(( $(date +%s) - start ))"
    [ "$rc" = 0 ] || say "$name failed ($rc): $(tail -c 300 "$out/$name.log")"
    return "$rc"
}

# 1. What the machine has, cheaply, before anything long.
{
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "no nvidia-smi"
    echo "== driver libraries"; ldconfig -p 2>/dev/null | grep -E "libcuda\.so|libnvidia-ml" || echo "no libcuda in ldconfig"
    echo "== CUDA libraries"; echo "${lib:-none found}"
    echo "== binary's missing libraries"; ldd "$bin" 2>&1 | grep "not found" || echo "none"
    echo "== tools"; for t in python3 cargo nvcc; do printf '%s: %s\n' "$t" "$(command -v $t || echo absent)"; done
    echo "== cpus"; nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt" >&2
command -v python3 >/dev/null || { say "python3 is needed for the JSON"; exit 2; }

# 2. Greedy agreement with llama.cpp (first 16 tokens of each reference prompt, all in one
# batch) and batch invariance (each prompt alone gives the batch's tokens).
ref=$shared/inference/qwen2.5-coder-0.5b-q4_k_m.json
if [ -f "$ref" ]; then
    python3 -c 'import json,sys; print(json.dumps([c["prompt"] for c in json.load(open(sys.argv[1]))["continuations"]]))' "$ref" >"$out/prompts.json"
    step agreement 120 "$bin" models complete "$small" --batch --max-tokens 16 --ignore-eos \
        --device "$device" "${extra[@]}" <"$out/prompts.json"
    python3 -c 'import json,sys; [print(json.dumps(p)) for p in json.load(open(sys.argv[1]))]' \
        "$out/prompts.json" >"$out/alone.jsonl"
    : >"$out/alone.out"
    start=$(date +%s); rc=0
    while IFS= read -r p; do
        printf '%s' "$p" | python3 -c 'import json,sys; sys.stdout.write(json.loads(sys.stdin.read()))' |
            timeout 60 "$bin" models complete "$small" --max-tokens 16 --ignore-eos --device "$device" "${extra[@]}" \
            >>"$out/alone.out" 2>>"$out/alone.log" || rc=$?
        echo >>"$out/alone.out"
    done <"$out/alone.jsonl"
    record alone "$rc" "$(( $(date +%s) - start ))"
else
    say "no $ref: agreement and batch invariance skipped"
fi

# 3. Speed: aggregate decode per batch size, both models.
for m in "$small" "$large"; do
    step "bench-$m" 150 "$bin" bench "$m" --batch "${BATCHES:-1,8,64,256}" --runs 1 --gen-tokens 64 \
        --prefill-tokens 256 --device "$device" "${extra[@]}"
done

# 4. The pipeline end to end: a small generate on the mock domain.
rm -rf "$out/generate"
step generate 150 "$bin" generate --domain domains/mock --count 2 --trials 1 --proposer "$small" \
    --reviewers "$small" --agent "$small" --user "$small" --device "$device" "${extra[@]}" --out "$out/generate"

# 5. The figures, as JSON.
python3 - "$out" "$ref" "$device" "${steps[@]}" <<'EOF'
import json, os, sys
out, ref, device, *steps = sys.argv[1:]
res = {"device": device, "steps": [json.loads(s) for s in steps]}
with open(os.path.join(out, "machine.txt")) as f:
    res["machine"] = f.read()
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read()
    except OSError:
        return ""
if os.path.exists(ref):
    cases = json.load(open(ref))["continuations"]
    try:
        batch = json.loads(load("agreement.out"))
    except ValueError:
        batch = None
    alone = [json.loads(l) for l in load("alone.out").splitlines() if l.strip().startswith("{")]
    if batch is not None:
        # As the test does: the first 16 tokens, or fewer where llama.cpp stopped sooner.
        agree = sum(1 for c, b in zip(cases, batch)
                    if b["ids"][:min(16, len(c["greedy_ids"]))] == c["greedy_ids"][:16])
        # The test's bar (tests/llm/agreement.rs): 6 of the 8 prompts.
        res["agreement"] = {"prompts": len(cases), "agree_first_16": agree, "passes": agree >= 6}
        if len(alone) == len(batch):
            same = sum(1 for a, b in zip(alone, batch) if a["ids"] == b["ids"])
            res["batch_invariance"] = {"prompts": len(batch), "identical": same}
for name in os.listdir(out):
    if name.startswith("bench-") and name.endswith(".out"):
        try:
            b = json.loads(load(name))
        except ValueError:
            continue
        res.setdefault("bench", {})[name[6:-4]] = b
summary = os.path.join(out, "generate", "summary.json")
if os.path.exists(summary):
    res["generate"] = json.load(open(summary))
json.dump(res, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print(json.dumps({k: res[k] for k in ("agreement", "batch_invariance") if k in res}))
for m, b in res.get("bench", {}).items():
    print(m, [(x.get("batch"), x.get("decode_tok_per_s")) for x in b.get("batched", [])])
EOF
say "figures in $out/gpu-check.json"
