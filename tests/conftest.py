import re

import numpy as np
import torch
import tvm
from tvm import relax

from autochunk_tvm.runtime import output_arrays, to_numpy


def run_on_vm(mod, args, target="llvm"):
    """Build ``mod`` for CPU, run ``main`` on ``args``; outputs as a list of numpy arrays."""
    ex = relax.build(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return output_arrays(vm["main"](*[tvm.runtime.tensor(to_numpy(a)) for a in args]))


def cuda_kernels(ex) -> set[str]:
    """The names of the CUDA kernels (``__global__`` functions) of a built executable."""

    def walk(m):
        yield m
        for imported in m.imports:
            yield from walk(imported)

    source = "".join(m.inspect_source() for m in walk(ex.mod) if m.kind == "cuda")
    return set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source))


def torch_outputs(model, args):
    with torch.no_grad():
        out = model(*args)
    return [o.numpy() for o in (out if isinstance(out, tuple | list) else (out,))]


def assert_close(actual, expected, tol=1e-4):
    """fp32 outputs equal up to float32 rounding differences in reductions."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)


def op_name(binding) -> str:
    """Name of the op a binding calls ("" for anything else)."""
    return getattr(getattr(binding.value, "op", None), "name", "")
