"""Stage 1 of AutoChunk: activation-memory analysis (compute only, never rewrites IR)."""

from .memory import BindingMemory, MemoryProfile, estimate_activation_memory, format_bytes
from .planned import StaticAllocation, lower_to_memory_plan, static_allocation
from .sources import TorchSource

__all__ = [
    "BindingMemory",
    "MemoryProfile",
    "StaticAllocation",
    "TorchSource",
    "estimate_activation_memory",
    "format_bytes",
    "lower_to_memory_plan",
    "static_allocation",
]
