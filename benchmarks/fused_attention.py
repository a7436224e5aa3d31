"""AutoChunk on top of fused attention (paper Fig. 6).

The models are exported with ``fused_attention=True``: attention stays one op
(``R.nn.attention``) and never materialises the score matrix, the way memory-efficient
attention kernels do. The unchunked fused model is the reference (1.0). AutoChunk then runs at
budgets of 50% down to 10% of that reference; the result is the smallest measured memory whose
time stays within 5% of the reference's (the paper's rule). A sweep stops at the first budget
it cannot reach.

    python benchmarks/fused_attention.py                               # CPU sizes
    python benchmarks/fused_attention.py --target cuda --preset paper  # on a GPU machine

Writes ``benchmarks/results/fused_attention[_<target>].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import time

import common

FRACTIONS = (0.5, 0.4, 0.3, 0.2, 0.1)
MAX_LOSS = 1.05


def run_model(name: str, target: str, preset: str, repeats: int) -> list[dict]:
    sizes = common.sizes_for(preset)[name]
    unfused_peak = common.load(name, preset, sizes, target).plain_peak
    fused = common.load(name, preset, sizes, target, fused_attention=True)
    rows = []
    for fraction in FRACTIONS:
        sel = fused.select(fraction)
        row = {
            "model": name,
            "fraction": fraction,
            "budget_bytes": sel.budget,
            "reached": sel.reached,
            "fused_unchunked_peak": fused.plain_peak,
            "unfused_unchunked_peak": unfused_peak,
            **fused.measure(sel.plan, repeats),
        }
        rows.append(row)
        print(
            f"{name:9s} {fraction:4.0%}: {row['measured_peak'] / common.MIB:8.2f} MiB "
            f"({row['memory_fraction']:5.1%} of fused {fused.plain_peak / common.MIB:.1f}; "
            f"unfused {unfused_peak / common.MIB:.1f}), time x{row['speed_ratio']:.3f}",
            flush=True,
        )
        if not sel.reached:
            break
    return rows


def best(rows: list[dict], name: str) -> dict | None:
    """The smallest-memory row of ``name`` within the speed-loss limit."""
    ok = [r for r in rows if r["model"] == name and r["speed_ratio"] <= MAX_LOSS]
    return min(ok, key=lambda r: r["measured_peak"]) if ok else None


def report(rows: list[dict], info: dict) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [
        "# AutoChunk on top of fused attention (paper Fig. 6)",
        "Reference: the unchunked model with attention as one fused op. Memory: measured peak "
        "of one call (fresh process); time: ratio to the reference, interleaved (median).",
        "",
        f"Further reduction within {MAX_LOSS - 1:.0%} speed loss:",
        "",
        "| model | unfused MiB | fused MiB | fused + AutoChunk MiB | % of fused | "
        "further reduction | time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in models:
        first = next(r for r in rows if r["model"] == name)
        b = best(rows, name)
        if b is None:
            lines.append(
                f"| {name} | {first['unfused_unchunked_peak'] / common.MIB:.2f} | "
                f"{first['fused_unchunked_peak'] / common.MIB:.2f} | none within the limit "
                "| | | |"
            )
            continue
        lines.append(
            f"| {name} | {b['unfused_unchunked_peak'] / common.MIB:.2f} | "
            f"{b['fused_unchunked_peak'] / common.MIB:.2f} | {b['measured_peak'] / common.MIB:.2f} "
            f"| {b['memory_fraction']:.1%} | {1 - b['memory_fraction']:.1%} | "
            f"{b['speed_ratio']:.3f} |"
        )
    lines += [
        "",
        "Every budget:",
        "",
        "| model | budget | reached | measured MiB | % of fused | time ratio | regions | "
        "max abs error |",
        "|---|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['fraction']:.0%} | {'yes' if r['reached'] else 'no'} | "
            f"{r['measured_peak'] / common.MIB:.2f} | {r['memory_fraction']:.1%} | "
            f"{r['speed_ratio']:.3f} | {r['regions']} | {r['max_abs_error']:.1e} |"
        )
    base = common.write(f"fused_attention{common.suffix(info['target'])}", info, rows, lines)
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in models:
        pts = sorted((r["memory_fraction"], r["speed_ratio"]) for r in rows if r["model"] == name)
        ax.plot(*zip(*pts), "o-", label=name)
    ax.axhline(MAX_LOSS, color="k", lw=0.6, ls="--", label=f"{MAX_LOSS - 1:.0%} loss")
    common.save_plot(
        fig,
        ax,
        base,
        xlabel="measured activation memory / fused-attention unchunked",
        ylabel="time / fused-attention unchunked",
        title=f"AutoChunk with fused attention ({info['target']})",
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--models", nargs="*", default=["gpt", "vit"])
    opts = parser.parse_args(argv)
    began = time.time()
    rows = []
    for name in opts.models:
        rows += run_model(name, opts.target, opts.preset, opts.repeats)
    report(rows, common.meta("fused_attention.py", opts, began, argv, models=opts.models))


if __name__ == "__main__":
    main()
