"""Draw memory plots in the model's terms: operators and modules the user wrote, bytes in
readable units, and a line on the figure that says what is counted.

Two quantities are drawn, and they differ:

* the **Relax-level profile** (:class:`~autochunk_tvm.analysis.MemoryProfile`): bytes of the
  tensors of the imported graph that are live at each binding, before TVM's memory planning;
* the **build footprint** (:class:`~autochunk_tvm.PlanReport`): what a build allocates during
  one call, predicted through TVM's memory plan and the VM's allocators. A budget bounds this.

Figures are made with ``matplotlib.figure.Figure`` directly (no pyplot state, no display), so a
caller can inspect one (:meth:`MemoryProfile.figure`, :meth:`PlanReport.figure`) or save it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .memory import format_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .memory import MemoryProfile

RELAX_NOTE = (
    "Relax level: live tensors of the imported graph, before TVM's memory planning. "
    "A build allocates other bytes, and the budget bounds those, not these."
)
BUILD_NOTE = (
    "Predicted bytes the build allocates during one call (TVM's memory plan through the VM's "
    "allocators): the quantity the budget bounds."
)
FIGSIZE = (10, 5.2)  # inches; wide enough for a legend of two columns under the axes
DPI = 120
MAX_MODULE_TICKS = 16  # more module names than this on the x axis would overlap
MIN_MODULE_TICKS = 4  # fewer layers than this: mark the modules inside them instead
MAX_ENTRY_CHARS = 80  # a legend entry of two columns across FIGSIZE at fontsize 8
# Shades of the chunked regions, one per group of alike regions (their curves use C0/C1);
# groups past these share OTHER_REGIONS_COLOR and one legend entry.
REGION_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
OTHER_REGIONS_COLOR = "0.55"
_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_INDEX = re.compile(r"^\d+$")


def new_figure(title: str, note: str) -> tuple[Figure, Axes]:
    """A figure with one axes, ``title`` on top and ``note`` (what is counted) under it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(title, fontsize=11)
    ax.set_title(note, fontsize=8, color="0.35")
    return fig, ax


def byte_unit(largest: int) -> tuple[str, int]:
    """The binary unit in which ``largest`` bytes reads best on an axis, and its size."""
    for name, size in _UNITS:
        if largest >= size:
            return name, size
    return "B", 1


def finish(fig: Figure, ax: Axes, *, top: float, ncols: int = 2) -> Figure:
    """Axis from 0 with a little room above ``top``, a grid, and the legend under the axes,
    where it cannot cover a curve."""
    from matplotlib.lines import Line2D

    ax.set_ylim(0, top * 1.08 if top > 0 else 1)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # curves and the budget first, then the shaded regions
    order = sorted(range(len(handles)), key=lambda i: not isinstance(handles[i], Line2D))
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside lower center",
        ncols=ncols,
        fontsize=8,
        frameon=False,
    )
    return fig


