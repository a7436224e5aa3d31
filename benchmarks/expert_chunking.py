"""AutoChunk against expert chunking (paper Figs. 7-8) on the Evoformer.

The expert baseline is the zoo's ``hand_chunked=True`` Evoformer: the same weights and math,
with the attention modules, the transitions and the outer product mean run in slices of
``chunk_size`` along their batch-like dimension, as OpenFold's ``chunk_layer`` does (64 at the
paper's 256 residues; 16 at the CPU size's 64 residues: 4 slices either way). AutoChunk runs on
the plain Evoformer. Both go through the same TVM build path (``relax.build`` for the target).

Reported, all measured:
* the minimum memory each reaches: the expert model as written, and AutoChunk's smallest plan;
* speed at equal memory: AutoChunk with the expert's measured peak as its budget;
* every speed is a ratio to the plain, unchunked Evoformer in the same process.

    python benchmarks/expert_chunking.py                              # CPU size
    python benchmarks/expert_chunking.py --target cuda --preset paper # on a GPU machine

Writes ``benchmarks/results/expert_chunking[_<target>].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import time

import common


def run(target: str, preset: str, repeats: int) -> list[dict]:
    sizes = common.sizes_for(preset)["evoformer"]
    plain = common.load("evoformer", preset, sizes, target)
    expert = common.load("evoformer", preset, sizes, target, hand_chunked=True)
    base = plain.plain_peak

    # The expert model is its own plan: compare its build with the plain model's.
    expert_ex = expert.build()
    expert_peak = expert.peak(expert_ex)
    rows = [
        {
            "method": "unchunked",
            "measured_peak": base,
            "memory_fraction": 1.0,
            "speed_ratio": 1.0,
            "max_abs_error": 0.0,
        },
        {
            "method": "expert (hand-chunked)",
            "measured_peak": expert_peak,
            "memory_fraction": expert_peak / base,
            "speed_ratio": plain.speed(expert_ex, repeats),
            "max_abs_error": max(
                float(abs(a - b).max())
                for a, b in zip(expert.outputs(expert_ex), plain.outputs(plain.build()))
            ),
        },
    ]
    equal = plain.select(expert_peak)
    rows.append(
        {
            "method": "AutoChunk at the expert's memory",
            "budget_bytes": expert_peak,
            "reached": equal.reached,
            **plain.measure(equal.plan, repeats),
        }
    )
    smallest = plain.select(1)
    rows.append(
        {
            "method": "AutoChunk minimum",
            "reached": smallest.reached,
            **plain.measure(smallest.plan, repeats),
        }
    )
    for r in rows:
        print(
            f"{r['method']:34s} {r['measured_peak'] / common.MIB:8.2f} MiB "
            f"({r['memory_fraction']:6.1%}), time x{r['speed_ratio']:.3f}",
            flush=True,
        )
    return rows


def report(rows: list[dict], info: dict) -> None:
    lines = [
        "# AutoChunk against expert chunking (Evoformer, paper Figs. 7-8)",
        "Memory: measured peak of one call (fresh process). Time: ratio to the unchunked plain "
        "Evoformer, interleaved in one process (median). Error: largest absolute difference "
        "from the unchunked output.",
        "",
        "| method | measured MiB | % of unchunked | time ratio | regions | max abs error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['measured_peak'] / common.MIB:.2f} | "
            f"{r['memory_fraction']:.1%} | {r['speed_ratio']:.3f} | {r.get('regions', '-')} | "
            f"{r['max_abs_error']:.1e} |"
        )
    base = common.write(f"expert_chunking{common.suffix(info['target'])}", info, rows, lines)
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        ax.scatter(r["memory_fraction"], 1 / r["speed_ratio"], s=40)
        ax.annotate(r["method"], (r["memory_fraction"], 1 / r["speed_ratio"]), fontsize=7)
    common.save_plot(
        fig,
        ax,
        base,
        xlabel="measured activation memory / unchunked",
        ylabel="throughput / unchunked",
        title=f"Evoformer: expert chunking vs AutoChunk ({info['target']})",
        legend=False,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    opts = parser.parse_args(argv)
    began = time.time()
    rows = run(opts.target, opts.preset, opts.repeats)
    report(rows, common.meta("expert_chunking.py", opts, began, argv))


if __name__ == "__main__":
    main()
