#!/usr/bin/env python3
"""tau-bench's own Python doing the work `apigen-mt domain bench` times: for every task, load a
fresh database (tau-bench's `load_data()`), run the gold actions through tau-bench's tool classes
(as `Env.step` does), and hash the result (the canonical hash of shared/taubench/README.md).

Usage: bench-taubench.py TAU_BENCH_CHECKOUT DOMAIN TASKS.json [--repeat N]
Prints one JSON line like `apigen-mt domain bench`. Needs only the checkout (no pip install):
the heavy package __init__ files (LLM clients) are bypassed.
"""
import argparse, hashlib, importlib, json, os, sys, time, types


def stub_packages(root, domain):
    for name in ["tau_bench", "tau_bench.envs", f"tau_bench.envs.{domain}"]:
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout")
    ap.add_argument("domain", choices=["retail", "airline"])
    ap.add_argument("tasks")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    stub_packages(os.path.abspath(a.checkout), a.domain)
    started = time.perf_counter()
    tools = importlib.import_module(f"tau_bench.envs.{a.domain}.tools").ALL_TOOLS
    load_data = importlib.import_module(f"tau_bench.envs.{a.domain}.data").load_data
    tools_map = {t.get_info()["function"]["name"]: t for t in tools}
    tasks = json.load(open(a.tasks))
    load_s = time.perf_counter() - started
    best, hashes = float("inf"), []
    for _ in range(max(1, a.repeat)):
        t0 = time.perf_counter()
        hashes = []
        for task in tasks:
            data = load_data()
            for action in task["actions"]:
                kwargs = action.get("kwargs", action.get("arguments", {}))
                try:
                    tools_map[action["name"]].invoke(data=data, **kwargs)
                except Exception:
                    pass
            text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            hashes.append(hashlib.sha256(text.encode()).hexdigest())
        best = min(best, time.perf_counter() - t0)
    digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    print(json.dumps({"domain": a.domain, "tasks": len(tasks), "actions": sum(len(t["actions"]) for t in tasks),
                      "load_s": load_s, "loop_s": best, "ms_per_task": best * 1000 / max(1, len(tasks)),
                      "gold_hashes_sha256": digest}))


if __name__ == "__main__":
    main()
