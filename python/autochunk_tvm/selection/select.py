"""Stage 3 of AutoChunk: choose the chunk plan (paper §3.4, Eq. 11).

The paper's loop (estimate, search, select, re-estimate until the peak fits) as a beam search
over plans, then a pass that gives each chosen region back as much chunk length as the budget
allows:

1. *Estimate* a plan with :class:`~.estimate.PlanEstimator`: the footprint of the built module
   per binding, a high-water mark, within ~1% of measurement.
2. *Search* where the footprint first exceeds the budget: around the bindings whose tensors
   size the allocations held there, largest first (storages are shared and allocated early,
   so the binding that tips the footprint over is rarely the one to chunk).
3. *Select*: the candidate regions there are ranked cheaply on the Relax-level profile (the
   peak each leaves, the predicted cost), and the best ``top_k`` are applied at a fine chunk
   length (``max_chunks`` chunks), alone and together with its twins in the other layers
   (NOTE [region classes]). A region may replace regions it contains, never cut one.
   Each child plan is re-estimated and kept only if it lowers the bytes over the budget.
   Plans reaching the same steps merge (the DP); ``beam_width`` of them, with the least
   excess memory, then the least cost, go on, in slots that nest (NOTE [nested beams]: a
   wider beam never ends worse), until every slot's plan fits or none is left.
4. *Relax* the plans that fit, in the order found, until one costs nothing: steps a plan
   does not need are dropped, and each step, most expensive first, gets the fewest chunks
   at which the whole plan still fits, each chunk as short as that count allows (NOTE [even
   chunks]; secant steps and bisection on the estimate, from the length it was found at).
   The cheapest relaxed plan by the cost model wins.

When nothing fits, the plan with the smallest peak found is what ``strict=False`` returns and
what :class:`~.budget.BudgetUnreachableError` reports.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import logging
import math
import numbers
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import tvm
from tvm import relax

from .. import console
from ..analysis.memory import check_module, estimate_activation_memory
from ..analysis.views import is_view
from ..lowering import ChunkPlan, ChunkPlanError, ChunkStep, LoweringError
from ..lowering.plan import ordered_steps
from ..lowering.recompute import recompute_at_readers
from ..search.candidate import ChunkCandidate
from ..search.classes import ClassFinder, RegionClass
from ..search.recompute import find_recomputable
from ..search.regions import DEFAULT_WINDOW, search_chunk_candidates
from .budget import BudgetUnreachableError, OverBudgetWarning, parse_budget
from .cost import CostModel, ModelTotals, step_features
from .estimate import PlanEstimate, PlanEstimator
from .peak import account_for_peak
from .shallow import ShallowTwin, TwinDepth, find_repeats
from .symbolic import AtTheBound, SymbolicDims, TwinEstimator, symbolic_dims

logger = logging.getLogger("autochunk_tvm")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_plan`.

    Attributes
    ----------
    plan
        The chosen plan; ``plan.estimated_peak`` in bytes, ``plan.estimated_cost`` the
        predicted run time relative to unchunked (1.0 = no loss).
    budget
        The budget in bytes.
    unchunked_peak
        Predicted peak of the unchunked build of the module as given, bytes.
    reached
        Whether the plan's estimated peak is within the budget.
    step_costs
        Predicted slow-down of each step of the plan (same order).
    evaluated
        Number of distinct plans whose memory was estimated.
    seconds
        Wall time of the selection.
    estimate
        The memory estimate of the chosen plan (footprint per lowered binding).
    baseline
        The memory estimate of the unchunked module the plan's steps apply to: the input, or,
        where the plan recomputes values before their readers (``plan.recompute``), the input
        so rewritten, whose peak can be below ``unchunked_peak``.
    bounds
        For a function with symbolic input dims, the upper bound of each, by name: the
        estimates are at these lengths, and the build's memory is planned for them (NOTE
        [symbolic selection]). Empty for static shapes.
    bounds_given
        The bounds that came from ``bounds=`` rather than the function's own
        ``tir_var_upper_bound``: the module built must state them
        (:func:`~autochunk_tvm.lowering.bounds.with_bounds`).
    steps_at_bounds
        For a symbolic function, the plan's steps as found on its static twin at the bounds:
        the same regions and chunk lengths, with the extents (and chunk counts) at the bounds.
        Empty for static shapes.
    selected_on
        Where the function repeats a block, the shallow twin the plan was selected on (how
        many repeats it kept); the plan and its estimate are the whole function's (NOTE
        [shallow twin], selection/shallow.py). None when selected on the whole function.
    """

    plan: ChunkPlan
    budget: int
    unchunked_peak: int
    reached: bool
    step_costs: tuple[float, ...]
    evaluated: int
    seconds: float
    estimate: PlanEstimate
    baseline: PlanEstimate
    bounds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    bounds_given: Mapping[str, int] = dataclasses.field(default_factory=dict)
    steps_at_bounds: tuple[ChunkStep, ...] = ()
    selected_on: TwinDepth | None = None


# Stages without a lower peak after which the least-memory search ends (NOTE [patience]).
FLOOR_PATIENCE = 8


@dataclasses.dataclass(frozen=True)
class _State:
    steps: tuple[ChunkStep, ...]  # ordered by region start
    estimate: PlanEstimate


