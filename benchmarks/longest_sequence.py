"""The longest input that fits a fixed memory cap, unchunked against AutoChunk (paper §4.2).

The cap is the unchunked model's activation peak at the base size (the sizes of the other
experiments), so the unchunked maximum is the base size itself. For AutoChunk the input grows
(sequence length for GPT; residues for the Evoformer; image side for ViT and UNet) by doubling
until AutoChunk's smallest plan no longer fits the cap, then bisects between the last size
that fitted and the first that did not. Probes use the memory estimate; the largest size found
is then built and measured (fresh process) to confirm that it really fits. Selection may go
down to 512 chunks per region here (``--max-chunks``; ``select_plan`` stops at 64 by default,
which at 8x the length leaves each chunk of a quadratic tensor 8x larger).

    python benchmarks/longest_sequence.py                               # CPU sizes
    python benchmarks/longest_sequence.py --target cuda --preset paper  # on a GPU machine

Writes ``benchmarks/results/longest_sequence[_<target>].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import importlib
import time

import common

# The knob that sets each model's input length, and the granularity it must keep.
KNOBS = {
    "gpt": ("seq_len", 64),
    "vit": ("image_size", 16),  # the patch side
    "evoformer": ("n_res", 8),
    "unet": ("image_size", 64),  # 8x latent, halved twice or thrice down the UNet
}


def _fits(name, preset, sizes, knob, length, target, cap, log, max_chunks):
    """AutoChunk's smallest plan at ``length`` and whether its estimate fits ``cap``."""
    began = time.time()
    subject = common.load(name, preset, {**sizes, knob: length}, target)
    sel = subject.select(1, max_chunks=max_chunks)  # the smallest plan selection finds
    fits = sel.plan.estimated_peak <= cap
    log.append(
        {
            "length": length,
            "smallest_estimated_peak": sel.plan.estimated_peak,
            "unchunked_estimated_peak": sel.unchunked_peak,
            "fits": fits,
            "seconds": round(time.time() - began, 1),
        }
    )
    print(
        f"  {knob}={length}: smallest {sel.plan.estimated_peak / common.MIB:.1f} MiB "
        f"(unchunked {sel.unchunked_peak / common.MIB:.1f}) -> {'fits' if fits else 'over'}",
        flush=True,
    )
    return subject, sel, fits


def run_model(name: str, target: str, preset: str, bisections: int, max_chunks: int) -> dict:
    sizes = common.sizes_for(preset)[name]
    knob, step = KNOBS[name]
    preset_len = getattr(
        importlib.import_module(f"autochunk_tvm.models.{name}").PRESETS[preset], knob
    )
    base_len = sizes.get(knob, preset_len)
    base = common.load(name, preset, sizes, target)
    cap = base.select(1.0).unchunked_peak  # the unchunked estimate at the base size
    print(f"{name}: cap {cap / common.MIB:.1f} MiB = unchunked at {knob}={base_len}", flush=True)
    log: list[dict] = []
    good = (base, base.select(1, max_chunks=max_chunks), base_len)
    length = base_len
    bad = None
    while bad is None:
        length *= 2
        subject, sel, fits = _fits(name, preset, sizes, knob, length, target, cap, log, max_chunks)
        if fits:
            good = (subject, sel, length)
        else:
            bad = length
    for _ in range(bisections):
        mid = (good[2] + bad) // 2 // step * step
        if mid in (good[2], bad):
            break
        subject, sel, fits = _fits(name, preset, sizes, knob, mid, target, cap, log, max_chunks)
        if fits:
            good = (subject, sel, mid)
        else:
            bad = mid
    subject, sel, length = good
    ex = subject.build(sel.plan)
    measured = subject.peak(ex)
    row = {
        "model": name,
        "knob": knob,
        "cap_bytes": cap,
        "unchunked_max": base_len,
        "autochunk_max": length,
        "first_over": bad,
        "ratio": length / base_len,
        "estimated_peak": sel.plan.estimated_peak,
        "measured_peak": measured,
        "fits_measured": measured <= cap,
        "regions": len(sel.plan.steps),
        "max_chunks": max_chunks,
        "probes": log,
    }
    print(
        f"{name}: {knob} {base_len} -> {length} (x{row['ratio']:.2f}; {bad} does not fit), "
        f"measured {measured / common.MIB:.1f} MiB of cap {cap / common.MIB:.1f}",
        flush=True,
    )
    return row


def report(rows: list[dict], info: dict) -> None:
    lines = [
        "# Longest input under a fixed memory cap (paper §4.2)",
        "Cap: the unchunked activation peak (estimated) at the base size, so the unchunked "
        "maximum is the base size. AutoChunk: the largest size whose smallest plan fits the cap "
        "(doubling, then bisection; 'first over' is the smallest size found not to fit). The "
        "measured column is the built plan at that size, one call in a fresh process.",
        "",
        "| model | input knob | cap MiB | unchunked max | AutoChunk max | first over | "
        "extension | measured MiB | fits |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['knob']} | {r['cap_bytes'] / common.MIB:.1f} | "
            f"{r['unchunked_max']} | {r['autochunk_max']} | {r['first_over']} | "
            f"x{r['ratio']:.2f} | {r['measured_peak'] / common.MIB:.1f} | "
            f"{'yes' if r['fits_measured'] else 'no'} |"
        )
    base = common.write(f"longest_sequence{common.suffix(info['target'])}", info, rows, lines)
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    names = [r["model"] for r in rows]
    ax.bar(names, [1.0] * len(rows), label="unchunked", color="0.7")
    ax.bar(names, [r["ratio"] - 1 for r in rows], bottom=1.0, label="AutoChunk")
    ax.set_ylabel("max input length / unchunked max")
    ax.set_title(f"Longest input under the same memory cap ({info['target']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + ".png")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--models", nargs="*", default=["gpt", "vit", "evoformer"])
    parser.add_argument("--bisections", type=int, default=2)
    parser.add_argument(
        "--max-chunks",
        type=int,
        default=512,
        help="finest chunking selection tries (select_plan's max_chunks; its default is 64, "
        "which caps how far a quadratic tensor shrinks at long lengths)",
    )
    opts = parser.parse_args(argv)
    began = time.time()
    rows = [
        run_model(name, opts.target, opts.preset, opts.bisections, opts.max_chunks)
        for name in opts.models
    ]
    report(rows, common.meta("longest_sequence.py", opts, began, argv, models=opts.models))


if __name__ == "__main__":
    main()
