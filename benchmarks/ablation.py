"""Ablation (paper Table 1): the cost model's terms and graph optimization, on and off.

Configurations:
* ``full``: the fitted cost model and hoisting of chunk-invariant bindings (the default);
* ``without <term>``: the fitted model with one term removed;
* ``no cost model``: every term removed (the selection then follows memory alone);
* ``no graph optimization``: the full cost model, but every region recomputes its
  chunk-invariant bindings in each chunk (``hoist=False``) instead of once before its loop.

A configuration whose weights are those of one already run (a term whose fitted weight is 0
changes nothing) is not run again: the table says which one it equals. Each configuration
selects a plan per model and budget; the plan is built, measured (fresh process) and timed
against the unchunked build. The table reports the mean time ratio over models and budgets,
as the paper's Table 1 does.

    python benchmarks/ablation.py                               # CPU sizes
    python benchmarks/ablation.py --target cuda --preset paper  # on a GPU machine

Writes ``benchmarks/results/ablation[_<target>].{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import autochunk_tvm as ac
import common
from autochunk_tvm.selection.cost import TERMS

FRACTIONS = (0.5, 0.2)


def configurations() -> list[tuple[str, ac.CostModel, bool]]:
    full = ac.CostModel.default()
    configs = [("full", full, True)]
    configs += [(f"without {term}", full.without(term), True) for term in TERMS]
    configs += [("no cost model", full.without(*TERMS), True)]
    configs += [("no graph optimization", full, False)]
    return configs


def _key(model: ac.CostModel, hoist: bool) -> tuple:
    return tuple(model.weights.get(t, 0.0) if t in model.terms else 0.0 for t in TERMS), hoist


def run(models, target, preset, repeats) -> tuple[list[dict], dict[str, str]]:
    subjects = {
        name: common.load(name, preset, common.sizes_for(preset)[name], target) for name in models
    }
    rows: list[dict] = []
    same_as: dict[str, str] = {}
    done: dict[tuple, str] = {}
    for label, model, hoist in configurations():
        key = _key(model, hoist)
        if key in done:
            same_as[label] = done[key]
            print(f"{label}: the same weights as {done[key]}, not run again", flush=True)
            continue
        done[key] = label
        for name, subject in subjects.items():
            for fraction in FRACTIONS:
                began = time.time()
                sel = subject.select(fraction, cost_model=model, hoist=hoist)
                row = {
                    "config": label,
                    "model": name,
                    "fraction": fraction,
                    "reached": sel.reached,
                    "predicted_speed_ratio": sel.plan.estimated_cost,
                    "selection_seconds": round(time.time() - began, 1),
                    **subject.measure(sel.plan, repeats),
                }
                rows.append(row)
                print(
                    f"{label:22s} {name:9s} {fraction:4.0%}: "
                    f"{row['memory_fraction']:5.1%} of unchunked, time x{row['speed_ratio']:.3f}"
                    f", {row['regions']} regions",
                    flush=True,
                )
    return rows, same_as


def report(rows: list[dict], same_as: dict[str, str], info: dict) -> None:
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines = [
        "# Ablation: cost-model terms and graph optimization (paper Table 1)",
        "Mean over models and budgets of the time ratio chunked/unchunked (measured, "
        "interleaved, median); memory is the measured peak over the unchunked measured peak.",
        "",
        "| configuration | mean time ratio | worst time ratio | mean memory | budgets met |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in configs:
        mine = [r for r in rows if r["config"] == c]
        lines.append(
            f"| {c} | {statistics.mean(r['speed_ratio'] for r in mine):.3f} | "
            f"{max(r['speed_ratio'] for r in mine):.3f} | "
            f"{statistics.mean(r['memory_fraction'] for r in mine):.1%} | "
            f"{sum(r['reached'] for r in mine)}/{len(mine)} |"
        )
    for label, other in same_as.items():
        lines.append(f"| {label} | = {other} (same fitted weights) | | | |")
    lines += [
        "",
        "| configuration | model | budget | % of unchunked | time ratio | predicted | regions |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['model']} | {r['fraction']:.0%} | {r['memory_fraction']:.1%} "
            f"| {r['speed_ratio']:.3f} | {r['predicted_speed_ratio']:.3f} | {r['regions']} |"
        )
    common.write(f"ablation{common.suffix(info['target'])}", info, rows, lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--models", nargs="*", default=["gpt", "vit", "evoformer"])
    opts = parser.parse_args(argv)
    began = time.time()
    rows, same_as = run(opts.models, opts.target, opts.preset, opts.repeats)
    report(rows, same_as, common.meta("ablation.py", opts, began, argv, models=opts.models))


if __name__ == "__main__":
    main()
