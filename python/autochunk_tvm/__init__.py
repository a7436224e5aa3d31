"""autochunk-tvm: automatic activation-memory chunking for Apache TVM (Relax + TIR).

The public entry points of the foundation:

* :func:`from_torch` - PyTorch model / ExportedProgram / .pt2 file -> Relax IRModule;
* :func:`estimate_activation_memory` - per-binding liveness, peak and peak binding;
* :func:`static_allocation` - what a build of the module will allocate during one call;
* :func:`measure_peak_memory` - what it really allocates, measured in a fresh process;
* :func:`search_chunk_candidates` - every legal chunk region around the memory peak;
* :mod:`models` - GPT, ViT, AlphaFold Evoformer and Stable-Diffusion UNet factories.
"""

from . import models
from .analysis import (
    BindingMemory,
    MemoryProfile,
    StaticAllocation,
    estimate_activation_memory,
    format_bytes,
    static_allocation,
)
from .frontend import UnsupportedOperatorError, from_exported_program, from_torch
from .runtime import PeakMemory, measure_peak_memory, speed_ratio, time_callable
from .search import ChunkAxis, ChunkCandidate, search_chunk_candidates

__version__ = "0.1.0"

__all__ = [
    "BindingMemory",
    "ChunkAxis",
    "ChunkCandidate",
    "MemoryProfile",
    "PeakMemory",
    "StaticAllocation",
    "UnsupportedOperatorError",
    "estimate_activation_memory",
    "format_bytes",
    "from_exported_program",
    "from_torch",
    "measure_peak_memory",
    "models",
    "search_chunk_candidates",
    "speed_ratio",
    "static_allocation",
    "time_callable",
]
