"""Lowered chunk plans on CPU: measured peak memory against X + Y + A/n, and speed ratios.

For a region with input X, output Y and intermediates A (their largest live set in the
unchunked program), running it in n chunks should need X + Y + A/n. This script lowers one
region with ``LowerChunkPlan`` at several n, measures the peak of one call in a fresh process
(``measure_peak_memory``: growth of peak RSS, so the input X, allocated before the call, is
added back), and times chunked against unchunked in the same process (interleaved, median).

    python benchmarks/chunked_memory_speed.py            # writes benchmarks/results/chunked_*

Cases:
* ``mlp``: x (1, 8192, 32) -> Linear(32, 2048) -> GELU -> Linear(2048, 32); X = Y = 1 MiB.
  A = three (8192, 2048) fp32 hidden tensors = 192 MiB: at the GELU its input and output are
  live, and the GELU kernel (erf form, as LegalizeOps writes it) keeps one hidden-size buffer
  of its own; the unchunked build needs all three too (row n = 1). The weight transposes the
  region hoists (0.5 MiB, computed once) are added to the formula.
* ``gpt-attention``: the attention-scores region of the small GPT at seq 1024 (speed only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import autochunk_tvm as ac
import torch
from autochunk_tvm.lowering import ChunkPlan, lower_chunk_plan
from autochunk_tvm.runtime import measure_peak_memory, speed_ratio
from autochunk_tvm.runtime.measure import vm_callable
from autochunk_tvm.search import flat_bindings, search_chunk_candidates
from tvm import relax

MIB = 1 << 20
RESULTS = os.path.join(os.path.dirname(__file__), "results")


class MLP(torch.nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 2048) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def mlp_case(seq: int = 8192, dim: int = 32, hidden: int = 2048):
    torch.manual_seed(0)
    args = (torch.randn(1, seq, dim),)
    mod = ac.from_torch(MLP(dim, hidden).eval(), args)
    cands = search_chunk_candidates(mod)
    # the whole MLP over the sequence: X in, Y out, the hidden layer inside
    cand = max((c for c in cands if c.extent == seq), key=lambda c: c.end - c.start)
    x_bytes = y_bytes = seq * dim * 4
    a_bytes = 3 * seq * hidden * 4  # GELU input, output and kernel workspace
    hoisted_bytes = 2 * dim * hidden * 4  # both weights transposed once, outside the loop
    return mod, args, cand, (x_bytes, hoisted_bytes, y_bytes, a_bytes)


def gpt_attention_case(seq: int = 1024):
    model, args = ac.models.gpt("small", seq_len=seq, n_layer=1)
    mod = ac.from_torch(model, args)
    cands = search_chunk_candidates(mod)
    bindings = flat_bindings(mod["main"])
    scored = [
        c
        for c in cands
        if any(
            getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.softmax"
            and c.axes[b.var.name].axis == 2
            for b in bindings[c.start : c.end + 1]
        )
    ]
    return mod, args, max(scored, key=lambda c: c.end - c.start)


def run(counts_memory, counts_speed, repeats: int) -> dict:
    results: dict = {"machine": platform.processor() or platform.machine(), "cases": {}}
    mod, args, cand, (x, hoisted, y, a) = mlp_case()
    base_ex = relax.build(mod, "llvm")
    unchunked = measure_peak_memory(base_ex, args)
    rows = [
        {
            "n": 1,
            "measured_bytes": unchunked.peak_bytes + x,
            "formula_bytes": x + hoisted + y + a,
            "static_bytes": ac.static_allocation(mod, "llvm").peak_bytes + x,
        }
    ]
    for n in counts_memory:
        lowered = lower_chunk_plan(
            mod, ChunkPlan.of((cand, ChunkPlan.chunk_len_for(cand, n))), "llvm"
        )
        peak = measure_peak_memory(relax.build(lowered, "llvm"), args)
        rows.append(
            {
                "n": n,
                "measured_bytes": peak.peak_bytes + x,
                "formula_bytes": x + hoisted + y + -(-a // n),
                "static_bytes": ac.static_allocation(lowered, "llvm").peak_bytes + x,
            }
        )
        print(
            f"mlp n={n}: measured {rows[-1]['measured_bytes'] / MIB:.1f} MiB, "
            f"X+Y+A/n {rows[-1]['formula_bytes'] / MIB:.1f} MiB",
            flush=True,
        )
    for row in rows:
        row["error"] = row["measured_bytes"] / row["formula_bytes"] - 1
    results["cases"]["mlp"] = {
        "memory": rows,
        "speed": _speed(mod, args, cand, counts_speed, repeats),
    }
    mod, args, cand = gpt_attention_case()
    results["cases"]["gpt-attention"] = {"speed": _speed(mod, args, cand, counts_speed, repeats)}
    return results


def _speed(mod, args, cand, counts, repeats) -> list[dict]:
    unchunked = vm_callable(relax.build(mod, "llvm"), args)
    rows = []
    for n in counts:
        n = min(n, cand.extent)
        plan = ChunkPlan.of((cand, ChunkPlan.chunk_len_for(cand, n)))
        chunked = vm_callable(relax.build(lower_chunk_plan(mod, plan, "llvm"), "llvm"), args)
        ratio = speed_ratio(chunked, unchunked, warmup=1, repeats=repeats)
        rows.append({"n": n, "chunk_len": plan.steps[0].chunk_len, "time_ratio": ratio})
        print(f"  n={n}: chunked/unchunked time {ratio:.3f}", flush=True)
    return rows


def write(results: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "chunked_memory_speed.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [
        "# Lowered chunk plans on CPU (llvm)",
        "",
        (
            "Reproduce: `python benchmarks/chunked_memory_speed.py`. Measured = peak RSS growth "
            "of one call in a fresh process + the input X (allocated before the call)."
        ),
        "",
        "## Memory: MLP region, X = Y = 1 MiB (+0.5 MiB hoisted weight transposes), A = 192 MiB",
        "",
        "| n | measured MiB | X + Y + A/n MiB | error | static prediction MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results["cases"]["mlp"]["memory"]:
        lines.append(
            f"| {r['n']} | {r['measured_bytes'] / MIB:.1f} | {r['formula_bytes'] / MIB:.1f} | "
            f"{r['error'] * 100:+.1f}% | {r['static_bytes'] / MIB:.1f} |"
        )
    for name, case in results["cases"].items():
        lines += [
            "",
            f"## Speed: {name}, chunked / unchunked time (median, interleaved)",
            "",
            "| n | chunk length | time ratio |",
            "|---:|---:|---:|",
        ]
        for r in case["speed"]:
            lines.append(f"| {r['n']} | {r['chunk_len']} | {r['time_ratio']:.3f} |")
    with open(os.path.join(RESULTS, "chunked_memory_speed.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args(argv)
    results = run((2, 4, 8, 16), (2, 4, 8, 16, 64), opts.repeats)
    write(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
