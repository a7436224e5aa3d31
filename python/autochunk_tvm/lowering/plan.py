"""The record that stage 3 (selection) hands to stage 4 (lowering): a chunk plan.

A plan is an ordered list of steps, each a search candidate and the chunk length to run it at.
It can be written by hand from :func:`~autochunk_tvm.search.search_chunk_candidates`' results::

    cands = search_chunk_candidates(mod)
    plan = ChunkPlan.of((cands[0], 64))
    chunked = LowerChunkPlan(plan, target="llvm")(mod)
"""

from __future__ import annotations

import dataclasses

import tvm_ffi

from ..search.candidate import ChunkCandidate
from ..search.recompute import Recomputable


# Registered so that the error keeps its type when raised inside a module pass (it crosses
# TVM's FFI boundary on the way out).
@tvm_ffi.register_error
class ChunkPlanError(ValueError):
    """A plan that cannot be applied to this module: the message says what is wrong and what
    to do. The module is left unchanged."""


@dataclasses.dataclass(frozen=True)
class ChunkStep:
    """Run ``candidate``'s region in chunks of ``chunk_len`` chunk units.

    ``chunk_len`` need not divide the extent: the last chunk is shorter. ``hoist``: the
    region's bindings that do not depend on the chunk (``candidate.hoistable``) run once,
    before the loop (the paper's graph optimization); ``False`` runs them in every chunk, which
    recomputes them (only for the ablation that measures what hoisting saves).
    """

    candidate: ChunkCandidate
    chunk_len: int
    hoist: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.chunk_len, bool) or not isinstance(self.chunk_len, int):
            raise ChunkPlanError(f"chunk_len must be an int, got {self.chunk_len!r}")

    @property
    def n_chunks(self) -> int | None:
        """Number of chunks, or ``None`` when the extent is symbolic (known at run time)."""
        extent = self.candidate.extent
        if not isinstance(extent, int):
            return None
        return -(-extent // self.chunk_len)


def ordered_steps(steps) -> tuple[ChunkStep, ...]:
    """Steps in program order (by region start): the one canonical order of a set of steps."""
    return tuple(sorted(steps, key=lambda s: s.candidate.start))


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """An ordered list of chunk steps, plus what selection estimated for it.

    ``estimated_peak`` (bytes) and ``estimated_cost`` (relative run time, 1.0 = unchunked) are
    filled in by selection; a hand-written plan may leave them ``None``.

    ``recompute``: values computed afresh before each of their readers (NOTE [recompute shared
    masks], search/recompute.py), applied before the steps: the steps' positions are those of
    the function so rewritten (:func:`~autochunk_tvm.lowering.planned_module`).
    """

    steps: tuple[ChunkStep, ...]
    estimated_peak: int | None = None
    estimated_cost: float | None = None
    recompute: tuple[Recomputable, ...] = ()

    @classmethod
    def of(cls, *steps: tuple[ChunkCandidate, int] | ChunkStep) -> ChunkPlan:
        """A plan from ``(candidate, chunk_len)`` pairs or steps."""
        return cls(tuple(s if isinstance(s, ChunkStep) else ChunkStep(*s) for s in steps))

    @staticmethod
    def chunk_len_for(candidate: ChunkCandidate, n_chunks: int) -> int:
        """The chunk length that splits ``candidate``'s static extent into ``n_chunks`` chunks
        (the last one possibly shorter)."""
        if not isinstance(candidate.extent, int):
            raise ChunkPlanError("the extent is symbolic: give a chunk length, not a count")
        if not 1 <= n_chunks <= candidate.extent:
            raise ChunkPlanError(f"n_chunks must be in [1, {candidate.extent}], got {n_chunks}")
        return -(-candidate.extent // n_chunks)

    def __len__(self) -> int:
        return len(self.steps)
