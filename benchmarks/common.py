"""What the paper-experiment benchmarks share: a zoo model imported for a target, plans built
from it, memory and speed measured the same way, results written as JSON and Markdown.

Memory is the measured peak of one call in a fresh process (``measure_peak_memory``); speed is
a time ratio against the unchunked build of the same model, interleaved in one process
(``speed_ratio``, median). Every chunked build's output is compared with the unchunked one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from typing import Any

import autochunk_tvm as ac
import numpy as np
import tvm
from autochunk_tvm.analysis.planned import as_target
from autochunk_tvm.runtime import output_arrays, speed_ratio
from autochunk_tvm.runtime.measure import vm_callable

MIB = 1 << 20
RESULTS = os.path.join(os.path.dirname(__file__), "results")

# CPU sizes: large enough that memory is well above measurement noise, small enough that the
# experiments finish in minutes on 2 cores. Paper sizes are for a GPU machine.
CPU_SIZES: dict[str, dict] = {
    "gpt": {"seq_len": 1024, "n_layer": 2},
    "vit": {"image_size": 256},
    "evoformer": {},
    "unet": {"image_size": 256},  # at 128 px a constant ~0.9 MiB runtime offset is 15%
}
PAPER_SIZES: dict[str, dict] = {
    "gpt": {"seq_len": 4096},
    "vit": {},
    "evoformer": {"n_res": 512},
    "unet": {},
}


def sizes_for(preset: str) -> dict[str, dict]:
    return CPU_SIZES if preset == "small" else PAPER_SIZES


@dataclasses.dataclass
class Subject:
    """One model imported for one target, with its unchunked build as the reference."""

    name: str
    mod: tvm.IRModule
    args: tuple
    target: tvm.target.Target
    device: Any
    estimator: Any = None
    _plain: Any = None
    _plain_peak: int | None = None
    _plain_out: list | None = None
    _plain_call: Any = None

    def build(self, plan=None):
        """The executable of ``plan`` (None: unchunked)."""
        # ac.build without a budget is relax.build, with TVM's noise held back (console.py)
        if plan is None or not plan.steps:
            if self._plain is None:
                self._plain = ac.build(self.mod, self.target)
            return self._plain
        return ac.build(ac.lower_chunk_plan(self.mod, plan, self.target), self.target)

    def peak(self, ex) -> int:
        return ac.measure_peak_memory(ex, self.args, target=self.target).peak_bytes

    @property
    def plain_peak(self) -> int:
        if self._plain_peak is None:
            self._plain_peak = self.peak(self.build())
        return self._plain_peak

    def call(self, ex):
        return vm_callable(ex, self.args, device=self.device)

    def outputs(self, ex) -> list[np.ndarray]:
        return output_arrays(self.call(ex)())

    def max_error(self, ex) -> float:
        """Largest absolute difference of ``ex``'s outputs from the unchunked build's."""
        if self._plain_out is None:
            self._plain_out = self.outputs(self.build())
        return max(
            float(np.max(np.abs(a - b))) if a.size else 0.0
            for a, b in zip(self.outputs(ex), self._plain_out)
        )

    def speed(self, ex, repeats: int) -> float:
        """Time of ``ex`` over the unchunked build's (interleaved, median)."""
        if self._plain_call is None:
            self._plain_call = self.call(self.build())
        return speed_ratio(self.call(ex), self._plain_call, repeats=repeats)

    def select(self, budget, **options):
        """``select_plan`` with this subject's estimator; ``strict=False`` unless given (a
        budget below the smallest reachable peak then gives that smallest plan)."""
        if self.estimator is None:
            self.estimator = ac.selection.PlanEstimator(self.mod, self.target)
        options.setdefault("strict", False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ac.select_plan(
                self.mod, budget, self.target, estimator=self.estimator, **options
            )

    def measure(self, plan, repeats: int) -> dict:
        """Measured peak, speed ratio and output error of ``plan``'s build."""
        ex = self.build(plan)
        peak = self.peak(ex)
        return {
            "measured_peak": peak,
            "memory_fraction": peak / self.plain_peak,
            "speed_ratio": self.speed(ex, repeats),
            "max_abs_error": self.max_error(ex),
            "regions": len(plan.steps),
            "chunks": [s.n_chunks for s in plan.steps],
        }


def load(name: str, preset: str, overrides: dict, target: Any, **model_options) -> Subject:
    """Import zoo model ``name`` at ``preset`` with ``overrides`` for ``target``."""
    model, args = ac.models.FACTORIES[name](preset, **overrides, **model_options)
    tgt = as_target(target)
    dev = tvm.cuda(0) if tgt.kind.name == "cuda" else tvm.cpu(0)
    return Subject(name, ac.from_torch(model, args), tuple(args), tgt, dev)


def meta(script: str, opts, began: float, argv=None, **extra) -> dict:
    """What the results record of their run; ``argv`` as given to the script's ``main``."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *args]),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "target": opts.target,
        "preset": opts.preset,
        "seconds": round(time.time() - began, 1),
        **extra,
    }


def revision() -> str:
    """Today's date and the commit results are made with (rows of a ``--merge`` differ)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except OSError:
        commit = "?"
    return f"{time.strftime('%Y-%m-%d')} {commit}".strip()


def suffix(target: str) -> str:
    return "" if target == "llvm" else f"_{target}"


def write(stem: str, info: dict, rows: list[dict], lines: list[str]) -> str:
    """Write ``results/<stem>.json`` and ``.md``; returns the path without extension."""
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, stem)
    with open(base + ".json", "w") as f:
        json.dump({"meta": info, "rows": rows}, f, indent=1)
    header = [
        f"Reproduce: `{info['command']}` ({info['machine']}, {info['cpus']} cores, "
        f"target {info['target']}, {info['seconds']:.0f} s).",
        "",
    ]
    with open(base + ".md", "w") as f:
        f.write("\n".join([lines[0], "", *header, *lines[1:]]) + "\n")
    return base


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, ax, base: str, *, xlabel: str, ylabel: str, title: str, legend=True) -> None:
    """Label, grid and write ``fig`` to ``<base>.png``, then close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
    fig.tight_layout()
    fig.savefig(base + ".png")
    pyplot().close(fig)


def add_common_args(parser) -> None:
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--preset", default="small", choices=["small", "paper"])
    parser.add_argument("--repeats", type=int, default=5)
