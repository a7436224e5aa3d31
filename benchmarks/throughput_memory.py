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
import time

import common

FRACTIONS = (0.5, 0.4, 0.3, 0.2, 0.1)


def run_model(name, preset, target, fractions, repeats):
    subject = common.load(name, preset, common.sizes_for(preset)[name], target)
    rows = []
    for fraction in fractions:
        sel = subject.select(fraction)
        row = {
            "model": name,
            "fraction": fraction,
            "budget_bytes": sel.budget,
            "reached": sel.reached,
            "estimated_peak": sel.plan.estimated_peak,
            "unchunked_measured_peak": subject.plain_peak,
            "predicted_speed_ratio": sel.plan.estimated_cost,
            "selection_seconds": sel.seconds,
            **subject.measure(sel.plan, repeats),
        }
        row["throughput_fraction"] = 1.0 / row["speed_ratio"]
        rows.append(row)
        print(
            f"{name:9s} {fraction:4.0%}: {row['measured_peak'] / 2**20:8.2f} MiB "
            f"({row['memory_fraction']:5.1%} of {subject.plain_peak / 2**20:.1f}), "
            f"time x{row['speed_ratio']:.3f}, {row['regions']} regions"
            f"{'' if sel.reached else ' (budget unreachable)'}",
            flush=True,
        )
    return rows


def write(rows, info, suffix):
    lines = [
        "# Throughput vs activation memory (paper Fig. 5)",
        "Memory: measured peak of one call in a fresh process; speed: chunked/unchunked time, "
        "interleaved in one process, median. Error: largest absolute difference from the "
        "unchunked output.",
        "",
        "| model | budget | reached | measured MiB | % of unchunked | time ratio | "
        "throughput | regions | max abs error |",
        "|---|---:|:---:|---:|---:|---:|---:|---:|---:|",
    ]
    if "merged" in info:
        m = info["merged"]
        lines[1] += (
            f" Rows for {', '.join(m['models'])} are kept from an earlier run: "
            f"`{m['command']}` ({m['seconds']:.0f} s)."
        )
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['fraction']:.0%} | {'yes' if r['reached'] else 'no'} | "
            f"{r['measured_peak'] / 2**20:.2f} | {r['memory_fraction']:.1%} | "
            f"{r['speed_ratio']:.3f} | {r['throughput_fraction']:.1%} | {r['regions']} | "
            f"{r['max_abs_error']:.1e} |"
        )
    base = common.write(f"throughput_memory{suffix}", info, rows, lines)
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = sorted(
            (r["memory_fraction"], r["throughput_fraction"]) for r in rows if r["model"] == name
        )
        ax.plot(*zip(*pts), "o-", label=name)
    ax.axhline(1.0, color="k", lw=0.6)
    common.save_plot(
        fig,
        ax,
        base,
        xlabel="measured activation memory / unchunked",
        ylabel="throughput / unchunked",
        title=f"AutoChunk throughput vs memory ({info['target']})",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--models", nargs="*", default=list(common.CPU_SIZES))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models' rows of the existing results (re-run some models only)",
    )
    opts = parser.parse_args(argv)
    began = time.time()
    rows = []
    for name in opts.models:
        rows += run_model(name, opts.preset, opts.target, FRACTIONS, opts.repeats)
    info = common.meta("throughput_memory.py", opts, began, argv, models=opts.models)
    info["sizes"] = {m: common.sizes_for(opts.preset)[m] for m in opts.models}
    path = os.path.join(common.RESULTS, f"throughput_memory{common.suffix(opts.target)}.json")
    if opts.merge and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        kept = [r for r in old["rows"] if r["model"] not in opts.models]
        info["merged"] = {
            "command": old["meta"]["command"],
            "seconds": old["meta"]["seconds"],
            "models": sorted({r["model"] for r in kept}),
        }
        info["sizes"] = {**old["meta"].get("sizes", {}), **info["sizes"]}
        order = list(common.CPU_SIZES)
        rows = sorted(kept + rows, key=lambda r: order.index(r["model"]))
    write(rows, info, common.suffix(opts.target))


if __name__ == "__main__":
    main()
