"""Stage 4 of AutoChunk: chunk regions become TIR loops over chunk indices.

:mod:`.plan` holds the plan record, :mod:`.region` re-emits a region at chunk shape,
:mod:`.stages` legalizes and schedules it as the target's build would, :mod:`.composite`
composes the loop PrimFunc and :mod:`.lower` rewrites the Relax function around it;
:mod:`.recompute` computes a shared value afresh before each of its readers first;
:mod:`.bounds` states a symbolic function's bounds for the build and the runtime.
"""

from .bounds import guard_bounds, with_bounds
from .lower import COMPOSITE_ATTR, lower_chunk_plan, planned_module, validate_plan
from .recompute import recompute_at_readers
from .plan import ChunkPlan, ChunkPlanError, ChunkStep
from .region import LoweringError

__all__ = [
    "COMPOSITE_ATTR",
    "ChunkPlan",
    "ChunkPlanError",
    "ChunkStep",
    "LoweringError",
    "guard_bounds",
    "lower_chunk_plan",
    "planned_module",
    "recompute_at_readers",
    "validate_plan",
    "with_bounds",
]
