"""AutoChunk on the corpus of real architectures at CPU sizes whose activations exceed 64 MiB.

    python benchmarks/real_models.py                 # every corpus model (about an hour, 2 cores)
    python benchmarks/real_models.py --only gpt2 llama --merge   # re-run some, keep the rest
    python benchmarks/real_models.py --cuda-only     # re-run only the CUDA column, keep the rest

Per model (built from its library's config, random weights; ``autochunk_tvm.models.corpus``):
the unchunked build's measured peak and its static prediction; the floor (the smallest peak
the search reaches, estimated); at 50% and 30% of the unchunked peak, the plan's measured peak,
its speed ratio against the unchunked build (one process, interleaved, median) and the largest
output difference; and the CUDA static estimate at 30% with its selection time (no GPU
needed). Where 30% is below the floor, the row says what holds the floor (selection/peak.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))

import autochunk_tvm as ac  # noqa: E402
import tvm  # noqa: E402
from autochunk_tvm.analysis.planned import as_target  # noqa: E402
from autochunk_tvm.models.corpus import CORPUS, corpus_model, missing_library  # noqa: E402
from common import MIB, RESULTS, Subject, meta, revision, write  # noqa: E402

# Sizes at which each entry's unchunked activations exceed 64 MiB (test sizes are 3-100 MiB).
SIZES: dict[str, dict] = {
    "gpt2": {"seq_len": 1280},
    "gpt2_masked": {"seq_len": 1280},
    "llama": {"seq_len": 1280},
    "bert": {"seq_len": 1280},
    "vit": {"image_size": 288},
    "esmfold_block": {"n_res": 144},
    "unet2d": {"latent": 32},
    "sd3_transformer": {"latent": 80},
    "openfold_evoformer": {"n_res": 128},
    "openfold_pairformer": {"n_res": 128},
}
BUDGETS = (0.5, 0.3)


def _imported(name: str):
    """Corpus entry ``name`` at its benchmark size, imported: (module, its inputs)."""
    model, args = corpus_model(name, **SIZES[name])
    return ac.from_torch(model, args), tuple(args)


def run_model(name: str, repeats: int) -> dict:
    mod, args = _imported(name)
    subject = Subject(name, mod, args, as_target("llvm"), tvm.cpu(0))
    row: dict = {"model": name, "library": CORPUS[name].library, "size": SIZES[name]}
    predicted = ac.static_allocation(subject.mod, "llvm").peak_bytes
    row["unchunked_measured"] = subject.plain_peak
    row["unchunked_predicted"] = predicted
    row["prediction_error"] = (predicted - subject.plain_peak) / subject.plain_peak
    began = time.perf_counter()
    floor = subject.select(1)  # the least-memory plan: its estimate is the floor
    row["floor"] = floor.plan.estimated_peak
    row["floor_fraction"] = floor.plan.estimated_peak / floor.unchunked_peak
    row["floor_seconds"] = round(time.perf_counter() - began, 1)
    for fraction in BUDGETS:
        began = time.perf_counter()
        sel = subject.select(fraction)
        entry = {
            "budget": sel.budget,
            "reached": sel.reached,
            "estimated_peak": sel.plan.estimated_peak,
            "selection_seconds": round(time.perf_counter() - began, 1),
        }
        if not sel.reached:
            entry["floor_explained"] = str(ac.PlanReport.of(subject.mod, sel).peak)
        entry.update(subject.measure(sel.plan, repeats))
        entry["measured_fraction"] = entry["measured_peak"] / subject.plain_peak
        row[f"at_{int(fraction * 100)}"] = entry
        print(
            f"  {name} at {fraction:.0%}: {'met' if sel.reached else 'NOT met'}, measured "
            f"{entry['measured_fraction']:.1%}, speed x{entry['speed_ratio']:.3f}, "
            f"error {entry['max_abs_error']:.2g}",
            flush=True,
        )
    row["cuda_at_30"] = cuda_at_30(name, subject.mod, subject.args)
    return row


def cuda_at_30(name: str, mod, args) -> dict:
    """The CUDA static estimate at 30% and its selection time (nothing is run)."""
    began = time.perf_counter()
    cuda = Subject(name, mod, args, as_target("cuda"), None).select(0.3)
    return {
        "reached": cuda.reached,
        "unchunked_estimate": cuda.unchunked_peak,
        "estimated_peak": cuda.plan.estimated_peak,
        "estimated_fraction": cuda.plan.estimated_peak / cuda.unchunked_peak,
        "selection_seconds": round(time.perf_counter() - began, 1),
        "run": revision(),
    }


def _cell(entry: dict) -> str:
    mark = "met" if entry["reached"] else "**not met**"
    return f"{mark}, {entry['measured_fraction']:.1%}, x{entry['speed_ratio']:.3f}"


def table(rows: list[dict]) -> list[str]:
    lines = [
        "# AutoChunk on real architectures (CPU, llvm)",
        "",
        "Unchunked: measured peak of one call and the static prediction. Floor: the smallest "
        "peak the search reaches (estimated). At 50% / 30%: met or not, the measured peak "
        "as a share of the unchunked one, speed ratio chunked/unchunked (>1 is slower). "
        "CUDA: the static estimate at 30% (no GPU), with its selection time.",
        "",
        "| model | size | unchunked | predicted (error) | floor | at 50% | at 30% | "
        "max error | CUDA at 30% | selection (llvm 30%, CUDA) |",
        "|---|---|---:|---:|---:|---|---|---:|---|---:|",
    ]
    cuda_runs = sorted({r["cuda_at_30"].get("run", "") for r in rows} - {""})
    if cuda_runs:
        lines[2] += (
            f" The CUDA column was last re-run on {', '.join(cuda_runs)} "
            "(`python benchmarks/real_models.py --cuda-only`)."
        )
    for r in rows:
        size = ", ".join(f"{k} {v}" for k, v in r["size"].items())
        half, third, cuda = r["at_50"], r["at_30"], r["cuda_at_30"]
        error = max(half["max_abs_error"], third["max_abs_error"])
        cuda_cell = f"{'met' if cuda['reached'] else 'not met'}, {cuda['estimated_fraction']:.1%}"
        lines.append(
            f"| `{r['model']}` | {size} | {r['unchunked_measured'] / MIB:.1f} MiB | "
            f"{r['unchunked_predicted'] / MIB:.1f} MiB ({r['prediction_error']:+.1%}) | "
            f"{r['floor_fraction']:.1%} | {_cell(half)} | {_cell(third)} | {error:.1g} | "
            f"{cuda_cell} | {third['selection_seconds']:.0f} s, {cuda['selection_seconds']:.0f} s |"
        )
    unmet = [r for r in rows if not r["at_30"]["reached"]]
    for r in unmet:
        lines += ["", f"What holds the floor of `{r['model']}`:", "", "```"]
        lines += [r["at_30"]["floor_explained"], "```"]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="corpus entries to run")
    parser.add_argument("--merge", action="store_true", help="keep other rows of the JSON")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cuda-only",
        action="store_true",
        help="re-run only the CUDA static estimate of each model, keeping its CPU columns",
    )
    opts = parser.parse_args(argv)
    opts.target, opts.preset = "llvm", "small"
    began = time.time()
    path = os.path.join(RESULTS, "real_models.json")
    rows: dict[str, dict] = {}
    kept_meta = None
    if (opts.merge or opts.cuda_only) and os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
        rows = {r["model"]: r for r in kept["rows"]}
        kept_meta = kept["meta"] if opts.cuda_only else None  # the CPU columns' run
    for name in opts.only or list(CORPUS):
        missing = missing_library(name)
        if missing is not None:
            print(f"{name}: skipped, {missing} is not installed", flush=True)
            continue
        print(f"{name} {SIZES[name]}", flush=True)
        if opts.cuda_only:
            if name not in rows:
                print(f"{name}: skipped, it has no CPU row to add the CUDA column to", flush=True)
                continue
            rows[name]["cuda_at_30"] = cuda_at_30(name, *_imported(name))
            cuda = rows[name]["cuda_at_30"]
            print(
                f"  {name} CUDA at 30%: {'met' if cuda['reached'] else 'NOT met'}, "
                f"{cuda['estimated_fraction']:.1%}, {cuda['selection_seconds']:.0f} s",
                flush=True,
            )
        else:
            rows[name] = run_model(name, opts.repeats)
        ordered = [rows[n] for n in CORPUS if n in rows]
        info = kept_meta or meta("real_models.py", opts, began, argv)
        write("real_models", info, ordered, table(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
