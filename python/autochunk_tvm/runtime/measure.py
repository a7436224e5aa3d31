"""Run a compiled model and measure what it really costs: peak activation memory and time.

Memory is measured in a *fresh process* (docs/architecture.md §4): the module is exported to a
shared library, a worker process loads it and its inputs, and the growth of the worker's memory
across one call is the call's activation memory (everything allocated during the call; inputs,
created before it, are not included: compare with :class:`StaticAllocation.peak_bytes`).

* CPU: the worker resets its RSS high-water mark (``/proc/self/clear_refs``) right before the
  call and reads ``VmHWM`` after it.
* CUDA: device memory in use (total minus free, as the driver reports it) after the call minus
  before it. The VM's pooled allocator gives nothing back to the driver during a call, so the
  difference is the call's peak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from .. import console

WORKER = "autochunk_tvm.runtime._peak_worker"


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. a CUDA GPU) is not present on this machine."""


@dataclasses.dataclass(frozen=True)
class PeakMemory:
    """Measured memory growth during one call (integer bytes).

    Attributes
    ----------
    peak_bytes
        Growth of the worker's memory across the call (CPU: peak RSS; CUDA: device memory).
    baseline_bytes
        The worker's memory just before the call (module, weights and inputs loaded).
    device
        ``"cpu"`` or ``"cuda"``.
    """

    peak_bytes: int
    baseline_bytes: int
    device: str


def to_numpy(arg: Any) -> np.ndarray:
    """A numpy array from a torch tensor, TVM tensor or array-like; bfloat16 included.

    torch cannot hand a bfloat16 tensor to numpy; ``ml_dtypes`` (a TVM dependency) gives numpy a
    bfloat16 dtype that TVM accepts, so the values are exact.
    """
    if hasattr(arg, "detach"):  # torch.Tensor, without importing torch
        tensor = arg.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            import ml_dtypes

            return tensor.float().numpy().astype(ml_dtypes.bfloat16)
        return tensor.numpy()
    if isinstance(arg, tvm.runtime.Tensor):
        return arg.numpy()
    return np.asarray(arg)


def output_arrays(out: Any) -> list[np.ndarray]:
    """What a VM function returned (a tensor, or tuples of them, nested), as numpy arrays in
    order."""
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [a for item in out for a in output_arrays(item)]


def save_inputs(args: Sequence[Any], folder: str, prefix: str = "input") -> list[str]:
    """Write each argument to ``folder/<prefix><i>.npy`` (what the C++ runner ``autochunk_run``
    and the measurement worker read); returns the paths in argument order."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, arg in enumerate(args):
        path = os.path.join(folder, f"{prefix}{i}.npy")
        np.save(path, to_numpy(arg))
        paths.append(path)
    return paths


def cuda_available() -> bool:
    """Whether TVM sees a CUDA device on this machine."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - a runtime without CUDA support raises on query
        return False


def _executable(mod_or_exec: Any, target: Any) -> Any:
    if isinstance(mod_or_exec, tvm.IRModule):
        from ..analysis.planned import as_target

        return relax.build(mod_or_exec, target=as_target(target))
    if hasattr(mod_or_exec, "export_library"):
        return mod_or_exec
    raise TypeError(
        "measure_peak_memory expects a Relax tvm.IRModule or a built executable (from "
        f"relax.build / autochunk_tvm.build), got {type(mod_or_exec).__qualname__}"
    )


@console.holds_back_native_noise
def measure_peak_memory(
    mod_or_exec: Any,
    args: Sequence[Any],
    *,
    target: Any = "llvm",
    func_name: str = "main",
    timeout_s: float = 1200.0,
) -> PeakMemory:
    """Run one call of a compiled model in a fresh process and return its peak memory growth.

    Parameters
    ----------
    mod_or_exec
        A Relax IRModule (built here for ``target``) or an executable from ``relax.build``.
    args
        Inputs: numpy arrays, torch tensors or TVM tensors.
    target
        ``"llvm"`` (measured as process RSS) or ``"cuda"`` (device memory).
    func_name
        Function to call.
    timeout_s
        Give up on the worker after this long.

    Returns
    -------
    PeakMemory

    Raises
    ------
    DeviceUnavailableError
        CUDA asked for and no GPU present.
    RuntimeError
        The worker failed; its error output is included.
    """
    from ..analysis.planned import as_target

    tgt = as_target(target)
    device = "cuda" if tgt.kind.name == "cuda" else "cpu"
    if device == "cuda" and not cuda_available():
        raise DeviceUnavailableError(
            "measure_peak_memory(target='cuda') needs a CUDA GPU and none is visible; "
            "measure on CPU with target='llvm' or run on a machine with a GPU"
        )
    ex = _executable(mod_or_exec, tgt)
    with tempfile.TemporaryDirectory(prefix="autochunk_measure_") as tmp:
        lib = os.path.join(tmp, "model.so")
        ex.export_library(lib)  # logs "Scope Saving" per constant: held back (console.py)
        paths = save_inputs(args, tmp, prefix="arg")
        env = dict(os.environ)
        # NOTE [glibc mmap threshold]: glibc raises its mmap threshold after large frees and then
        # serves big blocks from the heap, which it keeps after free: RSS would then depend on
        # allocation history, not on what TVM holds. A fixed threshold makes every large block
        # an mmap that is returned on free, so RSS tracks TVM's allocations exactly.
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.dirname(__file__)))]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        cmd = [sys.executable, "-m", WORKER, lib, device, func_name, *paths]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory-measurement worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return PeakMemory(
        peak_bytes=int(result["peak_bytes"]),
        baseline_bytes=int(result["baseline_bytes"]),
        device=device,
    )


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median and spread of repeated calls (seconds)."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int


def time_callable(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed ones.

    ``fn`` must block until its work is done (sync the device inside it on GPUs).
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats)


def vm_callable(ex: Any, args: Sequence[Any], *, device: Any = None, func_name: str = "main"):
    """A zero-argument callable running ``func_name`` of a built executable on ``args``."""
    dev = device or tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    inputs = [tvm.runtime.tensor(to_numpy(a), dev) for a in args]
    func = vm[func_name]

    def call():
        out = func(*inputs)
        dev.sync()
        return out

    return call


def speed_ratio(
    chunked: Callable[[], Any],
    unchunked: Callable[[], Any],
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> float:
    """Time of ``chunked`` over time of ``unchunked``, measured interleaved in this process.

    Calls alternate so that drift in machine load hits both alike. Above 1 means slower.
    """
    for _ in range(warmup):
        chunked()
        unchunked()
    a, b = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        chunked()
        a.append(time.perf_counter() - start)
        start = time.perf_counter()
        unchunked()
        b.append(time.perf_counter() - start)
    return statistics.median(a) / statistics.median(b)
