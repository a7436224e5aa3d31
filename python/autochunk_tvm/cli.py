"""Command line of autochunk-tvm: compile PyTorch programs under an activation-memory budget.

    autochunk-tvm demo                                  # a built-in GPT at sequence 2048, on CPU
    autochunk-tvm plan MODEL.pt2 --budget 0.2           # the chunk plan and plots, no build
    autochunk-tvm compile MODEL.pt2 --budget 0.2 --target cuda -o model.so
    autochunk-tvm bench --only throughput_memory        # the benchmark suite (source checkout)

Results go to standard output; progress (one line per step, with its time) to standard error,
so --quiet or a redirect keeps the results alone; --verbose adds the passes' own log.

When the import stops at an op the importer lacks, the error says where the model calls it
and which of these `plan` and `compile` options helps: --converters FILE (a Python file that
defines CONVERTERS = {'op.overload': fn}, from_torch's custom_convert_map) or --decompose OP
(torch's decomposition of the op, where that leaves only ops the importer knows).

Exit status: 0 done; 2 bad input (a path, a file that is not a torch.export program, a budget
that does not parse, an op the importer lacks, a converters file that does not load); 3 the
budget is unreachable (the message gives the smallest reachable peak); 4 a CUDA device is
needed and none is visible; 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_NO_DEVICE = 0, 1, 2, 3, 4

MODELS = ("gpt", "vit", "evoformer", "unet")
# The demo's default sizes for the "small" preset: long enough that attention dominates.
DEFAULT_SIZES = {"gpt": {"seq_len": 2048}, "vit": {"image_size": 512}, "evoformer": {}, "unet": {}}
TICK_S = 1.0  # how often a running step's elapsed time is redrawn on a terminal

logger = logging.getLogger("autochunk_tvm")


class CliError(Exception):
    """An error the user can act on; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


class Progress:
    """Numbered step lines on standard error: ``[2/5] selecting a plan ... 12.3 s``.

    On a terminal the elapsed time of the running step is redrawn every ``TICK_S`` seconds, so
    a long search or build shows that it is alive; elsewhere (logs, CI) each step is one line.
    """

    def __init__(self, total: int, quiet: bool = False, stream: Any = None):
        self.total = total
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.done = 0

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        head = f"[{self.done}/{self.total}] {title} ..."
        began = time.perf_counter()
        stop = threading.Event()
        ticker = None
        if not self.quiet:
            if self.stream.isatty():

                def tick():
                    while not stop.wait(TICK_S):
                        elapsed = time.perf_counter() - began
                        self.stream.write(f"\r{head} {elapsed:.0f} s")
                        self.stream.flush()

                ticker = threading.Thread(target=tick, daemon=True)
                self.stream.write(head)
                self.stream.flush()
                ticker.start()
            else:
                print(head, file=self.stream, flush=True)
        outcome = "done in"
        try:
            yield
        except BaseException:
            outcome = "failed after"
            raise
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
            if not self.quiet:
                elapsed = time.perf_counter() - began
                if self.stream.isatty():
                    self.stream.write(f"\r{head} {outcome} {elapsed:.1f} s\n")
                else:
                    print(f"      {outcome} {elapsed:.1f} s", file=self.stream, flush=True)


# ---- shared steps ---------------------------------------------------------------------------


def _target(name: str):
    from .analysis.planned import as_target

    try:
        return as_target(name)
    except Exception as err:  # TVM raises several types for a bad target
        raise CliError(f"unknown target {name!r} ({err}); use llvm or cuda") from err


def _need_device(target) -> None:
    from .runtime.measure import cuda_available

    if target.kind.name == "cuda" and not cuda_available():
        raise CliError(
            "this step runs the model on a CUDA GPU and none is visible; use --target llvm, or "
            "`autochunk-tvm compile --target cuda` (which needs nvcc, not a GPU)",
            EXIT_NO_DEVICE,
        )