class _Selector:
    # Allocations tried, largest first, until one has a region that lowers the excess.
    CENTRES = 3

    def __init__(
        self,
        estimator: PlanEstimator,
        budget: int,
        cost_model: CostModel,
        top_k: int,
        max_chunks: int,
        hoist: bool = True,
        admits: Callable[[ChunkCandidate], bool] | None = None,
    ):
        self.est = estimator
        self.admits = admits or (lambda cand: True)
        self.hoist = hoist
        self.budget = budget
        self.cost_model = cost_model
        self.top_k = top_k
        self.max_chunks = max_chunks
        self.func = estimator.func
        self.totals = ModelTotals.of(self.func, estimator.bounds)
        self.profile = estimate_activation_memory(
            estimator.mod, func_name=estimator.func_name, bounds=estimator.bounds
        )
        self.own = {b.name: b.own_bytes for b in self.profile.bindings}
        self.storage_of = _view_sources(estimator.bindings)
        self._candidates: dict[int, list[ChunkCandidate]] = {}
        self._traced: dict[tuple, ChunkCandidate | None] = {}  # of every search of func
        self._costs: dict[ChunkStep, float] = {}
        self._unlowerable: set[ChunkCandidate] = set()  # shared by with_budget copies
        self.classes = ClassFinder(self.func, estimator.func_name)
        self._class_of: dict[ChunkCandidate, RegionClass] = {}  # members of classes applied
        self._relaxed: dict[frozenset, int] = {}  # a group's regions -> the length relaxed to

    def try_estimate(self, steps, added: ChunkCandidate | None = None) -> PlanEstimate | None:
        """The plan's estimate, or None when it cannot be lowered.

        NOTE [unlowerable candidates]: a candidate the chunk flow allows may still fail to
        lower (a stage without a kernel, a GPU stage without a schedule). Such a plan is
        dropped with the reason logged, and ``added``, the candidate that broke it, is not
        tried again; selection goes on with the others instead of aborting the build.
        """
        try:
            return self.est.estimate(steps)
        except (LoweringError, ChunkPlanError, tvm.error.InternalError) as err:
            where = f"region [{added.start}, {added.end}]" if added is not None else "a plan"
            logger.info("select: dropped %s, it does not lower: %s", where, err)
            if added is not None:
                self._unlowerable.add(added)
            return None

    def with_budget(self, budget: int) -> _Selector:
        """The same selector (sharing its caches) for another budget."""
        other = copy.copy(self)
        other.budget = budget
        return other

    def candidates(self, centre: int) -> list[ChunkCandidate]:
        if centre not in self._candidates:
            found = search_chunk_candidates(
                self.est.mod, func_name=self.est.func_name, centre=centre, traced=self._traced
            )
            # NOTE [symbolic extents]: a symbolic function is selected on its static twin at
            # the bound (NOTE [symbolic selection], selection/symbolic.py); ``admits`` keeps the
            # regions whose flow is legal on the symbolic function too.
            self._candidates[centre] = [
                c for c in found if isinstance(c.extent, int) and self.admits(c)
            ]
        return self._candidates[centre]

    def step(self, cand: ChunkCandidate, chunk_len: int) -> ChunkStep:
        return ChunkStep(cand, chunk_len, self.hoist)

    def step_cost(self, cand: ChunkCandidate, chunk_len: int) -> float:
        key = ChunkStep(cand, chunk_len)
        if key not in self._costs:
            self._costs[key] = _priced(self.est, self.totals, self.cost_model, cand, chunk_len)
        return self._costs[key]

    def cost(self, steps) -> float:
        return sum(self.step_cost(s.candidate, s.chunk_len) for s in steps)

    def child_lengths(self, cand: ChunkCandidate) -> list[int]:
        """Chunk lengths a new region can be tried at: the finest, then 8 and 64 times fewer
        chunks (at least 2).

        NOTE [coarser children]: more chunks is not always less memory. The pooled allocator
        gives a freed buffer only to a request of the same size, so a region's chunk storages
        can leave the full-size storages they replace cached and unused: OpenFold's triangle
        attention on CUDA (n_res 128) peaks at 37.4 MiB in 8 chunks and at 52.3 MiB in 64,
        above the unchunked 51.3 MiB, and tried at 64 alone it was never chosen. Coarser
        lengths are tried only when no region at any centre lowers the excess at its finest,
        so a search that progressed before takes the same path (tried at the first centre
        without a finer child, they sent ESMFold's block on CUDA from 38.3% to 43.5%).
        """
        counts = [min(cand.extent, self.max_chunks)]
        while counts[-1] // 8 >= 2:
            counts.append(counts[-1] // 8)
        return list(dict.fromkeys(-(-cand.extent // n) for n in counts))

    def ranked(self, state: _State, centre: int, cands: list[ChunkCandidate]):
        """The ``top_k`` most promising candidates, from the Relax-level profile.

        While a chunked region runs, what was live before it stays live (the composite holds
        its inputs), its outputs and hoisted values are full size, and only its inner tensors
        shrink to ``1/n``; outside it nothing changes. That gives each candidate the peak it
        leaves around ``centre`` and the ``n`` it needs; Relax-level bytes are scaled to the
        build's by their ratio at ``centre``. Candidates that can meet the budget come first,
        cheapest first; then the lowest remaining peaks.
        """
        profile = self.profile.bindings
        live = profile[centre]
        scale = state.estimate.high_water(centre) / max(1, live.live_bytes)
        room = self.budget / max(scale, 1e-9)
        # NOTE: the bindings near the centre, not the search window (which counts kernels):
        # measuring "outside" over the wider window ranked GPT's head-axis regions first and
        # left a CUDA 25% plan at the unchunked peak.
        lo, hi = max(0, centre - DEFAULT_WINDOW), min(len(profile), centre + DEFAULT_WINDOW + 1)
        feasible, other = [], []
        for cand in cands:
            # A view output (a reshape) keeps its source's storage full size.
            outputs = {self.storage_of.get(name, name) for name, _ in cand.outputs}
            inner = {name for name, _ in cand.bindings} - set(cand.hoistable) - outputs
            before = (
                profile[cand.start - 1].live_after_bytes
                if cand.start > 0
                else self.profile.input_bytes
            )
            floor = before + sum(self.own.get(n, 0) for n in outputs | set(cand.hoistable))
            shrinks = sum(self.own.get(t, 0) for t in live.live_tensors if t in inner)
            if shrinks <= 0:
                continue
            outside = max(
                (profile[p].live_bytes for p in range(lo, hi) if not cand.start <= p <= cand.end),
                default=0,
            )
            finest = max(outside, floor + shrinks // min(cand.extent, self.max_chunks))
            if finest < room:
                n = max(2, -(-shrinks // max(1, int(room - floor))))
                chunk_len = -(-cand.extent // min(n, cand.extent))
                feasible.append((self.step_cost(cand, chunk_len), finest, cand))
            else:
                other.append((finest, -shrinks, cand))
        feasible.sort(key=lambda t: t[:2])
        other.sort(key=lambda t: t[:2])
        # Regions that differ by a binding at their ends size alike; keep one per way of
        # chunking the centre tensor (its axis and the extent).
        name = self.est.bindings[centre].var.name
        picked, ways = [], set()
        for *_, cand in feasible:
            way = (cand.axes.get(name), cand.extent)
            if way not in ways and len(picked) < self.top_k:
                picked.append(cand)
                ways.add(way)
        # The ranking is approximate (Relax-level bytes): always size one lowest-peak region.
        for *_, cand in other[: max(1, self.top_k - len(picked))]:
            picked.append(cand)
        return picked

    def expand(self, state: _State) -> list[_State]:
        """Plans with one more region chunked where the footprint first exceeds the target,
        each lowering the bytes over the budget."""
        excess = state.estimate.excess(self.budget)
        # NOTE [plateaus]: the pooled allocator gives nothing back during a call and planned
        # storages are shared between layers, so chunking one of several alike blocks (GPT's
        # attention in layer 1 of 2) can lower the peak yet raise the excess: its chunk
        # storages are new, and the big shared storage is still allocated, one layer later.
        # No single step then lowers the excess, though two do. When no child lowers it,
        # children that lower the peak go on instead (seen on CUDA, GPT-small at 20%: 36.5 MiB
        # was reported as the floor).
        lower_peak: list[_State] = []
        centres = [
            c
            for c in state.estimate.excess_causes(self.budget)[: self.CENTRES]
            if c < len(self.est.bindings)
        ]
        ranked: dict[int, list[ChunkCandidate]] = {}  # filled as centres are reached
        # Every centre at the finest lengths first; coarser lengths only when no region at any
        # centre lowers the excess at its finest (NOTE [coarser children]).
        for coarse in (False, True):
            for centre in centres:
                if centre not in ranked:
                    ranked[centre] = self.ranked(state, centre, self._legal(state, centre))
                children: list[_State] = []
                for cand in ranked[centre]:
                    if cand in self._unlowerable:  # found so in the finer pass
                        continue
                    lengths = self.child_lengths(cand)
                    lengths = lengths[1:] if coarse else lengths[:1]
                    for members in self._variants(state, cand):
                        child, peak_only = self._child(state, cand, members, lengths, excess)
                        if child is not None:
                            children.append(child)
                        elif peak_only is not None:
                            lower_peak.append(peak_only)
                if children:
                    return children
        return lower_peak

    def _child(self, state, cand, members, lengths, excess) -> tuple[_State | None, _State | None]:
        """``state`` with ``members`` (``cand`` and maybe its twins) chunked at the first of
        ``lengths`` that lowers the excess: (that plan, None); else (None, the plan among them
        with the lowest peak, if it lowers the peak)."""
        kept = [
            s
            for s in state.steps
            if not any(m.start <= s.candidate.start <= m.end for m in members)
        ]
        lowest: _State | None = None
        for length in lengths:
            steps = ordered_steps([*kept, *(self.step(m, length) for m in members)])
            if steps == state.steps:
                break
            estimate = self.try_estimate(steps, added=cand)
            if estimate is None:
                break
            if estimate.excess(self.budget) < excess:
                return _State(steps, estimate), None
            if estimate.peak < state.estimate.peak and (
                lowest is None or estimate.peak < lowest.estimate.peak
            ):
                lowest = _State(steps, estimate)
        return None, lowest

    def _variants(self, state: _State, cand: ChunkCandidate) -> list[tuple[ChunkCandidate, ...]]:
        """The ways to add ``cand``: with its whole class (every twin that does not cut a
        region of the plan), and alone.

        NOTE [region classes]: the planner shares one storage among the alike tensors of all
        layers, so chunking one layer's attention of twelve lowers nothing until all are
        chunked; one step per layer would need as many stages as the model has layers, each
        estimating a handful of plans. A class is one step, so the plans estimated do not grow
        with depth. The instance alone stays a choice, for a layer unlike the others.
        """
        alone = (cand,)
        cls = self.classes.region_class(cand)
        members = tuple(
            m
            for m in cls.members
            if m not in self._unlowerable and not self._cuts(state, m) and self.admits(m)
        )
        if len(members) < 2:
            return [alone]
        for member in cls.members:
            self._class_of.setdefault(member, cls)
        return [members, alone]

    def _groups(self, steps) -> list[list[ChunkStep]]:
        """The plan's steps, those of one class at one chunk length together (relaxed as one)."""
        groups: dict[Any, list[ChunkStep]] = {}
        for step in steps:
            key = (self._class_of.get(step.candidate, step.candidate), step.chunk_len)
            groups.setdefault(key, []).append(step)
        return list(groups.values())

    def relax(self, state: _State) -> _State:
        """Drop the steps the plan does not need, then give each step, most expensive first,
        the fewest chunks at which the whole plan still fits, at the shortest length of that
        count (NOTE [even chunks]). The steps of a class (NOTE [region classes]) are dropped
        and lengthened together."""

        def group_cost(group) -> float:
            return -sum(self.step_cost(s.candidate, s.chunk_len) for s in group)

        steps = list(state.steps)
        for group in sorted(self._groups(steps), key=group_cost):
            others = [s for s in steps if s not in group]
            if self.peak_of(ordered_steps(others)) <= self.budget:
                steps = others
        for group in sorted(self._groups(steps), key=group_cost):
            others = [s for s in steps if s not in group]
            cands = [s.candidate for s in group]

            def peak(chunk_len: int, others=others, cands=cands) -> int:
                return self.peak_of(
                    ordered_steps([*others, *(self.step(c, chunk_len) for c in cands)])
                )

            extent = min(c.extent for c in cands)
            # NOTE [warm relax]: the plans relaxed differ in a region or two; a group relaxed
            # in one is first tried at the length it got there (two probes when it holds).
            key = frozenset(cands)
            guess = self._relaxed.get(key)
            lengths = even_lengths(group[0].chunk_len, extent)
            best = _largest_fitting(peak, self.budget, lengths, guess)
            self._relaxed[key] = best
            steps = [*others, *(self.step(c, best) for c in cands)]
        steps = ordered_steps(steps)
        return _State(steps, self.est.estimate(steps))

    def peak_of(self, steps) -> int | float:
        """The plan's estimated peak; infinite (never fits) when it does not lower."""
        estimate = self.try_estimate(steps)
        return math.inf if estimate is None else estimate.peak

    def _legal(self, state: _State, centre: int) -> list[ChunkCandidate]:
        """Candidates around ``centre`` that do not cut through a region already chunked, and
        that lower."""
        return [
            cand
            for cand in self.candidates(centre)
            if cand not in self._unlowerable and not self._cuts(state, cand)
        ]

    @staticmethod
    def _cuts(state: _State, cand: ChunkCandidate) -> bool:
        """Whether ``cand`` overlaps a region of the plan without containing it."""
        return any(
            s.candidate.start <= cand.end
            and cand.start <= s.candidate.end
            and not (cand.start <= s.candidate.start and s.candidate.end <= cand.end)
            for s in state.steps
        )


def even_lengths(fits: int, extent: int) -> list[int]:
    """``fits`` and, above it, the chunk lengths that split ``extent`` as evenly as its
    chunk count allows, ascending: ``ceil(extent / n)`` for each count ``n``.

    NOTE [even chunks]: of the lengths that give a region the same number of chunks, the
    shortest has the smallest chunk buffers and runs the same kernel calls; its chunks are
    even, where a longer one leaves a short last chunk (64 rows in chunks of 15 are four of
    15 and one of 4; in chunks of 13, four of 13 and one of 12). Relaxation wants the fewest
    chunks that fit, so it probes only these lengths: 15 for an extent of 64, about
    ``2 sqrt(extent)`` in general, instead of every length. The footprint is not strictly
    monotone in the length, though: the pool gives a freed buffer only to a request of its
    size, and a longer length can happen to match one. The UNet of
    ``benchmarks/throughput_memory`` at 20% is such a plan: the same 10 chunks per region
    estimate 10.2 MiB at the even lengths and 9.3 MiB at the longest lengths of that count.
    """
    lengths, count = [], 1
    while count <= extent:
        length = -(-extent // count)
        if length <= fits:
            break
        lengths.append(length)
        count = -(-extent // (length - 1)) if length > 1 else extent + 1
    return [fits, *reversed(lengths)]


def _largest_fitting(held, target: int, lengths: list[int], guess: int | None = None) -> int:
    """The longest of ``lengths`` (ascending; :func:`even_lengths`) with
    ``held(length) <= target``, given that ``lengths[0]`` is such a length; ``held`` grows
    with the length, about linearly (``X + Y + A * length``), and may be infinite (a length
    that does not lower). The search runs on positions in ``lengths``; its lines are drawn
    through lengths and footprints, and a length a line predicts is taken down to the
    longest of ``lengths`` at or below it.

    The bracket ``[lo, hi)`` starts at the whole list. A ``guess`` (the answer of a similar
    plan) is probed first, with its neighbour above: when it is the answer, that closes the
    bracket. Without a guess above ``lengths[0]``, the neighbour of ``lengths[0]`` is probed
    first: a group that cannot grow at all (a third of the groups relaxed on the Evoformer)
    costs one probe, and when it can, the line through the two predicts the answer on a
    footprint linear from there. Otherwise, or when that prediction fits, the next probe is
    the longest length, so both ends of the bracket have values. Then steps cycle: a secant
    step on the line through the two shortest lengths known not to fit, a probe next to it
    (on a straight line the secant lands on the answer and its neighbour closes the
    bracket), and a bisection, so that a bad line (page rounding, a step in the storage plan)
    cannot slow it below a third of bisection's pace; bisection until two lengths that do not
    fit are known.

    The secant takes two lengths that do not fit, not the bracket's ends: below some length
    the footprint is flat (the peak is elsewhere in the plan) and only rises past it, so the
    line from a fitting length runs under the curve and lands a length or two above ``lo``
    (seen on the Evoformer: 15 probes for one group). Lengths over the target are on the
    rising part. The only line drawn through fitting lengths is the one from ``lengths[0]``
    to its neighbour: no flat stretch can lie between two adjacent lengths.

    Where the footprint is not monotone, a neighbour that does not fit ends the search, and
    the longest-first bracket might have found a longer length that fits beyond it; none of
    the plans ``benchmarks/check_plans.py`` checks changed with the neighbour-first probe.
    """
    top = len(lengths) - 1

    def at_most(length: float) -> int:  # the position of the longest length <= ``length``
        return bisect.bisect_right(lengths, length) - 1

    values = {0: held(lengths[0])}
    lo, hi = 0, top + 1  # lo fits; hi is the shortest known not to (or past the end)
    last, last_probe = "bisect", lo
    if guess is not None and guess > lengths[0]:
        at = at_most(guess)
        for probe in (at, at + 1):
            if probe > top:
                break
            values[probe] = held(lengths[probe])
            if values[probe] > target:
                hi = probe
                break
            lo = probe
    elif lo < top:
        values[1] = held(lengths[1])
        if values[1] > target:
            return lengths[0]
        lo, last = 1, "neighbour"
    while hi - lo > 1:
        probe = (lo + hi) // 2
        kind = "bisect"
        failing = sorted(n for n, v in values.items() if target < v < math.inf)
        line = lo  # where the line through lengths[0] and its neighbour meets the target
        if last == "neighbour":
            rise = (values[lo] - values[lo - 1]) / (lengths[lo] - lengths[lo - 1])
            if rise > 0:
                line = at_most(lengths[lo] + (target - values[lo]) / rise)
        if last == "secant":
            probe, kind = (lo + 1 if lo == last_probe else hi - 1), "adjacent"
        elif line > lo:
            probe, kind = line, "secant"
        elif hi > top:
            probe, kind = top, "longest"
        elif last != "adjacent" and len(failing) >= 2:
            a, b = failing[:2]
            slope = (values[b] - values[a]) / (lengths[b] - lengths[a])
            if slope > 0:
                probe, kind = at_most(lengths[a] - (values[a] - target) / slope), "secant"
        probe = min(max(probe, lo + 1), hi - 1)
        values[probe] = held(lengths[probe])
        last, last_probe = kind, probe
        if values[probe] <= target:
            lo = probe
        else:
            hi = probe
    return lengths[lo]


def _view_sources(bindings) -> dict[str, str]:
    """For each binding that is a view of another (reshape-like), the binding whose storage
    it shares."""
    source: dict[str, str] = {}
    for binding in bindings:
        value = binding.value
        if is_view(binding) and isinstance(value, relax.Call) and value.args:
            arg = value.args[0]
            if isinstance(arg, relax.Var):
                source[binding.var.name] = source.get(arg.name, arg.name)
    return source


def check_settings(
    *, beam_width: int, top_k: int, max_chunks: int, max_stages: int, headroom: float
) -> None:
    """A ValueError naming the setting, for a selection setting out of its range."""
    counts = [
        ("beam_width", beam_width),
        ("top_k", top_k),
        ("max_chunks", max_chunks),
        ("max_stages", max_stages),
    ]
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(headroom, bool) or not isinstance(headroom, numbers.Real):
        raise ValueError(f"headroom must be a number in [0, 1), got {headroom!r}")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")


@console.holds_back_native_noise
def select_plan(
    mod: tvm.IRModule,
    budget: int | float | str,
    target: Any,
    *,
    func_name: str = "main",
    cost_model: CostModel | None = None,
    beam_width: int = 3,
    top_k: int = 3,
    max_chunks: int = 64,
    max_stages: int = 64,
    strict: bool = True,
    headroom: float = 0.03,
    tune: bool = False,
    hoist: bool = True,
    bounds: Mapping[str, int] | None = None,
    estimator: PlanEstimator | None = None,
) -> Selection:
    """Choose the chunk plan that brings the function's peak under ``budget`` at the least
    predicted speed loss.

    Parameters
    ----------
    mod
        High-level Relax module (before legalization).
    budget
        Bytes (int), a fraction of the unchunked peak (float in (0, 1]) or a string such as
        ``"2GiB"`` or ``"20%"``; see :func:`~.budget.parse_budget`.
    target
        What the module will be built for; memory is predicted for its pipeline.
    cost_model
        Default: the fitted :meth:`CostModel.default`.
    beam_width, top_k
        Plans kept per stage, and candidate regions tried per plan and stage.
    max_chunks
        Chunk count at which regions are tried before relaxing (the finest the search goes).
    max_stages
        At most this many regions are added one after the other.
    strict
        If the budget cannot be met: raise :class:`BudgetUnreachableError` (``True``), or warn
        and return the plan with the smallest peak found (``False``).
    headroom
        Plans are sized to ``budget * (1 - headroom)``. The memory estimate is within ~1% of
        measurement for unchunked builds (``benchmarks/results/memory_agreement.md``) and
        chunked plans (``tests/test_autochunk_e2e.py``); the headroom covers the runtime's
        own allocations and RSS page noise, which weigh most at small sizes.
    tune
        Build the plans that fit (up to ``beam_width``, relaxed) and keep the one that runs
        fastest on the target's device, instead of the cheapest by the cost model.
    hoist
        Compute each region's chunk-invariant bindings once, before its loop (default).
        ``False`` recomputes them in every chunk: only for measuring what hoisting saves.

    Returns
    -------
    Selection
        An empty plan when the unchunked build already fits.
    """
    began = time.perf_counter()
    check_module(mod, func_name, "select_plan")
    check_settings(
        beam_width=beam_width,
        top_k=top_k,
        max_chunks=max_chunks,
        max_stages=max_stages,
        headroom=headroom,
    )
    search = _Search(
        cost_model=cost_model or CostModel.default(),
        beam_width=beam_width,
        top_k=top_k,
        max_chunks=max_chunks,
        max_stages=max_stages,
        strict=strict,
        headroom=headroom,
        tune=tune,
        hoist=hoist,
    )
    dims = symbolic_dims(mod[func_name], bounds)
    if dims is not None and estimator is not None:
        raise ValueError(
            "estimator= is for functions of static shapes; a symbolic function is "
            "estimated at its bounds by select_plan itself"
        )
    recompute = find_recomputable(mod, func_name) if estimator is None else ()
    if not recompute:
        return _select_module(
            mod, budget, target, func_name, dims, bounds, search, began, estimator
        )
    # NOTE [recompute shared masks] (search/recompute.py): the plan is selected on the module
    # with those values recomputed before their readers; the budget stays a fraction of what
    # the module as given allocates, and a budget that one meets leaves it as it is.
    unchunked = _unchunked(mod, target, func_name, dims, bounds)
    limit = parse_budget(budget, unchunked.peak)
    if unchunked.peak <= limit:
        return _select_module(mod, limit, target, func_name, dims, bounds, search, began, None)
    logger.info(
        "select: %s recomputed before each of their readers",
        ", ".join(
            f"{r.name} ({r.nbytes / 2**20:.1f} MiB, {len(r.readers)} readers)" for r in recompute
        ),
    )
    prepared = recompute_at_readers(mod, recompute)
    selection = _select_module(
        prepared, limit, target, func_name, dims, bounds, search, began, None
    )
    return dataclasses.replace(
        selection,
        plan=dataclasses.replace(selection.plan, recompute=recompute),
        unchunked_peak=unchunked.peak,
    )


def _select_module(
    mod: tvm.IRModule,
    budget: int | float | str,
    target: Any,
    func_name: str,
    dims: SymbolicDims | None,
    bounds: Mapping[str, int] | None,
    search: _Search,
    began: float,
    estimator: PlanEstimator | None,
) -> Selection:
    """:func:`select_plan` on ``mod`` as it is."""
    if dims is not None:
        return _select_at_the_bound(mod, budget, target, func_name, dims, search, began)
    est = estimator or PlanEstimator(mod, target, func_name=func_name, bounds=bounds)
    return _select_deep(est, budget, search, began)


def _unchunked(
    mod: tvm.IRModule,
    target: Any,
    func_name: str,
    dims: SymbolicDims | None,
    bounds: Mapping[str, int] | None,
) -> PlanEstimate:
    """The estimate of ``mod`` built as it is (for a symbolic function, at its bounds)."""
    if dims is None:
        return PlanEstimator(mod, target, func_name=func_name, bounds=bounds).estimate(())
    twin = AtTheBound(mod, func_name, dims)
    return PlanEstimator(twin.symbolic, target, func_name=func_name, bounds=dims.bounds).estimate(
        ()
    )


@dataclasses.dataclass(frozen=True)
class _Search:
    """The settings of one selection (see :func:`select_plan`)."""

    cost_model: CostModel
    beam_width: int
    top_k: int
    max_chunks: int
    max_stages: int
    strict: bool
    headroom: float
    tune: bool
    hoist: bool


def _check_sized(baseline: PlanEstimate, func_name: str) -> None:
    unsized = baseline.allocation.unsized
    if unsized:
        raise ValueError(
            f"{func_name} has tensors of unknown shape ({', '.join(unsized[:5])}"
            f"{', ...' if len(unsized) > 5 else ''}): their memory cannot be predicted, so no "
            "budget can be checked. Give every tensor a static shape, or a symbolic one with "
            "an upper bound (torch.export's Dim(..., max=...) or bounds=)"
        )


@dataclasses.dataclass(frozen=True)
class _Found:
    """What the search of one function found, before it is reported (:func:`_report`)."""

    chosen: _State  # the plan to build: relaxed if it fits, else the lowest peak found
    floor: _State | None  # when nothing fits: the least-memory search's plan
    reached: bool
    limit: int
    baseline: PlanEstimate
    costs: Callable[[tuple[ChunkStep, ...]], tuple[float, ...]]  # per step, by the cost model


def _select(
    est: PlanEstimator,
    budget: int | float | str,
    search: _Search,
    began: float,
    admits: Callable[[ChunkCandidate], bool] | None = None,
) -> Selection:
    """Selection on a function of static shapes; ``admits`` restricts the regions tried."""
    return _report(_search(est, budget, search, admits), est, search, began)


def _search(
    est: PlanEstimator,
    budget: int | float | str,
    search: _Search,
    admits: Callable[[ChunkCandidate], bool] | None = None,
) -> _Found:
    """The search of :func:`_select`: the plan it chose (and the floor's, when nothing fits),
    not yet reported."""
    beam_width, max_stages = search.beam_width, search.max_stages
    baseline = est.estimate(())
    _check_sized(baseline, est.func_name)
    limit = parse_budget(budget, baseline.peak)
    root = _State((), baseline)
    if baseline.peak <= limit:
        return _Found(root, None, True, limit, baseline, lambda steps: ())
    limit_eff = int(limit * (1.0 - search.headroom))
    selector = _Selector(
        est,
        limit_eff,
        search.cost_model,
        search.top_k,
        search.max_chunks,
        search.hoist,
        admits,
    )

    def costs(steps) -> tuple[float, ...]:
        return tuple(selector.step_cost(s.candidate, s.chunk_len) for s in steps)

    finished, explored = _beam(selector, root, beam_width, max_stages)
    floor_state = None
    if not finished:
        # The search follows the budget. For the smallest reachable peak, follow the least
        # memory (a 1-byte budget); if that fits the budget (not the headroom), relax to it.
        _, lowest = _beam(
            selector.with_budget(1), root, beam_width, max_stages, patience=FLOOR_PATIENCE
        )
        # NOTE [a floor that can be met]: the floor reported is what the least-memory search
        # reaches. That search does not depend on the budget, so a budget of at least the
        # floor is met, as the error promises. A plan the budget-following search found on
        # the way can be a little lower, but another budget takes another path to it.
        floor_state = min(lowest, key=lambda s: (s.estimate.peak, selector.cost(s.steps)))
        explored += lowest
        best = min(explored, key=lambda s: (s.estimate.peak, selector.cost(s.steps)))
        if best.estimate.peak <= limit:
            finished = [best]
            selector = selector.with_budget(max(limit_eff, best.estimate.peak))
    if finished:
        found: dict[tuple, _State] = {}
        for state in finished:
            done = selector.relax(state)
            found.setdefault(done.steps, done)
            # Step costs are never negative: once a relaxed plan costs nothing, no other can
            # be cheaper (the plans the tuner times excepted).
            if len(found) >= (beam_width if search.tune else 1) and selector.cost(done.steps) <= 0:
                break
        relaxed = sorted(found.values(), key=lambda s: (selector.cost(s.steps), s.estimate.peak))
        relaxed = relaxed[:beam_width]
        chosen = relaxed[0]
        if search.tune and len(relaxed) > 1:
            from .tune import fastest

            best, _ = fastest([est.lower(s.steps) for s in relaxed], est.target, est.func_name)
            chosen = relaxed[best]
        return _Found(chosen, None, True, limit, baseline, costs)
    chosen = min(explored, key=lambda s: (s.estimate.peak, selector.cost(s.steps)))
    return _Found(chosen, floor_state, False, limit, baseline, costs)


def _report(found: _Found, est: PlanEstimator, search: _Search, began: float) -> Selection:
    """The :class:`Selection` of what was found, or the error (``strict``) when the budget
    was not reached."""
    if found.reached:
        return _selection(found, est, began)
    limit, baseline = found.limit, found.baseline
    floor = found.floor.estimate.peak
    shown = floor if search.strict else found.chosen.estimate.peak
    message = (
        f"no chunk plan brings the peak under the budget of {limit} bytes "
        f"({limit / 2**20:.1f} MiB); the smallest peak found is {shown} bytes "
        f"({shown / 2**20:.1f} MiB, unchunked {baseline.peak / 2**20:.1f} "
        "MiB). Give a budget of at least that, or strict=False to build the smallest plan found"
    )
    if search.strict:
        why = account_for_peak(est.func, found.floor.steps, found.floor.estimate)
        raise BudgetUnreachableError(f"{message}.\n{why}", floor, limit)
    warnings.warn(OverBudgetWarning(message, shown, limit), stacklevel=4)
    return _selection(found, est, began)


def _select_deep(
    est: PlanEstimator, budget: int | float | str, search: _Search, began: float
) -> Selection:
    """Selection on a shallow twin where the function repeats a block, with the plan estimated
    on the whole function; else (or when that plan does not fit it) on the whole function
    (NOTE [shallow twin], selection/shallow.py)."""
    baseline = est.estimate(())
    _check_sized(baseline, est.func_name)
    limit = parse_budget(budget, baseline.peak)
    if search.tune or baseline.peak <= limit:
        return _select(est, budget, search, began)
    found = _shallow_twin(est, baseline)
    if found is None:
        return _select(est, budget, search, began)
    twin, twin_est, probes = found
    whole, why = _on_the_whole(_search(twin_est, limit, search), twin, est, search.cost_model)
    if whole is None:
        logger.info(
            "select: the shallow twin (%d of %d repeated blocks) did not give a plan: %s; "
            "selecting on the whole function",
            twin.kept,
            twin.repeats.count,
            why,
        )
        return _select(est, budget, search, began)
    logger.info(
        "select: selected on %d of %d repeated blocks; on the whole function the plan peaks at "
        "%.1f MiB (budget %.1f MiB)",
        twin.kept,
        twin.repeats.count,
        whole.chosen.estimate.peak / 2**20,
        limit / 2**20,
    )
    evaluated = twin_est.evaluated + probes + est.evaluated
    return dataclasses.replace(
        _report(whole, est, search, began), evaluated=evaluated, selected_on=twin.depth
    )


def _on_the_whole(
    found: _Found, twin: ShallowTwin, est: PlanEstimator, cost_model: CostModel
) -> tuple[_Found | None, str]:
    """``found``, a search on ``twin``, carried over to the whole function and estimated
    there; (None, why not) when a plan does not carry over, a plan that fit does not fit the
    whole function, or the smallest peaks found are not the same there."""

    def carried(state: _State) -> tuple[_State | None, str]:
        steps = twin.whole_steps(state.steps)
        if steps is None:
            return None, "its plan does not carry over to every repeat"
        try:
            return _State(steps, est.estimate(steps)), ""
        except (LoweringError, ChunkPlanError, tvm.error.InternalError) as err:
            return None, f"its plan does not lower on the whole function ({err})"

    def costs(steps) -> tuple[float, ...]:
        return _step_costs(est, steps, cost_model)

    baseline = est.estimate(())
    chosen, why = carried(found.chosen)
    if chosen is None:
        return None, why
    if found.reached:
        if chosen.estimate.peak > found.limit:
            peak = chosen.estimate.peak / 2**20
            return None, f"its plan peaks at {peak:.1f} MiB on the whole function"
        return _Found(chosen, None, True, found.limit, baseline, costs), ""
    # Nothing fit the twin: its floor is the whole function's if the plans peak alike there.
    floor, why = carried(found.floor)
    if floor is None:
        return None, why
    if (chosen.estimate.peak, floor.estimate.peak) != (
        found.chosen.estimate.peak,
        found.floor.estimate.peak,
    ):
        return None, "the smallest peaks it found are not the whole function's"
    return _Found(chosen, floor, False, found.limit, baseline, costs), ""


def _shallow_twin(
    est: PlanEstimator, baseline: PlanEstimate
) -> tuple[ShallowTwin, PlanEstimator, int] | None:
    """The shallowest twin of ``est``'s function whose unchunked peak is the function's, its
    estimator, and the number of twins estimated to find it; None if none is."""
    classes = ClassFinder(est.func, est.func_name)
    repeats = find_repeats(classes)
    if repeats is None:
        return None
    probes = 0
    for kept in ShallowTwin.candidates(repeats.count):
        twin = ShallowTwin(est.mod, est.func_name, classes, repeats, kept)
        if twin.mod is None:
            logger.info("select: the function reads its repeated blocks out of order, no twin")
            return None
        twin_est = PlanEstimator(twin.mod, est.target, func_name=est.func_name, bounds=est.bounds)
        probes += 1
        if twin_est.estimate(()).peak == baseline.peak:
            return twin, twin_est, probes - 1  # the twin's own baseline counts in its estimator
    logger.info(
        "select: no twin of %d blocks or fewer peaks as the whole function does",
        max(ShallowTwin.candidates(repeats.count), default=0),
    )
    return None


def _step_costs(est: PlanEstimator, steps, cost_model: CostModel) -> tuple[float, ...]:
    totals = ModelTotals.of(est.func, est.bounds)
    return tuple(_priced(est, totals, cost_model, s.candidate, s.chunk_len) for s in steps)


def _priced(
    est: PlanEstimator,
    totals: ModelTotals,
    cost_model: CostModel,
    cand: ChunkCandidate,
    chunk_len: int,
) -> float:
    """The cost model's price of chunking ``cand`` at ``chunk_len`` in ``est``'s function."""
    features = step_features(
        est.func, cand, chunk_len, totals, est.bindings, est.bounds, bound_names=est.index
    )
    return cost_model.step_cost(features)


def _select_at_the_bound(
    mod: tvm.IRModule,
    budget: float | str,
    target: Any,
    func_name: str,
    dims: SymbolicDims,
    search: _Search,
    began: float,
) -> Selection:
    """Selection for a symbolic function (NOTE [symbolic selection], selection/symbolic.py):
    regions searched on its static twin at the bound, among those legal on both; every plan
    estimated as the symbolic build, at the bound."""
    if search.tune:
        raise ValueError(
            "tune=True times plans on inputs of one shape; a function of symbolic shapes "
            f"({', '.join(dims.bounds)}) is selected by the cost model"
        )
    twin = AtTheBound(mod, func_name, dims)
    symbolic = PlanEstimator(twin.symbolic, target, func_name=func_name, bounds=dims.bounds)
    try:
        # Its OverBudgetWarning (strict=False) waits until the second path has been tried.
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always", OverBudgetWarning)
            estimator = TwinEstimator(twin, symbolic)
            found = _select(estimator, budget, search, began, admits=twin.admits)
        unreachable = None
    except BudgetUnreachableError as err:
        found, unreachable = None, err
    if found is None or not found.reached:
        # NOTE [the twin's own path]: the symbolic build's estimates differ a little from the
        # twin's (its last chunk's buffers), and the search follows them: a budget near the
        # floor can be missed on one path and met on the other (transformers GPT-2 at 20%,
        # seq 1280: 21.5% one way, 19.4% the other). The twin's own selection, estimated as
        # the symbolic build, is the second path; it is kept if that build fits the budget.
        other = _twin_path(twin, symbolic, budget, search, began)
        if other is not None:
            found, unreachable, held = other, None, []
    if unreachable is not None:
        raise unreachable
    for caught in held:
        warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)
    steps = twin.steps(found.plan.steps)
    return dataclasses.replace(
        found,
        plan=dataclasses.replace(found.plan, steps=steps),
        estimate=dataclasses.replace(found.estimate, steps=ordered_steps(steps)),
        seconds=time.perf_counter() - began,
        bounds=dims.bounds,
        bounds_given=dims.given,
        steps_at_bounds=found.plan.steps,
    )


def _twin_path(
    twin: AtTheBound,
    symbolic: PlanEstimator,
    budget: float | str,
    search: _Search,
    began: float,
) -> Selection | None:
    """The static twin's own selection, with the symbolic build's estimate of its plan; None
    when that build does not fit the budget (NOTE [the twin's own path])."""
    baseline = symbolic.estimate(())
    limit = parse_budget(budget, baseline.peak)
    static = PlanEstimator(twin.static, symbolic.target, func_name=twin.func_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OverBudgetWarning)
        found = _select(
            static, limit, dataclasses.replace(search, strict=False), began, admits=twin.admits
        )
    estimate = symbolic.estimate(twin.steps(found.plan.steps))
    if not found.plan.steps or estimate.peak > limit:
        return None
    return dataclasses.replace(
        found,
        plan=dataclasses.replace(found.plan, estimated_peak=estimate.peak),
        unchunked_peak=baseline.peak,
        reached=True,
        evaluated=found.evaluated + symbolic.evaluated,
        estimate=dataclasses.replace(estimate, steps=found.plan.steps),
        baseline=baseline,
    )


def _beam(
    selector: _Selector,
    root: _State,
    beam_width: int,
    max_stages: int,
    patience: int | None = None,
):
    """The staged beam search: ``(plans that fit and took a slot of the beam, every plan
    made)``. With ``patience``, it also ends after that many stages in a row that make no
    plan with a peak lower than every plan before.

    NOTE [patience]: the least-memory search (a 1-byte budget, for the floor) ranks plans by
    their excess, which for such a budget is the area under the footprint: a plan that delays
    an allocation lowers it without lowering the peak, and a walk of such plans ran all 64
    stages (OpenFold's Evoformer on CUDA, 2-3 plans a stage). Only a lower peak lowers the
    floor, so that search stops when the peak has not moved for ``patience`` stages. Those
    walks do lead somewhere, though: on a transformers Llama (2 layers, seq 1024, llvm) four
    stages delay allocations and the fifth lowers the peak, to a plan that meets 20% (19.98%);
    a patience of 4 ended the search one stage short and reported 21.3% as the floor.
    :data:`FLOOR_PATIENCE` leaves twice that room. The budget-following search has no
    patience: there a stage that lowers the excess and not the peak is how a plateau is
    crossed (NOTE [plateaus]).

    NOTE [nested beams]: the beam has ``beam_width`` slots. At each stage, slot ``i`` takes
    the best plan (least excess, then least cost) not yet taken among the children of the
    plans in slots ``0..i``. A slot whose plan fits ends its line (it has no children), as
    does a slot left empty. The first ``w`` slots thus depend only on the first ``w`` slots
    before them: from the shared root, a narrower search's beam is, slot for slot, a prefix
    of a wider one's at every stage. A wider beam makes every plan a narrower one makes,
    runs at least as long (the search ends when no slot goes on), relaxes every plan that
    one relaxes, and never ends worse. Ranking all children of a stage together does not
    nest: a narrow beam could keep a line that a wide one dropped for plans that looked
    better one stage on. The nesting holds for one ``top_k``; a larger ``top_k`` is not
    nested (``expand`` stops at the first centre with a child).
    """
    budget = selector.budget

    def rank(state: _State):
        return (state.estimate.excess(budget), selector.cost(state.steps))

    def going(state: _State | None) -> bool:
        return state is not None and state.estimate.peak > budget

    kept: list[_State] = []
    explored: list[_State] = [root]
    beam: list[_State | None] = [root] + [None] * (beam_width - 1)
    lowest, idle = root.estimate.peak, 0
    for stage in range(max_stages):
        made: dict[tuple, _State] = {}  # plans reached twice are kept once (the DP)
        slots: list[_State | None] = []
        taken: set[tuple] = set()
        for parent in beam:
            if going(parent):
                for child in selector.expand(parent):
                    made.setdefault(child.steps, child)
            free = [c for c in made.values() if c.steps not in taken]
            slots.append(min(free, key=rank) if free else None)
            if free:
                taken.add(slots[-1].steps)
        explored.extend(made.values())
        kept += [c for c in slots if c is not None and not going(c)]
        beam = slots
        if made:
            logger.info(
                "select: stage %d, %d plans, %d fit, smallest peak %.1f MiB (budget %.1f MiB)",
                stage + 1,
                len(made),
                sum(c.estimate.peak <= budget for c in made.values()),
                min(c.estimate.peak for c in made.values()) / 2**20,
                budget / 2**20,
            )
        else:
            logger.info("select: stage %d, no plan lowers the excess or the peak", stage + 1)
        if not any(map(going, beam)):
            break
        stage_lowest = min((c.estimate.peak for c in made.values()), default=lowest)
        lowest, idle = (stage_lowest, 0) if stage_lowest < lowest else (lowest, idle + 1)
        if patience is not None and idle >= patience:
            logger.info("select: no lower peak in %d stages, the search ends", patience)
            break
    return kept, explored


def _selection(found: _Found, est: PlanEstimator, began: float) -> Selection:
    state = found.chosen
    costs = found.costs(state.steps)
    plan = ChunkPlan(state.steps, state.estimate.peak, 1.0 + sum(costs))
    return Selection(
        plan=plan,
        budget=found.limit,
        unchunked_peak=found.baseline.peak,
        reached=found.reached,
        step_costs=costs,
        evaluated=est.evaluated,
        seconds=time.perf_counter() - began,
        estimate=state.estimate,
        baseline=found.baseline,
    )
