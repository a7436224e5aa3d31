"""autochunk-tvm: automatic activation-memory chunking for Apache TVM (Relax + TIR).

The public entry points of the foundation:

* :func:`from_torch` - PyTorch model / ExportedProgram / .pt2 file -> Relax IRModule;
* :func:`estimate_activation_memory` - per-binding liveness, peak and peak binding;
* :func:`static_allocation` - what a build of the module will allocate during one call;
* :func:`measure_peak_memory` - what it really allocates, measured in a fresh process;
* :func:`search_chunk_candidates` - every legal chunk region around the memory peak;
* :class:`ChunkPlan` and :func:`transform.LowerChunkPlan` - chosen regions become one TIR loop
  over chunks each (:func:`lower_chunk_plan` is the same as a function);
* :mod:`models` - GPT, ViT, AlphaFold Evoformer and Stable-Diffusion UNet factories.
"""

from . import models, transform
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
from .search import ChunkAxis, ChunkCandidate, search_chunk_candidates

__version__ = "0.1.0"

__all__ = [
    "BindingMemory",
    "ChunkAxis",
    "ChunkCandidate",
    "ChunkPlan",
    "ChunkPlanError",
    "ChunkStep",
    "LoweringError",
    "MemoryProfile",
    "PeakMemory",
    "StaticAllocation",
    "UnsupportedOperatorError",
    "estimate_activation_memory",
    "format_bytes",
    "from_exported_program",
    "from_torch",
    "lower_chunk_plan",
    "measure_peak_memory",
    "models",
    "search_chunk_candidates",
    "speed_ratio",
    "static_allocation",
    "time_callable",
    "transform",
]
