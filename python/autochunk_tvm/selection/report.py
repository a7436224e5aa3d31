"""A readable account of a selection: what was chunked, how finely, what it saves and costs."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..analysis.memory import format_bytes
from ..analysis.plot import save_figure
from ..analysis.views import is_view, short_op
from ..search.flow import flat_bindings
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
    extent: int
    n_chunks: int
    chunk_len: int
    bytes_before: int  # footprint up to the region's end, unchunked
    bytes_after: int  # the same with the plan applied
    cost: float  # predicted relative slow-down of this step


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

    @classmethod
    def of(cls, mod, selection: Selection, func_name: str = "main") -> PlanReport:
        bindings = flat_bindings(mod[func_name])
        regions = []
        for step, cost in zip(selection.plan.steps, selection.step_costs):
            cand = step.candidate
            region = bindings[cand.start : cand.end + 1]
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
        )

    def __str__(self) -> str:
        ratio = self.estimated_peak / max(1, self.unchunked_peak)
        lines = [
            f"AutoChunk plan for {self.function} ({self.target}): "
            f"{len(self.regions)} region(s) chunked",
            f"  memory: {format_bytes(self.unchunked_peak)} unchunked -> "
            f"{format_bytes(self.estimated_peak)} chunked ({ratio:.0%}), budget "
            f"{format_bytes(self.budget)} {'met' if self.reached else 'NOT met'}",
            f"  predicted time: {self.estimated_speed_ratio:.3f}x unchunked; selection took "
            f"{self.seconds:.1f} s ({self.evaluated} plans estimated)",
        ]
        if self.regions:
            lines.append(
                "  region     chunk axis (output:axis)   chunks x len  memory before -> after"
                "   cost  ops"
            )
        for r in self.regions:
            axes = ", ".join(f"{o}:{a}" for o, a in r.outputs)
            lines.append(
                f"  [{r.start:>3}-{r.end:<3}] {axes:<27.27} {r.n_chunks:>5} x {r.chunk_len:<5}"
                f"{format_bytes(r.bytes_before):>11} -> {format_bytes(r.bytes_after):<10}"
                f"{r.cost:>7.4f}  {_ops_summary(r.kernels)}"
            )
        if not self.reached:
            lines.append(str(self.peak))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def plot(self, path: str, title: str | None = None) -> str:
        """PNG of the predicted footprint per lowered binding, before and after, with the
        budget; returns ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
        for series, label in (
            (self.footprint_before, "unchunked"),
            (self.footprint_after, "AutoChunk"),
        ):
            if not series:
                continue
            n = max(1, len(series) - 1)
            xs = [i / n for i in range(len(series))]
            ax.step(
                xs,
                [v / MIB for v in series],
                where="post",
                lw=1.2,
                label=f"{label} (peak {max(series) / MIB:.1f} MiB)",
            )
        ax.axhline(self.budget / MIB, color="k", ls="--", lw=0.8, label="budget")
        ax.set_xlabel("program (fraction of lowered bindings)")
        ax.set_ylabel("allocated (MiB)")
        ax.set_title(title or f"memory of {self.function} ({self.target}), predicted")
        return save_figure(fig, ax, path, legend="upper left")


def _ops_summary(kernels: tuple[str, ...], most: int = 6) -> str:
    shown = ", ".join(kernels[:most])
    if len(kernels) > most:
        shown += f", ... ({len(kernels)} kernels)"
    return shown
