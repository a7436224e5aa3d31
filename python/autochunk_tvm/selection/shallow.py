"""Selection of a deep model on a shallow twin: the same function with fewer of its repeats.

NOTE [shallow twin]: a deep model is one block repeated (12 to 80 times), and selection chunks
a whole class of alike regions in one step (NOTE [region classes], select.py), so the plans it
estimates do not grow with depth. Each estimate still lowers and plans the whole function, so
its cost does: a 12-block Evoformer costs 3 s an estimate, a 48-block one about 12 s. The
footprint of a deep model is periodic, though: once a few blocks have run, the planner's
storages and the allocator's pools hold what every further block needs, and the peak stops
growing (the zoo Evoformer peaks at 36.6, 44.1, 51.4 and 58.6 MiB with 1 to 4 blocks, and at
58.6 MiB with 8 or 48).

So selection finds the repeats (:func:`find_repeats`), builds the twin that keeps the first
``m`` of them and reads the last one's values where the rest of the function read the last
repeat's (:class:`ShallowTwin`), takes the smallest ``m`` whose unchunked peak is the whole
function's, and selects there. The twin's plan is mapped back onto every repeat and estimated
once on the whole function: that estimate, never the twin's, decides whether the budget is
met. When it is not, or the plan cannot be mapped, selection runs on the whole function.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import relax

from ..analysis.memory import handle
from ..lowering import ChunkStep
from ..lowering.plan import ordered_steps
from ..search.classes import ClassFinder
from ..search.rewrite import substitute

logger = logging.getLogger("autochunk_tvm")

# A twin keeps at most this share of the repeats: a twin almost as deep as the function saves
# little, and the mapped plan's estimate on the whole function is an extra one.
MAX_KEPT_SHARE = 0.5
# Twins are tried keeping 2, 3, ... repeats until one peaks as the whole function does; a
# footprint not periodic within this many repeats is selected on the whole function.
MAX_KEPT = 8


@dataclasses.dataclass(frozen=True)
class Repeats:
    """``count`` runs of ``period`` bindings in a row from binding ``start``, each the same
    computation as the one before: the same ops, attributes and types, reading the previous
    run's values where that one read its own predecessor's (or the same values outside)."""

    start: int
    period: int
    count: int

    @property
    def end(self) -> int:
        """One past the last binding of the last repeat."""
        return self.start + self.period * self.count

    def repeat_of(self, index: int) -> int | None:
        """Which repeat binding ``index`` belongs to, or None outside them."""
        if self.start <= index < self.end:
            return (index - self.start) // self.period
        return None


def find_repeats(classes: ClassFinder, min_count: int = 3) -> Repeats | None:
    """The longest stretch of the function made of one repeated block, at least ``min_count``
    times in a row, or None. Of two periods that cover the same bindings, the shorter wins.

    Blocks are compared on :class:`ClassFinder`'s binding descriptions: first by their keys
    (vectorised, over every period), then, for the best period, by what each binding reads
    (``refs``): a binding one period on must read the values one period on, or the same ones.
    """
    keys, refs = classes.keys, classes.refs
    n = len(keys)
    if n < 2 * min_count:
        return None
    ids: dict = {}
    codes = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=n)
    ranked: list[tuple[int, int, int]] = []  # (-covered, period, start)
    for period in range(1, n // min_count + 1):
        same = codes[:-period] == codes[period:]
        start, length = _longest_run(same)
        if length // period + 1 >= min_count:
            ranked.append((-(length + period), period, start))
    ranked.sort()
    for _, period, start in ranked[:4]:
        found = _checked(keys, refs, period, start, min_count)
        if found is not None:
            return found
    return None


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in ``flags``; (0, 0) if none."""
    if not flags.any():
        return 0, 0
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best] - starts[best])


def _checked(keys, refs, period: int, start: int, min_count: int) -> Repeats | None:
    """The longest run of bindings ``i`` from near ``start`` that equal binding ``i - period``
    in key and, shifted by ``period``, in what they read; as :class:`Repeats`."""
    n = len(keys)
    best: tuple[int, int] = (0, 0)
    run_start, run = start + period, 0
    for i in range(start + period, n):
        shifted = keys[i] == keys[i - period] and all(
            r == q or (q is not None and r == q + period)
            for r, q in zip(refs[i], refs[i - period], strict=True)
        )
        if shifted:
            if run == 0:
                run_start = i
            run += 1
            if run > best[1]:
                best = (run_start, run)
        elif run:
            run = 0
            if i > start + 2 * period and best[1] >= period * (min_count - 1):
                break  # past the stretch the keys agreed on
    first, length = best
    count = length // period + 1
    if count < min_count:
        return None
    return Repeats(first - period, period, count)


@dataclasses.dataclass(frozen=True)
class TwinDepth:
    """A plan selected on a shallow twin: ``kept`` of the function's ``repeats``."""

    repeats: Repeats
    kept: int


