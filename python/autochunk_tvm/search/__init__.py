"""Stage 2 of AutoChunk: chunk search (compute only, never rewrites IR).

Per-op chunk rules (:mod:`.rules`), chunk-flow tracing of a region (:mod:`.flow`) and the
records they produce (:mod:`.candidate`); the shared values worth recomputing before each
reader (:mod:`.recompute`).
"""

from .candidate import WHOLE, CantChunk, ChunkAxis, ChunkCandidate
from .flow import flat_bindings, last_uses, region_outputs, trace_region
from .recompute import Recomputable, find_recomputable
from .regions import search_chunk_candidates
from .rules import RULES

__all__ = [
    "RULES",
    "WHOLE",
    "CantChunk",
    "ChunkAxis",
    "ChunkCandidate",
    "Recomputable",
    "find_recomputable",
    "flat_bindings",
    "last_uses",
    "region_outputs",
    "search_chunk_candidates",
    "trace_region",
]
