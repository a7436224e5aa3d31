"""Fit the selection cost model's weights to measured speed ratios (paper §3.4, Eqs. 8-10).

For each zoo model at a CPU-friendly size, the search's candidates around the memory peak are
grouped by how they chunk (extent and output axes); the largest region of each group is
lowered alone at several chunk counts, built, and timed against the unchunked build in the
same process (interleaved calls, median). Each sample is one row: the four cost terms of
:class:`autochunk_tvm.selection.StepFeatures` and the measured ``ratio - 1``. The weights are
the non-negative least-squares fit (a term can only add cost), and are written to the
package's ``selection/cost_model.json``; the samples, the fit and a leave-one-model-out check
go to ``benchmarks/results/cost_model_fit.{json,md,png}``.

    python benchmarks/fit_cost_model.py              # measure, fit, write (~10 min, 2 cores)
    python benchmarks/fit_cost_model.py --refit      # fit again from the saved samples
                                                     # (terms recomputed, ratios kept)

Needs scipy (``pip install scipy``) for the NNLS solve.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import autochunk_tvm as ac
import numpy as np
from autochunk_tvm.lowering import ChunkPlan, lower_chunk_plan
from autochunk_tvm.runtime import speed_ratio
from autochunk_tvm.runtime.measure import vm_callable
from autochunk_tvm.search import search_chunk_candidates
from autochunk_tvm.selection.cost import TERMS, WEIGHTS_FILE, ModelTotals, step_features
from tvm import relax

RESULTS = os.path.join(os.path.dirname(__file__), "results")
MODELS = {
    "gpt": {"preset": "small", "seq_len": 512, "n_layer": 1},
    "vit": {"preset": "small", "image_size": 128},
    "evoformer": {"preset": "small", "n_seq": 32, "n_res": 48},
    "unet": {"preset": "small", "image_size": 128},
}
CHUNK_COUNTS = (2, 8, 32)
GROUPS_PER_MODEL = 6


def _groups(cands):
    """The largest region of each way of chunking (extent, output axes), largest first."""
    best = {}
    for cand in cands:
        if not isinstance(cand.extent, int):
            continue
        way = (cand.extent, tuple(a.axis for _, a in cand.outputs))
        if way not in best or cand.end - cand.start > best[way].end - best[way].start:
            best[way] = cand
    return sorted(best.values(), key=lambda c: -(c.end - c.start))


def measure(repeats: int) -> list[dict]:
    rows = []
    for name, cfg in MODELS.items():
        cfg = dict(cfg)
        model, args = ac.models.FACTORIES[name](cfg.pop("preset"), **cfg)
        mod = ac.from_torch(model, args)
        func = mod["main"]
        totals = ModelTotals.of(func)
        base = vm_callable(relax.build(mod, "llvm"), args)
        groups = _groups(search_chunk_candidates(mod))
        # spread the picks over region sizes: every k-th group
        step = max(1, len(groups) // GROUPS_PER_MODEL)
        for cand in groups[::step][:GROUPS_PER_MODEL]:
            counts = sorted({min(n, cand.extent) for n in CHUNK_COUNTS})
            for n in counts:
                chunk_len = ChunkPlan.chunk_len_for(cand, n)
                plan = ChunkPlan.of((cand, chunk_len))
                ex = relax.build(lower_chunk_plan(mod, plan, "llvm"), "llvm")
                ratio = speed_ratio(vm_callable(ex, args), base, warmup=1, repeats=repeats)
                feats = step_features(func, cand, chunk_len, totals)
                row = {
                    "model": name,
                    "region": [cand.start, cand.end],
                    "outputs": [[o, a.axis] for o, a in cand.outputs],
                    "extent": cand.extent,
                    "n_chunks": feats.n_chunks,
                    "chunk_len": chunk_len,
                    "nodes": feats.nodes,
                    "flops": feats.flops,
                    "model_flops": totals.flops,
                    "terms": feats.terms(),
                    "ratio": ratio,
                }
                rows.append(row)
                print(
                    f"{name:9s} [{cand.start:3d},{cand.end:3d}] n={feats.n_chunks:3d} "
                    f"ratio {ratio:.3f}",
                    flush=True,
                )
    return rows


def recompute_terms(rows: list[dict]) -> list[dict]:
    """The saved samples with their terms computed by today's cost model (the measured
    ratios are kept): a term added to ``selection/cost.py`` is fitted without re-timing."""
    from autochunk_tvm.search import trace_region

    out = []
    modules = {}
    for row in rows:
        name = row["model"]
        if name not in modules:
            cfg = dict(MODELS[name])
            model, args = ac.models.FACTORIES[name](cfg.pop("preset"), **cfg)
            func = ac.from_torch(model, args)["main"]
            modules[name] = (func, ModelTotals.of(func))
        func, totals = modules[name]
        start, end = row["region"]
        cand = trace_region(func, start, end, {o: a for o, a in row["outputs"]})
        feats = step_features(func, cand, row["chunk_len"], totals)
        out.append({**row, "terms": feats.terms()})
    return out


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls as solve

    return solve(x, y)[0]


def fit(rows: list[dict]) -> dict:
    x = np.array([[r["terms"][t] for t in TERMS] for r in rows])
    y = np.array([r["ratio"] - 1.0 for r in rows])
    # Scale columns to unit norm for a well-conditioned solve, then undo it.
    norms = np.linalg.norm(x, axis=0)
    norms[norms == 0] = 1.0
    w = nnls(x / norms, y) / norms
    pred = x @ w
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    held_out = {}
    for name in sorted({r["model"] for r in rows}):
        train = np.array([r["model"] != name for r in rows])
        wm = nnls(x[train] / norms, y[train]) / norms
        err = y[~train] - x[~train] @ wm
        held_out[name] = float(np.sqrt(np.mean(err**2)))
    # Ablation of each term: refit without it.
    without = {}
    for k, term in enumerate(TERMS):
        keep = [j for j in range(len(TERMS)) if j != k]
        wk = nnls(x[:, keep] / norms[keep], y) / norms[keep]
        without[term] = float(np.sqrt(np.mean((y - x[:, keep] @ wk) ** 2)))
    return {
        "weights": {t: float(v) for t, v in zip(TERMS, w)},
        "rmse": float(np.sqrt(np.mean((y - pred) ** 2))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        "rmse_mean_only": float(np.sqrt(np.mean((y - y.mean()) ** 2))),
        "rmse_leave_one_model_out": held_out,
        "rmse_without_term": without,
        "samples": len(rows),
        "predicted": [float(p) for p in pred],
    }


def write(rows: list[dict], result: dict, seconds: float | None, machine=None) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    meta = {
        "machine": machine or platform.platform(),  # where the ratios were measured
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "models": MODELS,
        "chunk_counts": CHUNK_COUNTS,
        "seconds": seconds,
    }
    with open(os.path.join(RESULTS, "cost_model_fit.json"), "w") as f:
        json.dump({"meta": meta, "fit": result, "samples": rows}, f, indent=1)
    with open(WEIGHTS_FILE, "w") as f:
        json.dump(
            {
                "weights": result["weights"],
                "fitted_by": "benchmarks/fit_cost_model.py",
                "data": "benchmarks/results/cost_model_fit.json",
                "target": "llvm (CPU)",
                "samples": result["samples"],
                "rmse": result["rmse"],
            },
            f,
            indent=1,
        )
        f.write("\n")
    lines = [
        "# Cost model fit",
        "",
        f"{result['samples']} single-region plans on CPU ({meta['machine']}, "
        f"{meta['cpus']} cores); target: measured `time chunked / time unchunked - 1`.",
        "Non-negative least squares on the terms of `selection/cost.py`.",
        "",
        "| term | weight | RMSE when left out |",
        "|---|---:|---:|",
    ]
    for t in TERMS:
        lines.append(f"| {t} | {result['weights'][t]:.4g} | {result['rmse_without_term'][t]:.4f} |")
    lines += [
        "",
        f"- RMSE of the fit: {result['rmse']:.4f} (predicting the mean: "
        f"{result['rmse_mean_only']:.4f}); R² = {result['r2']:.3f}.",
        "- Leave-one-model-out RMSE: "
        + ", ".join(f"{m} {v:.4f}" for m, v in result["rmse_leave_one_model_out"].items()),
        "",
        "| model | region | n | measured ratio | predicted |",
        "|---|---|---:|---:|---:|",
    ]
    for r, p in zip(rows, result["predicted"]):
        lines.append(
            f"| {r['model']} | {r['region'][0]}-{r['region'][1]} | {r['n_chunks']} | "
            f"{r['ratio']:.3f} | {1 + p:.3f} |"
        )
    with open(os.path.join(RESULTS, "cost_model_fit.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5))
        for name in MODELS:
            pts = [
                (1 + p, r["ratio"]) for r, p in zip(rows, result["predicted"]) if r["model"] == name
            ]
            if pts:
                ax.scatter(*zip(*pts), label=name, s=14)
        lo = min(min(r["ratio"] for r in rows), 1 + min(result["predicted"])) - 0.01
        hi = max(max(r["ratio"] for r in rows), 1 + max(result["predicted"])) + 0.01
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("predicted time ratio (cost model)")
        ax.set_ylabel("measured time ratio (CPU)")
        ax.set_title("Cost model: one chunked region per plan")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "cost_model_fit.png"), dpi=120)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refit", action="store_true", help="fit again from saved samples")
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    began = time.time()
    if opts.refit:
        with open(os.path.join(RESULTS, "cost_model_fit.json")) as f:
            saved = json.load(f)
        rows, seconds = recompute_terms(saved["samples"]), saved["meta"].get("seconds")
        machine = saved["meta"].get("machine")
    else:
        rows = measure(opts.repeats)
        seconds, machine = time.time() - began, None
    result = fit(rows)
    write(rows, result, seconds, machine)
    print(json.dumps({k: result[k] for k in ("weights", "rmse", "r2")}, indent=1))


if __name__ == "__main__":
    main()
