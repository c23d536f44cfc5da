#!/usr/bin/env python3
"""Peak memory and time of every hostile domain in tests/hostile/, side by side with the same
command on the unmodified mock domain (the process's usual footprint).

    scripts/hostile.py [--bin target/release/apigen-mt]

For each case: the error it gave, wall time, and the peak resident memory of apigen-mt and its
script host (the larger of the two, as the kernel reports for waited-for children). A case fails
when its peak exceeds the heap limit it runs under plus the baseline's peak, or when it takes more
than two seconds. Exits 1 if any case fails. Needs Python 3.11 (tomllib) and GNU time; builds
nothing.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIME = shutil.which("time", path="/usr/bin:/bin") or sys.exit("needs GNU time (/usr/bin/time; Debian: apt install time)")
REPLAY = (
    '{"name": "get_account", "arguments": {"account_id": "acc_1002"}}\n'
    '{"name": "find_accounts_by_owner", "arguments": {"owner": "Barbara Allen"}}\n'
)


def build(case, into):
    shutil.copytree(ROOT / "domains/mock", into)
    for e in case.get("edit", []):
        path = into / e["file"]
        text = path.read_text()
        assert e["replace"] in text, f'{e["file"]} lacks {e["replace"]!r}'
        path.write_text(text.replace(e["replace"], e["with"], 1))


def run(binary, command, domain, out):
    """Run one command; returns (exit code, stdout, stderr, seconds, peak KiB). The peak is GNU
    time's %M: the larger of apigen-mt's and its reaped children's (the script host's). (Forking
    from Python would count Python's own pages: a child's peak includes what it had before exec.)"""
    args = {
        "replay": ["domain", "replay", str(domain)],
        "check": ["domain", "check", str(domain)],
        "generate": ["domain", "generate", str(domain), "--out", str(out)],
    }[command]
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.monotonic()
        p = subprocess.run(
            [TIME, "-o", peak.name, "-f", "%M", binary, *args],
            input=REPLAY if command == "replay" else "",
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        kib = int(peak.read().strip().splitlines()[-1])
    stderr = "\n".join(l for l in p.stderr.splitlines() if not l.startswith("Command exited"))
    return p.returncode, p.stdout, stderr, seconds, kib


def limit_of(domain, command):
    manifest = tomllib.loads((domain / "domain.toml").read_text())
    if command == "generate":
        limits = manifest.get("generator", {}).get("limits", {})
        return limits.get("max_heap_bytes", 8 * 256 << 20)
    return manifest.get("limits", {}).get("max_heap_bytes", 256 << 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target/release/apigen-mt"))
    a = ap.parse_args()
    failed = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = {}
        for command in ("replay", "check", "generate"):
            d = tmp / f"baseline-{command}"
            build({}, d)
            baseline[command] = run(a.bin, command, d, tmp / f"out-{command}")[4]
        for path in sorted((ROOT / "tests/hostile").glob("*.toml")):
            case = tomllib.loads(path.read_text())
            d = tmp / path.stem
            build(case, d)
            command = case["command"]
            code, stdout, stderr, seconds, peak = run(a.bin, command, d, tmp / f"out-{path.stem}")
            if command == "replay":
                said = json.loads(stdout.splitlines()[0])["observation"] if stdout else ""
            else:
                said = next(
                    (l for l in stderr.splitlines() if case["expect"] in l),
                    stderr.strip().splitlines()[-1] if stderr.strip() else "",
                )
            said = said.replace(str(tmp) + "/", "")
            limit_kib = limit_of(d, command) // 1024
            bound = limit_kib + baseline[command]
            ok = case["expect"] in (stdout + stderr) and peak <= bound and seconds <= 2.0
            failed += not ok
            rows.append(
                {
                    "case": path.stem,
                    "ok": ok,
                    "seconds": round(seconds, 2),
                    "peak_mib": round(peak / 1024, 1),
                    "bound_mib": round(bound / 1024, 1),
                    "said": said[:160],
                }
            )
        print(
            json.dumps(
                {"baseline_peak_mib": {k: round(v / 1024, 1) for k, v in baseline.items()}}
            )
        )
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