def _load_program(path: str, converters: str | None = None, decompose: list[str] | None = None):
    """A Relax module from a saved torch.export program, with the converters of a
    ``--converters`` file and the ``--decompose`` ops; all three are checked before the
    (slow) load."""
    from .frontend import UnsupportedOperatorError, decompositions_for, from_torch
    from .frontend.converters import load_converters

    if not os.path.isfile(path):
        what = f"{path!r} is a directory" if os.path.isdir(path) else f"no such file: {path!r}"
        raise CliError(
            f"{what}; give the path of a .pt2 saved with "
            "torch.export.save(torch.export.export(model, args), path)"
        )
    custom = None
    if converters is not None:
        try:
            custom = load_converters(converters)
        except (OSError, ValueError, TypeError) as err:
            raise CliError(f"--converters: {err}") from err
    try:
        decompositions_for(decompose or ())
    except ValueError as err:
        raise CliError(f"--decompose: {err}") from err
    try:
        return from_torch(path, custom_convert_map=custom, decompose=decompose or ())
    except (ValueError, TypeError, UnsupportedOperatorError) as err:
        raise CliError(str(err)) from err


def _select(mod, target, args: argparse.Namespace):
    """``select_plan`` with the command line's budget and options; an unreachable budget
    becomes exit status 3 with the smallest reachable peak."""
    from .selection import BudgetUnreachableError, OverBudgetWarning, select_plan
    from .selection.symbolic import UnboundedShapeError

    budget = args.budget
    options: dict[str, Any] = {"strict": not args.allow_over_budget}
    if args.max_chunks is not None:
        options["max_chunks"] = args.max_chunks
    if args.bound:
        options["bounds"] = _bounds(args.bound)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OverBudgetWarning)
            selection = select_plan(mod, _budget_value(budget), target, **options)
        for w in caught:
            if isinstance(w.message, OverBudgetWarning):
                from .analysis import format_bytes

                print(
                    f"autochunk-tvm: warning: budget {budget} ({format_bytes(w.message.budget)}) "
                    "is unreachable; --allow-over-budget: using the smallest plan found, "
                    f"whose peak is {format_bytes(w.message.smallest_peak)}",
                    file=sys.stderr,
                )
            else:  # not ours to judge: shown as Python would
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return selection
    except UnboundedShapeError as err:
        raise CliError(
            f"{err.dims[0] if len(err.dims) == 1 else ', '.join(err.dims)}: symbolic without "
            "an upper bound, so the memory of a call cannot be bounded. Give the longest "
            f"length the model must serve with --bound {err.dims[0]}=N, or export it with "
            f"torch.export.Dim(..., max=N)"
        ) from err
    except BudgetUnreachableError as err:
        from .analysis import format_bytes

        raise CliError(
            f"budget {budget} ({format_bytes(err.budget)}) is unreachable: the smallest peak "
            "any chunk plan reaches is "
            f"{format_bytes(err.smallest_peak)} ({err.smallest_peak} bytes). Ask for at least "
            f"that (--budget {err.smallest_peak}), or pass --allow-over-budget to build the "
            "smallest plan anyway",
            EXIT_UNREACHABLE,
        ) from err


def _bounds(items: list[str]) -> dict[str, int]:
    """``--bound seq=8192`` values, checked."""
    bounds = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise CliError(f"--bound takes DIM=N with N a positive integer, got {item!r}")
        bounds[name] = int(value)
    return bounds


def _budget_value(text: str) -> int | float | str:
    """``--budget`` as :func:`parse_budget` takes it (``0.2`` a fraction, ``123`` bytes,
    ``20%``, ``2GiB``), checked before any work is done."""
    from .selection import parse_budget

    value: int | float | str = text
    for kind in (int, float):
        try:
            value = kind(text)
            break
        except ValueError:
            continue
    try:
        parse_budget(value, unchunked_peak=1)  # syntax and range only
    except ValueError as err:
        raise CliError(f"--budget: {err}") from err
    return value


def _apply(mod, selection, target):
    """The module with the selected plan lowered (the module itself for an empty plan)."""
    from .transform import apply_selection

    return apply_selection(mod, selection, target)


