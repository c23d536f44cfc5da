#!/usr/bin/env bash
# Checks a run's exports the way a trainer reads them (Python for the check only, never at run
# time): every format loads with Hugging Face `datasets.load_dataset("json", ...)`, and every row
# of the training default (`messages`) renders through the model's own chat template, read from
# its GGUF and rendered with jinja2 as `transformers`' `apply_chat_template` does, with every tool
# call's arguments a JSON object equal to the record's.
#
#   scripts/check-exports.sh RUN [MODEL]
#
# RUN: a run directory with a `dataset.jsonl`. MODEL: the profile whose template renders the rows
# (default qwen2.5-coder-1.5b, the default agent). With APIGEN_MT_FROM_TRAJECTORIES=1 the rows
# are instead every trajectory of the run that forms a valid conversation (kept or not), with the
# run domain's tool schemas: a wider sample of real tool calls when few were kept. Installs
# `datasets`, `jinja2` and `gguf` into a virtual environment under the model cache once.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/check-exports.sh RUN [MODEL]}
model=${2:-qwen2.5-coder-1.5b}
bin=target/release/apigen-mt
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 2; }
venv=${APIGEN_MT_PYENV:-${XDG_CACHE_HOME:-$HOME/.cache}/apigen-mt/pyenv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import datasets, jinja2, gguf" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q datasets jinja2 gguf
fi
gguf_path=$("$bin" models show "$model" | python3 -c "import json,sys; print(json.load(sys.stdin)['resolved']['files'][0]['path'] or '')")
[ -n "$gguf_path" ] && [ -f "$gguf_path" ] || { echo "$model is not fetched (scripts/fetch-model.sh $model)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/run"
if [ "${APIGEN_MT_FROM_TRAJECTORIES:-0}" = 1 ]; then
    domain=$(python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['domain']['dir'])" "$run/config.toml")
    "$bin" domain tools "$domain" > "$work/tools.json"
    python3 - "$run/trajectories.jsonl" "$work/tools.json" "$work/run/dataset.jsonl" <<'EOF'
import json, sys
tools = json.load(open(sys.argv[2]))
with open(sys.argv[3], "w") as out:
    for line in open(sys.argv[1]):
        t = json.loads(line)
        out.write(json.dumps({"id": t["id"], "blueprint_id": t["blueprint_id"], "trial": t["trial"],
                              "domain": "", "agent": t["agent"], "user": t["user"],
                              "messages": t["messages"], "tools": tools}) + "\n")
EOF
else
    cp "$run/dataset.jsonl" "$work/run/dataset.jsonl"
fi
# Conversations that break the record's rules (an episode cut inside a call) are not data.
python3 - "$work/run/dataset.jsonl" <<'EOF'
import json, subprocess, sys
path = sys.argv[1]
rows = [l for l in open(path) if l.strip()]
good = []
for l in rows:
    open(path + ".one", "w").write(l)
    r = subprocess.run(["target/release/apigen-mt", "export", path + ".one", "--format", "openai"],
                       capture_output=True)
    if r.returncode == 0:
        good.append(l)
open(path, "w").writelines(good)
print(f"{len(good)} of {len(rows)} records are valid conversations", file=sys.stderr)
EOF
for f in messages openai apigen-mt sharegpt; do
    ext=jsonl; case $f in apigen-mt|sharegpt) ext=json ;; esac
    "$bin" export "$work/run/dataset.jsonl" --format "$f" --out "$work/$f.$ext" 2>/dev/null
done
"$venv/bin/python" - "$work" "$gguf_path" <<'EOF'
import json, os, sys
import datasets, gguf, jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

work, gguf_path = sys.argv[1], sys.argv[2]
datasets.disable_progress_bars()
report = {}
for name in ["messages.jsonl", "openai.jsonl", "apigen-mt.json", "sharegpt.json"]:
    ds = datasets.load_dataset("json", data_files=os.path.join(work, name), split="train")
    report[name] = len(ds)

# The template as transformers renders it: a sandboxed jinja2 environment with trim_blocks and
# lstrip_blocks, `raise_exception`, and a `tojson` that keeps non-ASCII text.
reader = gguf.GGUFReader(gguf_path)
field = reader.fields["tokenizer.chat_template"]
template_text = bytes(field.parts[field.data[0]]).decode("utf-8")
def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
template = env.from_string(template_text)

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

originals = [json.loads(l) for l in open(os.path.join(work, "run", "dataset.jsonl"))]
ds = datasets.load_dataset("json", data_files=os.path.join(work, "messages.jsonl"), split="train")
decoder = json.JSONDecoder()
calls = padded = 0
for row, original in zip(ds, originals):
    if row != strip(row):
        padded += 1
    row = strip(row)
    text = template.render(messages=row["messages"], tools=row["tools"], add_generation_prompt=False)
    want = [json.loads(c["function"]["arguments"]) for m in original["messages"] for c in m.get("tool_calls") or []]
    got, at = [], 0
    while (i := text.find('"arguments": ', at)) >= 0:
        at = i + len('"arguments": ')
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            continue  # the template's own prose (`"arguments": <args-json-object>`)
        got.append(value)
    # What the template renders as arguments must be exactly the calls, in order: a missing,
    # extra or string-encoded one fails here.
    assert all(isinstance(v, dict) for v in got), f"{row['id']}: arguments rendered as a string: {got}"
    assert got == want, f"{row['id']}: rendered {got}, the record has {want}"
    calls += len(want)
report["rendered_rows"] = len(ds)
report["tool_calls_checked"] = calls
report["rows_padded_by_datasets"] = padded
print(json.dumps(report))
EOF
