"""autochunk-tvm: automatic activation-memory chunking for Apache TVM (Relax + TIR).

The public entry points of the foundation:

* :func:`from_torch` - PyTorch model / ExportedProgram / .pt2 file -> Relax IRModule;
* :func:`estimate_activation_memory` - per-binding liveness, peak and peak binding;
* :func:`static_allocation` - what a build of the module will allocate during one call;
* :func:`measure_peak_memory` - what it really allocates, measured in a fresh process;
* :func:`search_chunk_candidates` - every legal chunk region around the memory peak;
* :func:`select_plan` - the regions and chunk lengths that meet a memory budget at the least
  predicted speed loss (:class:`PlanReport` tells what it chose);
* :class:`ChunkPlan` and :func:`transform.LowerChunkPlan` - chosen regions become one TIR loop
  over chunks each (:func:`lower_chunk_plan` is the same as a function);
* :func:`transform.AutoChunk` - all of it as one pass; :func:`build` - a one-call build with it
  (also ``relax.get_pipeline("autochunk", budget=...)``);
* :mod:`models` - GPT, ViT, AlphaFold Evoformer and Stable-Diffusion UNet factories.
"""

from . import transform
from .analysis import (
    BindingMemory,
    MemoryProfile,
    StaticAllocation,
    estimate_activation_memory,
    format_bytes,
    static_allocation,
)
from .frontend import UnsupportedOperatorError, from_exported_program, from_torch
from .lowering import ChunkPlan, ChunkPlanError, ChunkStep, LoweringError, lower_chunk_plan
from .runtime import PeakMemory, measure_peak_memory, speed_ratio, time_callable
from .pipeline import autochunk_pipeline, build
from .search import ChunkAxis, ChunkCandidate, search_chunk_candidates
from .selection import (
    BudgetUnreachableError,
    CostModel,
    OverBudgetWarning,
    Selection,
    parse_budget,
    select_plan,
)
from .selection.report import PlanReport

__version__ = "0.1.0"


def __getattr__(name: str):
    # NOTE [lazy torch]: the zoo builds torch modules; importing it only when it is used keeps
    # `import autochunk_tvm` (and everything that works on Relax alone) free of torch.
    if name == "models":
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BindingMemory",
    "BudgetUnreachableError",
    "ChunkAxis",
    "ChunkCandidate",
    "ChunkPlan",
    "ChunkPlanError",
    "ChunkStep",
    "CostModel",
    "LoweringError",
    "MemoryProfile",
    "OverBudgetWarning",
    "PeakMemory",
    "PlanReport",
    "Selection",
    "StaticAllocation",
    "UnsupportedOperatorError",
    "autochunk_pipeline",
    "build",
    "estimate_activation_memory",
    "format_bytes",
    "from_exported_program",
    "from_torch",
    "lower_chunk_plan",
    "measure_peak_memory",
    "models",
    "parse_budget",
    "search_chunk_candidates",
    "select_plan",
    "speed_ratio",
    "static_allocation",
    "time_callable",
    "transform",
]