class ShallowTwin:
    """The function with only the first ``kept`` of its repeats (NOTE [shallow twin]).

    Bindings before the repeats are kept as they are; those after them are kept with every
    value they read from a dropped repeat replaced by the same value ``count - kept`` repeats
    earlier. The twin's bindings keep their variables, so names carry over.
    """

    def __init__(
        self, mod: tvm.IRModule, func_name: str, classes: ClassFinder, repeats: Repeats, kept: int
    ):
        if not 2 <= kept < repeats.count:
            raise ValueError(f"a twin keeps 2 to {repeats.count - 1} repeats, not {kept}")
        self.func_name = func_name
        self.classes = classes
        self.repeats = repeats
        self.kept = kept
        self.shift = (repeats.count - kept) * repeats.period  # head index in the whole - twin's
        self.cut = repeats.start + kept * repeats.period  # the first binding the twin drops
        self.mod = self._build(mod)

    @property
    def depth(self) -> TwinDepth:
        return TwinDepth(self.repeats, self.kept)

    @classmethod
    def candidates(cls, count: int) -> Sequence[int]:
        """How many repeats a twin may keep, fewest first."""
        return range(2, min(MAX_KEPT, int(count * MAX_KEPT_SHARE)) + 1)

    def _build(self, mod: tvm.IRModule) -> tvm.IRModule | None:
        bindings = self.classes.bindings
        reps, cut = self.repeats, self.cut
        env: dict[relax.Expr, relax.Expr] = {}
        for j in range(cut, reps.end):
            earlier = j - self.shift
            if earlier < reps.start:
                continue  # reachable only through the check below
            env[bindings[j].var] = bindings[earlier].var
        index = 0
        blocks = []
        func = mod[self.func_name]
        for block in func.body.blocks:
            kept = []
            for binding in block.bindings:
                if cut <= index < reps.end:
                    index += 1
                    continue
                if index >= reps.end:
                    value = binding.value
                    if not self._reads_kept(value, env, cut, reps.end):
                        return None  # the rest reads a repeat the twin has no stand-in for
                    value = substitute(value, env)
                    if isinstance(binding, relax.MatchCast):
                        binding = relax.MatchCast(binding.var, value, binding.struct_info)
                    else:
                        binding = relax.VarBinding(binding.var, value)
                kept.append(binding)
                index += 1
            kind = (
                relax.DataflowBlock
                if isinstance(block, relax.DataflowBlock)
                else relax.BindingBlock
            )
            blocks.append(kind(kept))
        result = func.body.body
        if not self._reads_kept(result, env, cut, reps.end):
            return None
        body = relax.SeqExpr(blocks, substitute(result, env))
        twin = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
        out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        out[self.func_name] = twin
        return relax.transform.Normalize()(out)

    def _reads_kept(self, expr: relax.Expr, env, cut: int, end: int) -> bool:
        """Whether every value of a dropped repeat that ``expr`` reads has a stand-in."""
        position = self.classes.position
        for var in relax.analysis.free_vars(expr):
            j = position.get(handle(var))
            if j is not None and cut <= j < end and var not in env:
                return False
        return True

    def whole_index(self, index: int) -> int:
        """The binding of the whole function that twin binding ``index`` is."""
        return index if index < self.cut else index + self.shift

    def whole_steps(self, steps: Sequence[ChunkStep]) -> tuple[ChunkStep, ...] | None:
        """The twin's plan on the whole function, or None where a region does not carry over.

        A region outside the repeats is the same region there. A region in repeat ``j`` of the
        twin stands for repeat ``j`` of the whole function if ``j`` is not the last repeat
        kept, for the last repeat if it is; the repeats the twin dropped are chunked as the
        twin's next-to-last repeat is (its last one is followed by the rest of the function,
        theirs by another repeat). Every mapped region is traced afresh on the whole function
        and must have the twin's chunk flow.
        """
        reps, kept = self.repeats, self.kept
        out: list[ChunkStep] = []
        for step in steps:
            cand = step.candidate
            j = reps.repeat_of(cand.start)
            if j is None:
                starts = [self.whole_index(cand.start)]
            elif j < kept - 1:
                starts = [cand.start]
                if j == kept - 2:  # the dropped repeats follow the twin's next-to-last one
                    starts += [
                        cand.start + k * reps.period for k in range(1, reps.count - kept + 1)
                    ]
            else:
                starts = [cand.start + self.shift]
            for start in starts:
                twin = self.classes.twin_at(cand, start)
                if twin is None:
                    logger.info(
                        "select: region [%d, %d] of the shallow twin does not carry over to "
                        "[%d, %d]",
                        cand.start,
                        cand.end,
                        start,
                        start + cand.end - cand.start,
                    )
                    return None
                out.append(ChunkStep(twin, step.chunk_len, step.hoist))
        return ordered_steps(out)
