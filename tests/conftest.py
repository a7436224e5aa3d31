import numpy as np
import pytest
import torch
import tvm
from tvm import relax


def run_on_vm(mod, args, target="llvm"):
    """Build ``mod`` for CPU, run ``main`` on ``args``; outputs as a list of numpy arrays."""
    ex = relax.build(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a.detach().numpy()) for a in args])
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]


def torch_outputs(model, args):
    with torch.no_grad():
        out = model(*args)
    return [o.numpy() for o in (out if isinstance(out, tuple | list) else (out,))]


@pytest.fixture
def vm_run():
    return run_on_vm


def assert_close(actual, expected, dtype=np.float32):
    tol = {np.float32: 1e-4, np.float16: 2e-2}[dtype]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a.astype(np.float32), e.astype(np.float32), rtol=tol, atol=tol)
