"""Command line: ``autochunk-tvm demo`` - the README's main job.

For now (foundation) the demo imports a built-in model, prints its activation-memory profile,
predicts what a build will allocate, measures it in a fresh process, and writes the profile
plot. Chunking joins it when the AutoChunk pass lands.
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_SIZES = {"gpt": {"seq_len": 2048}, "vit": {"image_size": 512}, "evoformer": {}, "unet": {}}


def _demo(args: argparse.Namespace) -> int:
    import autochunk_tvm as ac
    from autochunk_tvm.analysis import format_bytes

    overrides = dict(DEFAULT_SIZES[args.model] if args.preset == "small" else {})
    for item in args.set or []:
        key, _, value = item.partition("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    model, inputs = ac.models.FACTORIES[args.model](args.preset, **overrides)
    print(f"[1/4] importing {args.model} ({args.preset}, {overrides or 'preset sizes'})")
    mod = ac.from_torch(model, inputs)
    print("[2/4] activation-memory profile of the Relax graph")
    profile = ac.estimate_activation_memory(mod)
    print(profile.summary(top=args.top))
    print(f"[3/4] what a build for {args.target} will allocate during one call")
    static = ac.static_allocation(mod, args.target)
    print(
        f"  predicted {format_bytes(static.peak_bytes)} (planned storage "
        f"{format_bytes(static.planned_bytes)}, largest kernel workspace "
        f"{format_bytes(static.workspace_bytes)}, outputs {format_bytes(static.output_bytes)})"
    )
    if args.measure:
        print("[4/4] measuring one call in a fresh process")
        measured = ac.measure_peak_memory(mod, inputs, target=args.target)
        err = (static.peak_bytes - measured.peak_bytes) / max(1, measured.peak_bytes)
        print(f"  measured {format_bytes(measured.peak_bytes)} ({err:+.1%} predicted vs measured)")
    path = profile.plot(args.plot, title=f"{args.model} ({args.preset}): live activation memory")
    print(f"profile plot written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autochunk-tvm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log pass progress")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="profile a built-in model's activation memory")
    demo.add_argument("--model", choices=["gpt", "vit", "evoformer", "unet"], default="gpt")
    demo.add_argument("--preset", default="small", help="tiny | small | paper (default: small)")
    demo.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a size")
    demo.add_argument("--target", default="llvm", help="llvm (default) or cuda")
    demo.add_argument("--no-measure", dest="measure", action="store_false")
    demo.add_argument("--top", type=int, default=8, help="bindings to list")
    demo.add_argument("--plot", default="out/memory_profile.png", help="PNG path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return _demo(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"autochunk-tvm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
