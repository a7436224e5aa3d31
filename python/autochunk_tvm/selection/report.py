"""A readable account of a selection: what was chunked, how finely, what it saves and costs."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..analysis.memory import binding_op, format_bytes
from ..analysis.plot import (
    BUILD_NOTE,
    OTHER_REGIONS_COLOR,
    REGION_COLORS,
    byte_unit,
    finish,
    mark_peak,
    module_ticks,
    new_figure,
    peak_entry,
    per_operator,
    save_figure,
    shorten,
)
from ..analysis.sources import (
    binding_labels,
    binding_sources,
    merge_layers,
    op_label,
    region_source,
    sources_table,
)
from ..analysis.views import is_view, short_op
from ..lowering.lower import planned_module
from ..search.flow import flat_bindings
from ..search.recompute import Recomputable
from .peak import PeakAccount, account_for_peak
from .select import Selection

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class RegionReport:
    """One chunked region of a plan."""

    start: int
    end: int
    ops: tuple[str, ...]  # op names of the region's bindings, in order (views included)
    kernels: tuple[str, ...]  # the same without views (analysis/views.py): what launches
    outputs: tuple[tuple[str, int], ...]  # (output, chunk axis)
    extent: int  # at the bounds, for symbolic lengths
    n_chunks: int  # at the bounds, for symbolic lengths (a run-time count below them)
    chunk_len: int
    bytes_before: int  # footprint up to the region's end, unchunked
    bytes_after: int  # the same with the plan applied
    cost: float  # predicted relative slow-down of this step
    label: str  # what it computes in the model's terms: "matmul..add in blocks.0"


@dataclasses.dataclass(frozen=True)
class PlanReport:
    """The plan report: per region its ops, axis, chunk count, memory before and
    after and estimated cost; the totals; and the memory profile plot before/after."""

    function: str
    target: str
    budget: int
    unchunked_peak: int
    estimated_peak: int
    reached: bool
    estimated_speed_ratio: float
    regions: tuple[RegionReport, ...]
    seconds: float
    evaluated: int
    footprint_before: tuple[int, ...]
    footprint_after: tuple[int, ...]
    peak: PeakAccount  # what the chunked peak is made of; printed when the budget is not met
    # The high-level binding each entry of footprint_before / footprint_after belongs to
    # (PlanEstimate.position): the build's bytes, read back per operator of the model.
    positions_before: tuple[int, ...]
    positions_after: tuple[int, ...]
    # Per high-level binding: what it computes in the model's terms ("softmax in
    # blocks.0.attn", the op alone when the importer recorded no module) and its module path.
    labels: tuple[str, ...]
    modules: tuple[str, ...]
    # Symbolic lengths: the upper bound of each, at which memory and chunk counts are given.
    bounds: tuple[tuple[str, int], ...] = ()
    # A deep model selected on a shallow twin: (repeats kept, repeats of the model).
    twin_repeats: tuple[int, int] | None = None
    # Values computed afresh before each reader (NOTE [recompute shared masks]).
    recomputed: tuple[Recomputable, ...] = ()

    @classmethod
    def of(cls, mod, selection: Selection, func_name: str = "main") -> PlanReport:
        mod = planned_module(mod, selection.plan)  # the module the steps' positions refer to
        bindings = flat_bindings(mod[func_name])
        ops = [binding_op(b.value) for b in bindings]
        table = sources_table(mod, func_name)
        sources = binding_sources(bindings, ops, table)
        regions = []
        # For symbolic lengths, the extents and chunk counts at the bounds.
        at_bounds = selection.steps_at_bounds or selection.plan.steps
        for step, cost in zip(at_bounds, selection.step_costs):
            cand = step.candidate
            region = bindings[cand.start : cand.end + 1]
            source = region_source(region, sources[cand.start : cand.end + 1])
            regions.append(
                RegionReport(
                    start=cand.start,
                    end=cand.end,
                    ops=tuple(short_op(b) for b in region),
                    kernels=tuple(short_op(b) for b in region if not is_view(b)),
                    outputs=tuple((name, axis.axis) for name, axis in cand.outputs),
                    extent=int(cand.extent),
                    n_chunks=step.n_chunks,
                    chunk_len=step.chunk_len,
                    bytes_before=selection.baseline.high_water(cand.end),
                    bytes_after=selection.estimate.high_water(cand.end),
                    cost=cost,
                    label=source.label if source is not None else _kernels_label(region),
                )
            )
        return cls(
            function=func_name,
            target=selection.estimate.allocation.target,
            budget=selection.budget,
            unchunked_peak=selection.unchunked_peak,
            estimated_peak=selection.estimate.peak,
            reached=selection.reached,
            estimated_speed_ratio=selection.plan.estimated_cost or 1.0,
            regions=tuple(regions),
            seconds=selection.seconds,
            evaluated=selection.evaluated,
            footprint_before=selection.baseline.footprint,
            footprint_after=selection.estimate.footprint,
            peak=account_for_peak(mod[func_name], selection.plan.steps, selection.estimate),
            positions_before=selection.baseline.position,
            positions_after=selection.estimate.position,
            labels=binding_labels(bindings, ops, table),
            modules=tuple(s.module if s is not None else "" for s in sources),
            bounds=tuple(sorted(selection.bounds.items())),
            twin_repeats=(
                (selection.selected_on.kept, selection.selected_on.repeats.count)
                if selection.selected_on is not None
                else None
            ),
            recomputed=selection.plan.recompute,
        )

    def __str__(self) -> str:
        lines = [
            (
                f"AutoChunk plan for {self.function} ({self.target}): "
                f"{len(self.regions)} region(s) chunked"
            ),
            f"  memory (predicted build footprint): {self.memory_line()}",
            (
                f"  predicted time: {self.estimated_speed_ratio:.3f}x unchunked; selection took "
                f"{self.seconds:.1f} s ({self.evaluated} plans estimated)"
            ),
        ]
        if self.bounds:
            at = ", ".join(f"{name} = {value}" for name, value in self.bounds)
            lines.append(
                f"  symbolic lengths: memory and chunk counts at the bound {at}; one build "
                "serves every length up to it, at the same chunk lengths"
            )
        if self.twin_repeats is not None:
            kept, count = self.twin_repeats
            lines.append(
                f"  searched on {kept} of the model's {count} repeated blocks; the plan covers "
                "every block, and its memory is the whole model's"
            )
        for value in self.recomputed:
            lines.append(
                f"  {value.name} ({format_bytes(value.nbytes)}) is computed afresh before each "
                f"of its {len(value.readers)} readers instead of kept for all of them"
            )
        if self.regions:
            lines.append(
                f"  region     {'what':<44} chunks x len  memory before -> after   cost  kernels"
            )
        for r in self.regions:
            lines.append(
                f"  [{r.start:>3}-{r.end:<3}] {_cut(r.label, 44):<44} {r.n_chunks:>5} x "
                f"{r.chunk_len:<5}"
                f"{format_bytes(r.bytes_before):>11} -> {format_bytes(r.bytes_after):<10}"
                f"{r.cost:>7.4f}  {_ops_summary(r.kernels)}"
            )
        if not self.reached:
            lines.append(str(self.peak))
        return "\n".join(lines)

    def memory_line(self) -> str:
        """``3.54 MiB unchunked -> 692.00 KiB chunked (19%), budget 724.00 KiB (20% of
        unchunked) met``: the numbers of the plot's legend, in the same words."""
        return (
            f"{format_bytes(self.unchunked_peak)} unchunked -> "
            f"{format_bytes(self.estimated_peak)} chunked ({self.peak_ratio:.0%}), "
            f"{self.budget_label} {'met' if self.reached else 'NOT met'}"
        )

    @property
    def peak_ratio(self) -> float:
        """The chunked peak as a fraction of the unchunked one."""
        return self.estimated_peak / max(1, self.unchunked_peak)

    @property
    def budget_label(self) -> str:
        """``budget 724.00 KiB (20% of unchunked)``."""
        share = self.budget / max(1, self.unchunked_peak)
        return f"budget {format_bytes(self.budget)} ({share:.0%} of unchunked)"

    @property
    def held_before(self) -> tuple[int, ...]:
        """Bytes the unchunked build holds while each operator of the model runs (the most
        over its lowered bindings; analysis/plot.py ``per_operator``)."""
        return tuple(per_operator(self.footprint_before, self.positions_before, len(self.labels)))

    @property
    def held_after(self) -> tuple[int, ...]:
        """:attr:`held_before` for the chunked build; an operator inside a chunked region
        holds what the region's composite holds."""
        return tuple(per_operator(self.footprint_after, self.positions_after, len(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def figure(self, title: str | None = None):
        """The plot of :meth:`plot` as a ``matplotlib.figure.Figure``, not saved (for a
        notebook, or to inspect: its legend holds both peaks and the budget)."""
        n = len(self.labels)
        before, after = self.held_before, self.held_after
        largest = max([*before, *after, self.budget, 0])
        unit, scale = byte_unit(largest)
        fig, ax = new_figure(
            title or f"memory of {self.function} on {self.target}: unchunked and AutoChunk",
            BUILD_NOTE,
        )
        xs = list(range(n))
        # Shaded spans of the chunked regions, one colour and one legend entry per group of
        # alike regions (the same computation in several layers, at one chunk count).
        groups: dict[tuple[str, int], list[RegionReport]] = {}
        for r in self.regions:
            groups.setdefault((_LAYER_INDEX.sub("#", r.label), r.n_chunks), []).append(r)
        for k, ((_, n_chunks), members) in enumerate(groups.items()):
            if k < len(REGION_COLORS):
                color = REGION_COLORS[k]
                what = merge_layers([r.label for r in members])
                label = shorten(f"chunked: {what}, {n_chunks} chunks")
            else:
                color = OTHER_REGIONS_COLOR
                more = len(groups) - len(REGION_COLORS)
                label = (
                    f"{more} more groups of chunked regions" if k == len(REGION_COLORS) else None
                )
            for i, r in enumerate(members):
                ax.axvspan(
                    r.start - 0.5,
                    r.end + 0.5,
                    color=color,
                    alpha=0.15,
                    lw=0,
                    label=label if i == 0 else None,
                )
        for k, (series, name, peak) in enumerate(
            (
                (before, "unchunked", self.unchunked_peak),
                (after, "AutoChunk", self.estimated_peak),
            )
        ):
            if not series:
                continue
            color = f"C{k}"
            at = series.index(max(series))  # where the peak is first reached
            ax.step(
                xs,
                [v / scale for v in series],
                where="mid",
                lw=1.4,
                color=color,
                label=peak_entry(name, peak, self.labels[at]),
            )
            mark_peak(ax, at, max(series) / scale, color)
        budget = self.budget_label + ("" if self.reached else ", not met")
        ax.axhline(self.budget / scale, color="k", ls="--", lw=0.9, label=budget)
        if module_ticks(ax, self.modules):
            ax.set_xlabel("operators of the model, in order (ticks: where each module starts)")
        else:
            ax.set_xlabel("operator (Relax binding, in order)")
        ax.set_ylabel(f"allocated by the build ({unit})")
        ax.set_xlim(-0.5, max(0.5, n - 0.5))
        return finish(fig, ax, top=largest / scale)

    def plot(self, path: str, title: str | None = None) -> str:
        """PNG of the predicted build footprint, unchunked and chunked on the same axes, per
        operator of the model; with the budget (its value in the legend), each peak labelled
        with the operator where it is reached, and the chunked regions shaded and named.

        Returns
        -------
        str
            ``path``.
        """
        return save_figure(self.figure(title), path)


# An integer component of a module path ("blocks.3.attn"): alike regions of different layers
# differ only there, and share one legend entry.
_LAYER_INDEX = re.compile(r"(?<=\.)\d+\b")


def _kernels_label(region) -> str:
    """A region's label when no source is recorded: its first and last kernels' ops."""
    kernels = [op_label(binding_op(b.value)) for b in region if not is_view(b)] or ["region"]
    return kernels[0] if len(set(kernels)) == 1 else f"{kernels[0]}..{kernels[-1]}"


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def _ops_summary(kernels: tuple[str, ...], most: int = 6) -> str:
    shown = ", ".join(kernels[:most])
    if len(kernels) > most:
        shown += f", ... ({len(kernels)} kernels)"
    return shown
