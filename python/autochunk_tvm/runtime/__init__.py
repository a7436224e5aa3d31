"""Running compiled models: peak-memory measurement and timing."""

from .measure import (
    DeviceUnavailableError,
    PeakMemory,
    Timing,
    cuda_available,
    measure_peak_memory,
    output_arrays,
    save_inputs,
    speed_ratio,
    time_callable,
    to_numpy,
    vm_callable,
)

__all__ = [
    "DeviceUnavailableError",
    "PeakMemory",
    "Timing",
    "cuda_available",
    "measure_peak_memory",
    "output_arrays",
    "save_inputs",
    "speed_ratio",
    "time_callable",
    "to_numpy",
    "vm_callable",
]
