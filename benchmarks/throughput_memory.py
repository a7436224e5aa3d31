"""Throughput against activation memory (paper Fig. 5): each zoo model at budgets of 50, 40, 30,
20 and 10% of its unchunked peak.

For every (model, budget): AutoChunk selects a plan (``strict=False``: a budget below the
smallest reachable peak builds that smallest plan and is marked), the plan is built, its peak
is measured in a fresh process (``measure_peak_memory``), and its speed is the ratio of its
time to the unchunked build's, measured interleaved in the same process (median of repeats).

    python benchmarks/throughput_memory.py                  # CPU sizes
    python benchmarks/throughput_memory.py --target cuda --preset paper   # on a GPU machine

Writes ``benchmarks/results/throughput_memory[_<target>].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import autochunk_tvm as ac
import tvm
from autochunk_tvm.runtime import speed_ratio
from autochunk_tvm.runtime.measure import vm_callable
from tvm import relax

RESULTS = os.path.join(os.path.dirname(__file__), "results")
FRACTIONS = (0.5, 0.4, 0.3, 0.2, 0.1)
# CPU sizes: large enough that memory is well above measurement noise, small enough that the
# whole sweep finishes in minutes on 2 cores.
CPU_MODELS = {
    "gpt": {"seq_len": 1024, "n_layer": 2},
    "vit": {"image_size": 256},
    "evoformer": {},
    "unet": {"image_size": 128},
}
PAPER_MODELS = {
    "gpt": {"seq_len": 4096},
    "vit": {},
    "evoformer": {"n_res": 512},
    "unet": {},
}


def run_model(name, preset, overrides, target, fractions, repeats):
    model, args = ac.models.FACTORIES[name](preset, **overrides)
    mod = ac.from_torch(model, args)
    tgt = ac.analysis.planned.as_target(target)
    dev = tvm.cuda(0) if tgt.kind.name == "cuda" else tvm.cpu(0)
    plain = relax.build(mod, target=tgt)
    base_call = vm_callable(plain, args, device=dev)
    base_peak = ac.measure_peak_memory(plain, args, target=tgt).peak_bytes
    estimator = ac.selection.PlanEstimator(mod, tgt)
    rows = []
    for fraction in fractions:
        began = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sel = ac.select_plan(mod, fraction, tgt, estimator=estimator, strict=False)
        chosen = time.time() - began
        ex = relax.build(ac.lower_chunk_plan(mod, sel.plan, tgt), target=tgt)
        peak = ac.measure_peak_memory(ex, args, target=tgt).peak_bytes
        ratio = speed_ratio(vm_callable(ex, args, device=dev), base_call, repeats=repeats)
        rows.append(
            {
                "model": name,
                "fraction": fraction,
                "budget_bytes": sel.budget,
                "reached": sel.reached,
                "estimated_peak": sel.plan.estimated_peak,
                "measured_peak": peak,
                "unchunked_measured_peak": base_peak,
                "memory_fraction": peak / base_peak,
                "speed_ratio": ratio,
                "throughput_fraction": 1.0 / ratio,
                "predicted_speed_ratio": sel.plan.estimated_cost,
                "regions": len(sel.plan.steps),
                "chunks": [s.n_chunks for s in sel.plan.steps],
                "selection_seconds": chosen,
            }
        )
        print(
            f"{name:9s} {fraction:4.0%}: {peak / 2**20:8.2f} MiB "
            f"({peak / base_peak:5.1%} of {base_peak / 2**20:.1f}), time x{ratio:.3f}, "
            f"{len(sel.plan.steps)} regions{'' if sel.reached else ' (budget unreachable)'}",
            flush=True,
        )
    return rows


def write(rows, meta, suffix):
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"throughput_memory{suffix}")
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [
        "# Throughput vs activation memory (paper Fig. 5)",
        "",
        f"Reproduce: `{meta['command']}` ({meta['machine']}, {meta['cpus']} cores).",
        "Memory: measured peak of one call in a fresh process; speed: chunked/unchunked time, "
        "interleaved in one process, median.",
        "",
        "| model | budget | reached | measured MiB | % of unchunked | time ratio | "
        "throughput | regions |",
        "|---|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['fraction']:.0%} | {'yes' if r['reached'] else 'no'} | "
            f"{r['measured_peak'] / 2**20:.2f} | {r['memory_fraction']:.1%} | "
            f"{r['speed_ratio']:.3f} | {r['throughput_fraction']:.1%} | {r['regions']} |"
        )
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = sorted(
            (r["memory_fraction"], r["throughput_fraction"]) for r in rows if r["model"] == name
        )
        ax.plot(*zip(*pts), "o-", label=name)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("measured activation memory / unchunked")
    ax.set_ylabel("throughput / unchunked")
    ax.set_title(f"AutoChunk throughput vs memory ({meta['target']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + ".png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--preset", default="small", choices=["small", "paper"])
    parser.add_argument("--models", nargs="*", default=list(CPU_MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    sizes = CPU_MODELS if opts.preset == "small" else PAPER_MODELS
    began = time.time()
    rows = []
    for name in opts.models:
        rows += run_model(name, opts.preset, sizes[name], opts.target, FRACTIONS, opts.repeats)
    meta = {
        "command": "python benchmarks/throughput_memory.py " + " ".join(sys.argv[1:]),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "target": opts.target,
        "preset": opts.preset,
        "sizes": {m: sizes[m] for m in opts.models},
        "seconds": time.time() - began,
    }
    write(rows, meta, "" if opts.target == "llvm" else f"_{opts.target}")


if __name__ == "__main__":
    main()