# ---- commands -------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    from tvm import relax

    import autochunk_tvm as ac
    from autochunk_tvm.analysis import format_bytes
    from autochunk_tvm.runtime.measure import output_arrays, vm_callable
    from autochunk_tvm.selection.tune import device_for

    target = _target(args.target)
    _need_device(target)
    overrides = dict(DEFAULT_SIZES[args.model] if args.preset == "small" else {})
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set takes FIELD=VALUE, got {item!r}")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    if args.dynamic and args.model != "gpt":
        raise CliError("--dynamic exports the built-in GPT with a dynamic length: use --model gpt")
    if args.dynamic:
        overrides["mask_from_positions"] = True  # what a dynamic export needs (models/gpt.py)
    progress = Progress(8 if args.measure else 6, args.quiet)

    how = " with a dynamic sequence length" if args.dynamic else ""
    with progress.step(
        f"importing {args.model} ({args.preset}, {overrides or 'preset sizes'}){how}"
    ):
        try:
            model, inputs = ac.models.FACTORIES[args.model](args.preset, **overrides)
        except (ValueError, TypeError) as err:
            raise CliError(str(err)) from err
        lengths, inputs_at = _demo_lengths(args.dynamic, inputs)
        if args.dynamic:
            import torch

            seq = torch.export.Dim("seq", min=1, max=lengths[-1])
            example = inputs_at(lengths[1])
            mod = ac.from_torch(model, example, dynamic_shapes={"idx": {1: seq}})
        else:
            mod = ac.from_torch(model, inputs)
    with progress.step("activation-memory profile of the Relax graph"):
        profile = ac.estimate_activation_memory(mod)
    print(profile.summary(top=args.top))
    with progress.step(
        f"selecting a chunk plan for a budget of {args.budget} on {target.kind.name}"
    ):
        selection = _select(mod, target, args)
    report = ac.PlanReport.of(mod, selection)
    print(report)
    with progress.step("building the unchunked and the chunked module"):
        plain = ac.build(mod, target)
        chunked_mod = _apply(mod, selection, target)
        chunked = relax.build(chunked_mod, target=target)
    device = device_for(target)
    runs = {
        n: (
            vm_callable(plain, inputs_at(n), device=device),
            vm_callable(chunked, inputs_at(n), device=device),
        )
        for n in lengths
    }
    at = f" at sequence lengths {', '.join(map(str, lengths))}" if args.dynamic else ""
    with progress.step(f"checking the chunked outputs against the unchunked ones{at}"):
        errors = []
        for run_plain, run_chunked in runs.values():
            got, want = output_arrays(run_chunked()), output_arrays(run_plain())
            errors.append(
                max(
                    float(np.max(np.abs(a.astype("float64") - b.astype("float64"))))
                    for a, b in zip(got, want, strict=True)
                )
            )
        err = max(errors)
    tolerance = _tolerance(str(want[0].dtype))
    if err > tolerance:
        raise CliError(
            f"the chunked build's outputs differ from the unchunked build's by {err:.3g} (more "
            f"than {tolerance:g}): this is a bug, please report it with this command line",
            EXIT_FAILED,
        )
    print(
        f"outputs: max abs difference chunked vs unchunked {err:.3g} (tolerance {tolerance:g})"
        + (f", at each of the lengths {', '.join(map(str, lengths))}" if args.dynamic else "")
    )
    with progress.step("plotting the memory profile"):
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)) or ".", exist_ok=True)
        # NOTE [main plot]: --plot gets the build's bytes, unchunked and chunked, with the
        # budget: the numbers printed below. The Relax-level profile (live tensors before
        # memory planning, a different quantity) goes beside it and says so on itself.
        name = f"{args.model} ({args.preset})"
        path = report.plot(args.plot, title=f"{name}: memory of one call")
        after = ac.estimate_activation_memory(chunked_mod)
        relax_path = profile.plot(
            os.path.splitext(args.plot)[0] + "_relax.png",
            title=f"{name}: live tensors of the Relax graph",
            compare=after,
        )
    print(
        f"plots: {path} (predicted build footprint: {report.memory_line()})\n"
        f"       {relax_path} (Relax-level profile, live tensors before TVM's memory "
        f"planning: peak {format_bytes(profile.peak_bytes)} -> {format_bytes(after.peak_bytes)})"
    )
    lines = [
        (
            f"memory (one call, {target.kind.name}): estimated "
            f"{format_bytes(selection.unchunked_peak)} -> {format_bytes(selection.estimate.peak)}"
            + (f" at the bound, length {lengths[-1]}, and below it" if args.dynamic else "")
        )
    ]
    if args.measure:
        with progress.step("measuring both builds in fresh processes"):
            m_plain = ac.measure_peak_memory(plain, inputs, target=target).peak_bytes
            m_chunked = ac.measure_peak_memory(chunked, inputs, target=target).peak_bytes
        lines.append(
            f"                        measured  {format_bytes(m_plain)} -> "
            f"{format_bytes(m_chunked)} ({m_chunked / max(1, m_plain):.0%} of unchunked)"
        )
        with progress.step(f"timing chunked against unchunked ({args.repeats} interleaved calls)"):
            ratios = {
                n: ac.speed_ratio(run_chunked, run_plain, repeats=args.repeats)
                for n, (run_plain, run_chunked) in runs.items()
            }
        if args.dynamic:
            lines.append(
                "speed: chunked/unchunked time "
                + ", ".join(f"{r:.3f} at length {n}" for n, r in ratios.items())
            )
        else:
            lines.append(f"speed: chunked/unchunked time {ratios[lengths[-1]]:.3f}")
    print("\n".join(lines))
    return EXIT_OK


