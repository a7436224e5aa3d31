"""One AutoChunk build for every sequence length: models exported with a dynamic length.

    python benchmarks/dynamic_shapes.py              # three models (about 15 min, 2 cores)
    python benchmarks/dynamic_shapes.py --only gpt --merge

Per model, exported once with ``torch.export.Dim("seq", max=BOUND)``: the dynamic build
without AutoChunk, and one AutoChunk build at 20% of the unchunked peak at the bound. Each is
run at four lengths, from 1/16 of the bound to the bound, against a static unchunked build of
that length (exported at it): the outputs' largest difference, the measured peak of one call
(fresh process), and the time ratio of each dynamic build over the static one (interleaved,
median). The models: the zoo GPT (its mask built from positions, ``mask_from_positions``), the
zoo ViT's encoder on a variable number of patch tokens, and the transformers GPT-2 of the
real-model corpus.
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
import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from autochunk_tvm.runtime import output_arrays, speed_ratio  # noqa: E402
from autochunk_tvm.runtime.measure import vm_callable  # noqa: E402
from common import MIB, RESULTS, meta, pyplot, revision, write  # noqa: E402

BUDGET = 0.2
FRACTIONS = (1 / 16, 1 / 4, 1 / 2, 1)  # lengths, as fractions of the bound


class _Encoder(torch.nn.Module):
    """A ViT's encoder blocks and final norm on patch tokens ``(batch, n, dim)``: the part of
    the model whose length varies with the image (variable-resolution ViTs feed it so)."""

    def __init__(self, vit: torch.nn.Module) -> None:
        super().__init__()
        self.blocks, self.norm = vit.blocks, vit.norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def _gpt():
    model, (tokens,) = ac.models.gpt("small", seq_len=2048, mask_from_positions=True)
    return model, tokens, "idx", "zoo GPT, n_embd 128, 2 layers"


def _vit_encoder():
    vit, _ = ac.models.vit("small", image_size=256)
    model = _Encoder(vit).eval()
    tokens = torch.randn(1, vit.pos_embed.shape[1] - 1, vit.pos_embed.shape[2])
    return model, tokens, "tokens", "zoo ViT encoder (small, 2 blocks), 1024 patch tokens"


def _gpt2():
    from autochunk_tvm.models.corpus import gpt2

    model, (ids,) = gpt2(seq_len=1280)
    return model, ids, "input_ids", "transformers GPT2LMHeadModel, 2 layers, d 128"


MODELS = {"gpt": _gpt, "vit_encoder": _vit_encoder, "gpt2": _gpt2}


def _peak(ex, args) -> int:
    return ac.measure_peak_memory(ex, args).peak_bytes


def _max_error(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(output_arrays(a), output_arrays(b)))


def run_model(name: str, repeats: int) -> dict:
    model, full, arg_name, description = MODELS[name]()
    bound = full.shape[1]
    seq = torch.export.Dim("seq", min=1, max=bound)
    began = time.perf_counter()
    dynamic = ac.from_torch(model, (full[:, : bound // 2],), dynamic_shapes={arg_name: {1: seq}})
    import_seconds = time.perf_counter() - began
    selections = []
    began = time.perf_counter()
    chunked = ac.build(dynamic, "llvm", budget=BUDGET, on_selection=selections.append)
    build_seconds = time.perf_counter() - began
    (sel,) = selections
    plain = ac.build(dynamic, "llvm")
    row = {
        "model": name,
        "description": description,
        "bound": bound,
        "budget": sel.budget,
        "unchunked_estimate": sel.unchunked_peak,
        "chunked_estimate": sel.estimate.peak,
        "reached": sel.reached,
        "regions": len(sel.plan.steps),
        "chunk_lengths": [s.chunk_len for s in sel.plan.steps],
        "selection_seconds": round(sel.seconds, 1),
        "import_seconds": round(import_seconds, 1),
        "build_seconds": round(build_seconds, 1),
        "lengths": [],
    }
    print(
        f"{name}: bound {bound}, {len(sel.plan.steps)} regions, estimated "
        f"{sel.unchunked_peak / MIB:.1f} -> {sel.estimate.peak / MIB:.1f} MiB "
        f"(budget {sel.budget / MIB:.1f}), selection {sel.seconds:.1f} s",
        flush=True,
    )
    for fraction in FRACTIONS:
        n = max(1, round(bound * fraction))
        args = (full[:, :n],)
        static = ac.build(ac.from_torch(model, args), "llvm")
        call_static = vm_callable(static, args)
        call_plain, call_chunked = vm_callable(plain, args), vm_callable(chunked, args)
        entry = {
            "length": n,
            "max_abs_error": _max_error(call_chunked(), call_static()),
            "static_peak": _peak(static, args),
            "dynamic_peak": _peak(plain, args),
            "chunked_peak": _peak(chunked, args),
            "dynamic_time_ratio": speed_ratio(call_plain, call_static, repeats=repeats),
            "chunked_time_ratio": speed_ratio(call_chunked, call_static, repeats=repeats),
        }
        row["lengths"].append(entry)
        print(
            f"  length {n}: error {entry['max_abs_error']:.2g}; peak static "
            f"{entry['static_peak'] / MIB:.1f}, dynamic {entry['dynamic_peak'] / MIB:.1f}, "
            f"AutoChunk {entry['chunked_peak'] / MIB:.1f} MiB; time over static: dynamic "
            f"x{entry['dynamic_time_ratio']:.3f}, AutoChunk x{entry['chunked_time_ratio']:.3f}",
            flush=True,
        )
    at_bound = row["lengths"][-1]
    row["budget_met_at_bound"] = at_bound["chunked_peak"] <= sel.budget
    row["revision"] = revision()
    return row


def _markdown(rows: list[dict]) -> list[str]:
    lines = [
        "# One AutoChunk build for every sequence length",
        "Each model is exported once with a dynamic length up to its bound and built twice: "
        "without AutoChunk (*dynamic*) and with AutoChunk at 20% of the unchunked peak at the "
        "bound (*AutoChunk*). Each build runs at four lengths against a *static* unchunked "
        "build of that length. Memory: measured peak of one call (fresh process). Time: "
        "the dynamic build's time over the static build's, interleaved, median (below 1.0 "
        "is faster). Targets: equal outputs at every length; the AutoChunk peak within the "
        "budget at the bound; AutoChunk time within 1/0.95 = x1.053 of static at the bound and "
        "1/0.90 = x1.111 at 1/16 of it.",
        "",
    ]
    for row in rows:
        lines += [
            f"## {row['model']}: {row['description']}, length up to {row['bound']}",
            "",
            f"Selection {row['selection_seconds']} s; {row['regions']} regions, chunk lengths "
            f"{row['chunk_lengths']}; estimated {row['unchunked_estimate'] / MIB:.1f} -> "
            f"{row['chunked_estimate'] / MIB:.1f} MiB at the bound, budget "
            f"{row['budget'] / MIB:.1f} MiB "
            f"({'met' if row['budget_met_at_bound'] else 'NOT met'} at the bound, measured). "
            f"({row['revision']})",
            "",
            "| length | outputs (max abs diff) | static peak | dynamic peak | AutoChunk peak "
            "| dynamic time / static | AutoChunk time / static |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in row["lengths"]:
            lines.append(
                f"| {e['length']} | {e['max_abs_error']:.2g} | {e['static_peak'] / MIB:.1f} MiB "
                f"| {e['dynamic_peak'] / MIB:.1f} MiB | {e['chunked_peak'] / MIB:.1f} MiB "
                f"| x{e['dynamic_time_ratio']:.3f} | x{e['chunked_time_ratio']:.3f} |"
            )
        lines.append("")
    return lines


def _plot(rows: list[dict], base: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        lengths = [e["length"] for e in row["lengths"]]
        for key, label in (
            ("static_peak", "static unchunked (one build per length)"),
            ("dynamic_peak", "dynamic, no AutoChunk"),
            ("chunked_peak", "dynamic, AutoChunk 20%"),
        ):
            ax.plot(lengths, [e[key] / MIB for e in row["lengths"]], marker="o", label=label)
        ax.axhline(row["budget"] / MIB, color="grey", linestyle="--", label="budget")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("measured peak of one call (MiB)")
        ax.set_title(f"{row['model']} (bound {row['bound']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(base + ".png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(MODELS), default=None)
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows")
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args(argv)
    opts.target, opts.preset = "llvm", "small"
    began = time.time()
    warnings.simplefilter("ignore")
    rows = [run_model(name, opts.repeats) for name in opts.only or MODELS]
    path = os.path.join(RESULTS, "dynamic_shapes.json")
    if opts.merge and os.path.exists(path):
        with open(path) as f:
            kept = [r for r in json.load(f)["rows"] if r["model"] not in {r["model"] for r in rows}]
        rows = sorted(kept + rows, key=lambda r: list(MODELS).index(r["model"]))
    base = write(
        "dynamic_shapes", meta("dynamic_shapes.py", opts, began, argv), rows, _markdown(rows)
    )
    _plot(rows, base)
    print(f"wrote {base}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
