"""Selection as models get deep: does AutoChunk reach its budget, how many plans does it
estimate, how long does it take, from 2 to 48 layers (static estimates; nothing is run).

The zoo GPT at 2, 6, 12 and 24 layers (seq 1024, n_embd 128) and at 12 layers with n_embd 768
and seq 2048; a transformers Llama (config built here, random weights) at 2 and 12 layers; the
zoo Evoformer at 2, 8 and 48 blocks; each for llvm and CUDA (sm_80, static estimate, no GPU
needed), at budgets of 30% and 20% of the unchunked peak.

    python benchmarks/depth_scaling.py                    # every row (~1 h on 2 cores)
    python benchmarks/depth_scaling.py --only gpt-12 llama-12 --targets cuda
    python benchmarks/depth_scaling.py --merge --only ...  # re-run rows, keep the others

Writes ``benchmarks/results/depth_scaling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))

import autochunk_tvm as ac  # noqa: E402
from common import MIB, RESULTS, meta, revision, write  # noqa: E402

BUDGETS = (0.3, 0.2)
TARGETS = ("llvm", "cuda")


def _gpt(**cfg):
    return lambda: ac.models.gpt("small", **cfg)


def _llama(**cfg):
    def build():
        from autochunk_tvm.models.corpus import corpus_model

        return corpus_model("llama", **cfg)

    return build


def _evoformer(**cfg):
    return lambda: ac.models.evoformer("small", **cfg)


MODELS = {
    "gpt-2": (2, _gpt(n_layer=2, seq_len=1024, n_embd=128)),
    "gpt-6": (6, _gpt(n_layer=6, seq_len=1024, n_embd=128)),
    "gpt-12": (12, _gpt(n_layer=12, seq_len=1024, n_embd=128)),
    "gpt-24": (24, _gpt(n_layer=24, seq_len=1024, n_embd=128)),
    "gpt-12-d768-s2048": (12, _gpt(n_layer=12, seq_len=2048, n_embd=768)),
    "llama-2": (2, _llama(n_layers=2, seq_len=1024)),
    "llama-12": (12, _llama(n_layers=12, seq_len=1024)),
    "evoformer-2": (2, _evoformer(n_blocks=2)),
    "evoformer-8": (8, _evoformer(n_blocks=8)),
    "evoformer-48": (48, _evoformer(n_blocks=48)),
}


def run(name: str, target: str) -> list[dict]:
    layers, build = MODELS[name]
    model, args = build()
    mod = ac.from_torch(model, args)
    rows = []
    for budget in BUDGETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "smallest peak found" when a budget is missed
            sel = ac.select_plan(mod, budget, target, strict=False)
        row = {
            "model": name,
            "layers": layers,
            "target": target,
            "budget": budget,
            "reached": sel.reached,
            "unchunked_peak": sel.unchunked_peak,
            "estimated_peak": sel.plan.estimated_peak,
            "fraction": sel.plan.estimated_peak / sel.unchunked_peak,
            "regions": len(sel.plan.steps),
            "plans_estimated": sel.evaluated,
            "selection_seconds": round(sel.seconds, 1),
            "selected_on": (
                f"{sel.selected_on.kept} of {sel.selected_on.repeats.count} repeats"
                if sel.selected_on is not None
                else "whole"
            ),
            "run": revision(),
        }
        if not sel.reached:
            row["floor_explained"] = str(ac.PlanReport.of(mod, sel).peak)
        rows.append(row)
        print(
            f"  {name} {target} {budget:.0%}: {'met' if sel.reached else 'NOT met'}, "
            f"{row['fraction']:.1%} of {sel.unchunked_peak / MIB:.1f} MiB, "
            f"{row['regions']} regions, {sel.evaluated} plans, {sel.seconds:.0f} s",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "# Depth scaling: selection from 2 to 48 layers",
        "Rows of one file come from several `--merge` runs: `run` is the date and commit of each. "
        "`selected on`: a deep model is selected on a shallow twin that keeps the fewest of its "
        "repeated blocks that peak as the whole model does; the plan is then mapped to every "
        "block and estimated on the whole model, and that estimate is the one shown "
        "(`whole`: selected on the whole model).",
        "",
        (
            "| model | layers | target | budget | reached | predicted / unchunked | regions | "
            "plans estimated | selection | selected on | run |"
        ),
        "|---|---:|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    order = {name: k for k, name in enumerate(MODELS)}
    for r in sorted(rows, key=lambda r: (order[r["model"]], r["target"], -r["budget"])):
        lines.append(
            f"| `{r['model']}` | {r['layers']} | {r['target']} | {r['budget']:.0%} | "
            f"{'yes' if r['reached'] else '**no**'} | {r['fraction']:.1%} of "
            f"{r['unchunked_peak'] / MIB:.1f} MiB | {r['regions']} | {r['plans_estimated']} | "
            f"{r['selection_seconds']:.0f} s | {r.get('selected_on', 'whole')} | "
            f"{r.get('run', '')} |"
        )
    missed = [r for r in rows if not r["reached"]]
    for r in missed:
        lines += [
            "",
            f"`{r['model']}` {r['target']} at {r['budget']:.0%}:",
            "```",
            r["floor_explained"],
            "```",
        ]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--merge", action="store_true", help="keep the saved rows not re-run")
    opts = parser.parse_args(argv)
    began = time.time()
    opts.target = ",".join(opts.targets)
    opts.preset = "small"
    path = os.path.join(RESULTS, "depth_scaling.json")
    saved = []
    if opts.merge and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)["rows"]
    rows = []
    for name in opts.only:
        for target in opts.targets:
            print(name, target, flush=True)
            rows += run(name, target)
            # written after every model, so that a long run keeps what it has measured
            done = {(r["model"], r["target"]) for r in rows}
            kept = [r for r in saved if (r["model"], r["target"]) not in done]
            write(
                "depth_scaling",
                meta("depth_scaling.py", opts, began, argv),
                kept + rows,
                table(kept + rows),
            )


if __name__ == "__main__":
    main()