def _demo_lengths(dynamic: bool, inputs):
    """The sequence lengths the demo runs at, and the model's inputs at a length: for
    ``--dynamic`` (the GPT's tokens), 1/8, 1/2 and all of the bound; otherwise the inputs as
    built, under the one length ``None``."""
    if not dynamic:
        return [None], lambda n: inputs
    (tokens,) = inputs
    full = tokens.shape[1]
    lengths = sorted({max(1, full // 8), max(1, full // 2), full})
    return lengths, lambda n: (tokens[:, :n],)


def _tolerance(dtype: str) -> float:
    """Largest difference accepted between chunked and unchunked outputs: the order of the
    dtype's rounding after reductions evaluated in another order."""
    return 1e-2 if dtype in ("float16", "bfloat16") else 1e-4


def _plan(args: argparse.Namespace) -> int:
    import json

    import autochunk_tvm as ac
    from autochunk_tvm.analysis import format_bytes

    target = _target(args.target)
    progress = Progress(3, args.quiet)
    with progress.step(f"importing {args.program}"):
        mod = _load_program(args.program, args.converters, args.decompose)
    with progress.step(
        f"selecting a chunk plan for a budget of {args.budget} on {target.kind.name}"
    ):
        selection = _select(mod, target, args)
    report = ac.PlanReport.of(mod, selection)
    print(report)
    with progress.step(f"writing plots and the report to {args.out_dir}"):
        os.makedirs(args.out_dir, exist_ok=True)
        stem = os.path.join(args.out_dir, os.path.splitext(os.path.basename(args.program))[0])
        name = os.path.basename(args.program)
        # NOTE [main plot]: the plan plot draws the build's bytes, unchunked and chunked, with
        # the budget: what the budget bounds and the report prints. The Relax-level profile
        # (live tensors before memory planning) is the second plot and says so on itself.
        plan_path = report.plot(f"{stem}_plan.png", title=f"{name}: memory of one call")
        profile = ac.estimate_activation_memory(mod)
        after = (
            ac.estimate_activation_memory(_apply(mod, selection, target))
            if selection.plan.steps or selection.plan.recompute
            else None
        )
        profile_path = profile.plot(
            f"{stem}_profile.png", title=f"{name}: live tensors of the Relax graph", compare=after
        )
        with open(f"{stem}_plan.json", "w") as f:
            json.dump(report.to_dict(), f, indent=1)
    relax_peaks = format_bytes(profile.peak_bytes) + (
        f" unchunked -> {format_bytes(after.peak_bytes)} chunked" if after is not None else ""
    )
    print(
        f"wrote {plan_path}: predicted build footprint, {report.memory_line()}\n"
        f"      {profile_path}: Relax-level profile (live tensors before TVM's memory "
        f"planning), peak {relax_peaks}\n"
        f"      {stem}_plan.json"
    )
    return EXIT_OK


def _compile(args: argparse.Namespace) -> int:
    from tvm import relax

    import autochunk_tvm as ac
    from autochunk_tvm.pipeline import cuda_kernels_compile_at_build

    target = _target(args.target)
    output = args.output or os.path.splitext(os.path.basename(args.program))[0] + ".so"
    progress = Progress(4 if args.budget else 3, args.quiet)
    with progress.step(f"importing {args.program}"):
        mod = _load_program(args.program, args.converters, args.decompose)
    selection = None
    if args.budget:
        with progress.step(
            f"selecting a chunk plan for a budget of {args.budget} on {target.kind.name}"
        ):
            selection = _select(mod, target, args)
        print(ac.PlanReport.of(mod, selection))
    with progress.step(f"building for {target.kind.name}"), target:  # target: see ac.build
        ex = relax.build(_apply(mod, selection, target) if selection else mod, target=target)
    with progress.step(f"exporting {output}"):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        ex.export_library(output)
    print(
        f"wrote {output}: load it with relax.VirtualMachine(tvm.runtime.load_module({output!r}), "
        "dev), or run it with the C++ runner (autochunk_run)"
    )
    if target.kind.name == "cuda" and not cuda_kernels_compile_at_build():
        print(
            f"note: this machine has no CUDA driver, so {output} holds the kernels' CUDA source: "
            "TVM compiles it when the library is loaded, which needs the apache-tvm Python "
            "package there (and cuda-bindings, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc); the "
            "C++ runner cannot load it. Compile where the CUDA driver is installed for a library "
            "the TVM runtime alone can load.",
            file=sys.stderr,
        )
    return EXIT_OK


def _benchmarks_dir(given: str | None) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = (
        [given]
        if given
        else [
            os.path.join(here, "..", "..", "benchmarks"),  # a source checkout (pip install -e .)
            os.path.join(os.getcwd(), "benchmarks"),
        ]
    )
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "paper.py")):
            return os.path.normpath(path)
    raise CliError(
        "the benchmark suite (benchmarks/paper.py) is part of the source checkout, not of the "
        "installed package: run from a clone of autochunk-tvm, or pass --bench-dir "
        f"(looked in {', '.join(os.path.normpath(p) for p in candidates if p)})"
    )


BENCHMARKS = (
    "throughput_memory",
    "expert_chunking",
    "fused_attention",
    "longest_sequence",
    "ablation",
)


def _bench(args: argparse.Namespace) -> int:
    bench_dir = _benchmarks_dir(args.bench_dir)
    if args.list:
        for name in BENCHMARKS:
            print(f"{name:<18} {os.path.join(bench_dir, name + '.py')}")
        return EXIT_OK
    if args.target == "cuda":
        _need_device(_target(args.target))
    cmd = [
        sys.executable,
        os.path.join(bench_dir, "paper.py"),
        "--target",
        args.target,
        "--preset",
        args.preset,
        "--repeats",
        str(args.repeats),
    ]
    if args.only:
        cmd += ["--only", *args.only]
    print("running " + " ".join(cmd), file=sys.stderr, flush=True)
    if args.dry_run:
        return EXIT_OK
    # paper.py prints "=== <experiment>" and its time per experiment: that is the progress.
    proc = subprocess.run(
        cmd, check=False, cwd=bench_dir, stdout=subprocess.DEVNULL if args.quiet else None
    )
    if proc.returncode != 0:
        raise CliError("some benchmarks failed (their tracebacks are above)", EXIT_FAILED)
    print(f"results in {os.path.join(bench_dir, 'results')}")
    return EXIT_OK


# ---- parser ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    common.add_argument("-v", "--verbose", action="store_true", help="log what the passes do")

    selecting = argparse.ArgumentParser(add_help=False)
    selecting.add_argument("--target", default="llvm", help="llvm (default) or cuda")
    selecting.add_argument(
        "--max-chunks",
        type=int,
        default=None,
        help="finest chunking selection may try (default 64)",
    )
    selecting.add_argument(
        "--bound",
        action="append",
        metavar="DIM=N",
        default=None,
        help="upper bound of a symbolic input dim (a dynamic length) that the program does not "
        "bound itself, e.g. --bound seq=8192; repeatable",
    )
    selecting.add_argument(
        "--allow-over-budget",
        action="store_true",
        help="when the budget is unreachable, use the smallest plan found",
    )

    parser = argparse.ArgumentParser(
        prog="autochunk-tvm",
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        parents=[common, selecting],
        help="a built-in model, unchunked and with AutoChunk, side by side",
    )
    demo.add_argument("--model", choices=MODELS, default="gpt")
    demo.add_argument("--preset", default="small", help="tiny | small | paper (default: small)")
    demo.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a model size, e.g. --set seq_len=4096",
    )
    demo.add_argument(
        "--budget",
        default="0.2",
        help="bytes, a fraction of the unchunked peak (0.2), '20%%' or '512MiB'",
    )
    demo.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        help="skip the fresh-process memory measurement and the timing",
    )
    demo.add_argument(
        "--dynamic",
        action="store_true",
        help="export the GPT with a dynamic sequence length (up to --set seq_len, the "
        "bound), build once, and run at 1/8, 1/2 and all of it",
    )
    demo.add_argument("--repeats", type=int, default=5, help="timed calls of each build")
    demo.add_argument("--top", type=int, default=8, help="bindings to list in the profile")
    demo.add_argument("--plot", default="out/memory_profile.png", help="PNG path")

    # For ops the importer lacks; the import error says which of the two applies to each op.
    importing = argparse.ArgumentParser(add_help=False)
    importing.add_argument(
        "--converters",
        metavar="FILE",
        default=None,
        help="a Python file defining CONVERTERS = {'op.overload': fn}, fn(node, importer) -> "
        "relax.Var, for ops the importer lacks (keys as the import error names them, e.g. "
        "'hypot.default'; from_torch's custom_convert_map format)",
    )
    importing.add_argument(
        "--decompose",
        action="append",
        metavar="OP",
        default=None,
        help="decompose OP (e.g. aten.addmv.default) with torch's decomposition before the "
        "import, when the import error says that helps; repeatable",
    )

    plan = sub.add_parser(
        "plan",
        parents=[common, selecting, importing],
        help="the chunk plan for a saved torch.export program, without building",
    )
    plan.add_argument("program", help="a .pt2 file written by torch.export.save")
    plan.add_argument("--budget", required=True, help="bytes, fraction, '20%%' or '2GiB'")
    plan.add_argument("--out-dir", default="out", help="where the plots and JSON go")

    comp = sub.add_parser(
        "compile",
        parents=[common, selecting, importing],
        help="compile a saved torch.export program to a .so",
    )
    comp.add_argument("program", help="a .pt2 file written by torch.export.save")
    comp.add_argument("--budget", default=None, help="omit to compile without chunking")
    comp.add_argument("-o", "--output", default=None, help="library path (default: NAME.so)")

    bench = sub.add_parser(
        "bench", parents=[common], help="run the paper's experiments (benchmarks/paper.py)"
    )
    bench.add_argument("--target", default="llvm")
    bench.add_argument("--preset", default="small", choices=["small", "paper"])
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--only", nargs="*", choices=BENCHMARKS, default=None)
    bench.add_argument("--bench-dir", default=None, help="the benchmarks/ folder of a checkout")
    bench.add_argument("--list", action="store_true", help="list the experiments and stop")
    bench.add_argument("--dry-run", action="store_true", help="print the command only")
    return parser


COMMANDS = {"demo": _demo, "plan": _plan, "compile": _compile, "bench": _bench}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
    )
    from . import console

    # What TVM and torch print that a CLI user cannot act on is held back (console.py names
    # each message and why); --verbose shows everything.
    shown = console.show_everything(args.verbose)
    try:
        with console.native_stderr_filtered():
            return _run(args)
    finally:
        console.show_everything(shown)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "budget", None) is not None:
            _budget_value(args.budget)  # a typo fails now, not after the import
        return COMMANDS[args.command](args)
    except CliError as err:
        print(f"autochunk-tvm: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("autochunk-tvm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a last resort that still says what happened
        if args.verbose:
            raise
        print(
            f"autochunk-tvm: error: {type(err).__name__}: {err}\n(run with --verbose for the "
            "traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
