#!/usr/bin/env python3
"""Peak memory and time of every hostile domain in tests/hostile/, side by side with the same
command on the unmodified mock domain (the process's usual footprint).

    scripts/hostile.py [--bin target/release/apigen-mt]

For each case: the error it gave, wall time, and the peak resident memory of apigen-mt and its
script host (the larger of the two, as the kernel reports for waited-for children). A case fails
when its peak exceeds the heap limit it runs under plus the baseline's peak, or when it takes more
than two seconds. Exits 1 if any case fails. Needs Python 3.11 (tomllib); builds nothing.
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
    args = {
        "replay": ["domain", "replay", str(domain)],
        "check": ["domain", "check", str(domain)],
        "generate": ["domain", "generate", str(domain), "--out", str(out)],
    }[command]
    started = time.monotonic()
    p = subprocess.Popen(
        [binary, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = p.communicate(REPLAY if command == "replay" else "")
    # communicate() has reaped the child; its rusage came with the wait. Read it per child.
    seconds = time.monotonic() - started
    return p.returncode, stdout, stderr, seconds


def peak_kib(binary, command, domain, out):
    """Run once more under wait4 to get this run's own peak RSS (self and reaped children)."""
    args = {
        "replay": ["domain", "replay", str(domain)],
        "check": ["domain", "check", str(domain)],
        "generate": ["domain", "generate", str(domain), "--out", str(out)],
    }[command]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(r, 0)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.execv(binary, [binary, *args])
    os.close(r)
    os.write(w, (REPLAY if command == "replay" else "").encode())
    os.close(w)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_maxrss


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
            baseline[command] = peak_kib(a.bin, command, d, tmp / f"out-{command}")
        for path in sorted((ROOT / "tests/hostile").glob("*.toml")):
            case = tomllib.loads(path.read_text())
            d = tmp / path.stem
            build(case, d)
            command = case["command"]
            code, stdout, stderr, seconds = run(a.bin, command, d, tmp / f"out-{path.stem}")
            peak = peak_kib(a.bin, command, d, tmp / f"out2-{path.stem}")
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
