"""Measured refinement (``tune=True``): time the best plans on the target device, keep the
fastest. The paper only estimates; a cost model fitted on one machine can misjudge another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..analysis.planned import as_target
from ..runtime.measure import DeviceUnavailableError, cuda_available, time_callable

logger = logging.getLogger("autochunk_tvm")


def example_inputs(func: relax.Function, seed: int = 0) -> list[np.ndarray]:
    """Random inputs for ``func``'s parameters (integers are zeros: valid token ids and
    indices); needs static shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for param in func.params:
        ty = param.ty
        if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
            raise ValueError(f"tune=True needs tensor inputs of known shape; {param.name} is {ty}")
        try:
            shape = [int(d) for d in ty.shape.values]
        except TypeError:
            raise ValueError(
                f"tune=True needs static input shapes; {param.name} has shape {ty.shape}"
            ) from None
        dtype = str(ty.dtype)
        if dtype.startswith(("int", "uint", "bool")):
            out.append(np.zeros(shape, dtype=dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def device_for(target: Any) -> tvm.runtime.Device:
    tgt = as_target(target)
    if tgt.kind.name == "cuda":
        if not cuda_available():
            raise DeviceUnavailableError(
                "tune=True times plans on the target device, and there is no CUDA device "
                "here: tune on a GPU machine, or leave tune=False to choose by the cost model"
            )
        return tvm.cuda(0)
    if tgt.kind.name in ("llvm", "c"):
        return tvm.cpu(0)
    raise ValueError(f"tune=True cannot time plans for target kind {tgt.kind.name!r}")


def fastest(
    modules: Sequence[tvm.IRModule],
    target: Any,
    func_name: str = "main",
    repeats: int = 5,
) -> tuple[int, list[float]]:
    """Index of the fastest module when built for ``target``, and each one's median time."""
    tgt = as_target(target)
    dev = device_for(tgt)
    inputs = [tvm.runtime.tensor(a, dev) for a in example_inputs(modules[0][func_name])]
    times = []
    for mod in modules:
        vm = relax.VirtualMachine(relax.build(mod, target=tgt), dev)
        fn = vm[func_name]

        def call(fn=fn):
            fn(*inputs)
            dev.sync()

        times.append(time_callable(call, warmup=1, repeats=repeats).median_s)
    logger.info("tune: plan times %s s", ", ".join(f"{t:.4f}" for t in times))
    return int(np.argmin(times)), times