def save_figure(fig: Figure, path: str) -> str:
    """Write ``fig`` as a PNG at ``path`` (its folder is made); returns ``path``. In a Jupyter
    kernel the PNG is also shown below the cell, as a notebook reader expects of a plot."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    show_in_notebook(path)
    return path


def show_in_notebook(path: str) -> None:
    """Display the PNG at ``path`` inline when running in a Jupyter kernel; nothing elsewhere
    (a script, the CLI, the test suite's notebook runner), and IPython is never imported here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "kernel"):
        return
    from IPython.display import Image, display

    display(Image(filename=path))


def mark_peak(ax: Axes, x: float, y: float, color: str) -> None:
    """A dot at a curve's peak; what it is goes in the curve's legend entry
    (:func:`peak_entry`), where it can neither overlap another label nor cover a curve."""
    ax.plot([x], [y], "o", color=color, ms=5, zorder=4)


def peak_entry(name: str, peak: int, where: str) -> str:
    """``unchunked: peak 3.54 MiB at softmax in blocks.0.attn``."""
    return shorten(f"{name}: peak {format_bytes(peak)}" + (f" at {where}" if where else ""))


def shorten(text: str, most: int = MAX_ENTRY_CHARS) -> str:
    """``text`` cut in the middle to ``most`` characters, so that two legend columns fit the
    figure's width whatever the module paths."""
    if len(text) <= most:
        return text
    keep = most - 1
    return text[: keep - keep // 2] + "\u2026" + text[len(text) - keep // 2 :]


def module_segment(path: str, finer: bool = False) -> str:
    """The part of a module path that names a layer: up to its first index
    (``blocks.0.attn`` -> ``blocks.0``), else its first component (``lm_head``); with
    ``finer``, one component more (``blocks.0.attn``)."""
    parts = path.split(".") if path else []
    cut = next((k + 1 for k, part in enumerate(parts) if _INDEX.match(part)), min(1, len(parts)))
    return ".".join(parts[: cut + 1 if finer else cut])


def _module_runs(modules: Sequence[str], finer: bool) -> list[tuple[int, int, str]]:
    """``(start, length, segment)`` of each run of operators in one module segment; a run
    continues across operators with no module (the model's own ``forward``)."""
    runs: list[tuple[int, int, str]] = []
    for i, path in enumerate(modules):
        segment = module_segment(path, finer)
        if not segment:
            continue
        if runs and runs[-1][2] == segment:
            start = runs[-1][0]
            runs[-1] = (start, i - start + 1, segment)
        else:
            runs.append((i, 1, segment))
    return runs


def module_ticks(ax: Axes, modules: Sequence[str]) -> bool:
    """Put the module where each run of operators starts on the x axis (``wte``,
    ``blocks.0``, ``blocks.1``, ``lm_head``); False (axis untouched) when no module is known.

    A model of one or two layers is marked one level deeper (``blocks.0.attn``,
    ``blocks.0.mlp``). At most :data:`MAX_MODULE_TICKS`, spaced at least
    ``1/MAX_MODULE_TICKS`` of the axis apart so that the names do not overlap; the modules
    with the longest runs (the layers) are kept first.
    """
    runs = _module_runs(modules, finer=False)
    if len(runs) < MIN_MODULE_TICKS:
        runs = max(runs, _module_runs(modules, finer=True), key=len)
    if not runs:
        return False
    gap = max(1, len(modules)) / MAX_MODULE_TICKS
    kept: list[tuple[int, str]] = []
    for start, _, segment in sorted(runs, key=lambda r: (-r[1], r[0])):
        if all(abs(start - other) >= gap for other, _ in kept):
            kept.append((start, segment))
    kept.sort()
    ax.set_xticks([i for i, _ in kept], [name for _, name in kept], rotation=30, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    return True


def per_operator(footprint: Sequence[int], positions: Sequence[int], n: int) -> list[int]:
    """Bytes held while each of ``n`` high-level operators runs: the most that any of its
    lowered bindings holds (``positions[j]`` is the operator lowered binding ``j`` belongs to;
    bindings past the last operator count for the last one).

    An operator with no lowered binding of its own is computed by the next one that has one
    (it is inside a chunked region, whose composite call belongs to the region's last
    operator), so it takes that one's bytes.
    """
    held: list[int | None] = [None] * n
    for value, pos in zip(footprint, positions, strict=True):
        p = min(pos, n - 1)
        held[p] = value if held[p] is None else max(held[p], value)
    following = None
    for i in range(n - 1, -1, -1):
        if held[i] is None:
            held[i] = following
        else:
            following = held[i]
    previous = 0
    for i in range(n):  # trailing operators with nothing after them keep the last value
        if held[i] is None:
            held[i] = previous
        previous = held[i]
    return [int(v) for v in held]


def aligned_positions(names: Sequence[str], other: Sequence[str]) -> list[int] | None:
    """Where each binding named in ``other`` falls among ``names``: at the binding of the same
    name, else at the next one that has one (a chunked region's composite call, at its last
    operator). ``None`` when fewer than half of ``other`` are found by name, so the two are not
    one program before and after a rewrite."""
    index = {name: i for i, name in enumerate(names)}
    if not other or sum(name in index for name in other) * 2 < len(other):
        return None
    out = [len(names) - 1] * len(other)
    following = len(names) - 1
    for j in range(len(other) - 1, -1, -1):
        following = index.get(other[j], following)
        out[j] = following
    return out


def profiles_figure(profiles: Sequence[MemoryProfile], title: str | None = None) -> Figure:
    """The Relax-level profile(s), live bytes per binding, each peak labelled with what it
    computes (:attr:`BindingMemory.label`), and :data:`RELAX_NOTE` on the figure.

    With two profiles of one program (before and after chunking), the second is drawn against
    the operators of the first, matched by binding name; profiles of unrelated functions
    share the x axis as the fraction of the function executed.
    """
    first = profiles[0]
    fig, ax = new_figure(title or f"activation memory of {first.function}", RELAX_NOTE)
    names = [b.name for b in first.bindings]
    n = len(names)
    largest = max((p.peak_bytes for p in profiles), default=0)
    unit, scale = byte_unit(largest)
    if len(profiles) <= 2:
        labels = ["live tensors"] if len(profiles) == 1 else ["unchunked", "chunked"]
    else:
        labels = [p.function for p in profiles]
    aligned = [list(range(n))] + [
        aligned_positions(names, [b.name for b in p.bindings]) for p in profiles[1:]
    ]
    by_fraction = any(a is None for a in aligned)
    for k, (profile, label) in enumerate(zip(profiles, labels)):
        color = f"C{k}"
        values = [b.live_bytes for b in profile.bindings]
        if by_fraction:
            m = max(1, len(values) - 1)
            xs: list[float] = [i / m for i in range(len(values))]
            ys = values
            peak_x = xs[profile.peak_index] if profile.peak_index >= 0 else 0.0
        else:
            xs = list(range(n))
            ys = per_operator(values, aligned[k], n) if n else []
            peak_x = aligned[k][profile.peak_index] if profile.peak_index >= 0 else 0
        ax.step(
            xs,
            [v / scale for v in ys],
            where="mid",
            lw=1.2,
            color=color,
            label=peak_entry(label, profile.peak_bytes, profile.peak_label),
        )
        if profile.peak_index >= 0:
            mark_peak(ax, peak_x, profile.peak_bytes / scale, color)
    ticked = False if by_fraction else module_ticks(ax, _modules(first))
    if by_fraction:
        ax.set_xlabel("operator (fraction of the function)")
    elif ticked:
        ax.set_xlabel("operators of the model, in order (ticks: where each module starts)")
    else:
        ax.set_xlabel("operator (Relax binding, in order)")
    ax.set_ylabel(f"live tensors ({unit})")
    return finish(fig, ax, top=largest / scale)


def _modules(profile: MemoryProfile) -> list[str]:
    return [b.source.module if b.source is not None else "" for b in profile.bindings]


def plot_profiles(profiles: Sequence[MemoryProfile], path: str, title: str | None = None) -> str:
    """Write :func:`profiles_figure` as a PNG at ``path``; returns ``path``."""
    return save_figure(profiles_figure(profiles, title), path)
