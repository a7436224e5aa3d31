"""Chunk-search time on deep graphs (the target: a 48-block Evoformer stack searched in
under 10 s on one CPU core).

    taskset -c 0 python benchmarks/search_time.py   # writes benchmarks/results/search_time.*

Search time covers what search does: the memory profile that locates the peak and the region
enumeration with flow tracing. torch.export + import of the model is reported apart (it is the
frontend's cost, paid once per model).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import autochunk_tvm as ac  # noqa: E402
from autochunk_tvm.search import search_chunk_candidates  # noqa: E402

CASES = [
    ("evoformer", "small", {"n_blocks": 2}),
    ("evoformer", "small", {"n_blocks": 48}),
    ("gpt", "small", {"n_layer": 24}),
]


def main() -> int:
    rows = []
    for name, preset, overrides in CASES:
        model, args = ac.models.FACTORIES[name](preset, **overrides)
        start = time.perf_counter()
        mod = ac.from_torch(model, args)
        import_s = time.perf_counter() - start
        start = time.perf_counter()
        profile = ac.estimate_activation_memory(mod)
        profile_s = time.perf_counter() - start
        start = time.perf_counter()
        candidates = search_chunk_candidates(mod, profile)
        search_s = time.perf_counter() - start
        row = {
            "model": name,
            "overrides": overrides,
            "bindings": len(profile.bindings),
            "candidates": len(candidates),
            "import_s": round(import_s, 2),
            "profile_s": round(profile_s, 2),
            "search_s": round(search_s, 2),
            "total_search_s": round(profile_s + search_s, 2),
        }
        rows.append(row)
        print(row, flush=True)
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "search_time.json"), "w") as f:
        json.dump({"cpu_cores": len(os.sched_getaffinity(0)), "rows": rows}, f, indent=2)
    lines = [
        "# Chunk-search time",
        "",
        f"`taskset -c 0 python benchmarks/search_time.py` ({len(os.sched_getaffinity(0))} "
        "core(s) allowed). Search = memory profile + region enumeration and tracing.",
        "",
        "| model | config | bindings | candidates | import (s) | profile (s) | search (s) | "
        "profile + search (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        lines.append(
            f"| {r['model']} | {cfg} | {r['bindings']} | {r['candidates']} | {r['import_s']} | "
            f"{r['profile_s']} | {r['search_s']} | {r['total_search_s']} |"
        )
    with open(os.path.join(out, "search_time.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
