"""What random and real models found: each case failed (a crash, a raw TVM error, a silent
wrong answer) before its fix. Bad input gets an error that says what to do; an op or value the
passes do not understand is a barrier, never a crash."""

import numpy as np
import pytest
import torch
import tvm
from conftest import run_on_vm
from tvm.script import ir as I
from tvm.script import relax as R

import autochunk_tvm as ac


class FusedQKV(torch.nn.Module):
    """Attention whose projection is split with torch.split, as most real models write it."""

    def __init__(self, d=32):
        super().__init__()
        self.d, self.qkv, self.out = d, torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).split(self.d, -1)
        scores = torch.softmax(q @ k.transpose(-1, -2) / self.d**0.5, -1)
        return self.out(scores @ v)


def test_a_split_fused_projection_builds_chunked_and_equal():
    # Once: LoweringError "region outputs [0] are not written by any kernel", raised from one
    # candidate's estimate inside select_plan, aborted ac.build.
    torch.manual_seed(0)
    model, x = FusedQKV().eval(), torch.randn(1, 256, 32)
    mod = ac.from_torch(model, (x,))
    seen = []
    chunked = ac.build(mod, "llvm", budget=0.5, on_selection=seen.append)
    assert seen[0].reached and seen[0].plan.steps
    vm = tvm.relax.VirtualMachine(chunked, tvm.cpu())
    got = ac.runtime.output_arrays(vm["main"](tvm.runtime.tensor(x.numpy())))[0]
    np.testing.assert_allclose(got, run_on_vm(mod, (x,))[0], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small():
    return ac.from_torch(FusedQKV().eval(), (torch.randn(1, 64, 32),))


@pytest.mark.parametrize(
    "call",
    [
        lambda bad: ac.select_plan(bad, 0.5, "llvm"),
        lambda bad: ac.static_allocation(bad, "llvm"),
        lambda bad: ac.transform.AutoChunk(0.5, target="llvm")(bad),
        lambda bad: ac.build(bad, "llvm", budget=0.5),
    ],
    ids=["select_plan", "static_allocation", "AutoChunk", "build"],
)
@pytest.mark.parametrize("bad", [3, torch.nn.Linear(2, 2), "model.pt2"], ids=type)
def test_what_is_not_a_module_is_refused_saying_what_to_pass(call, bad):
    # Once: "'int' object has no attribute 'body'", "Mismatched type on argument #1".
    with pytest.raises(TypeError, match="from_torch"):
        call(bad)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget": "lots"}, "cannot read budget"),
        ({"budget": 1.5}, r"\(0, 1\]"),
        ({"budget": -4}, "positive"),
        ({"budget": 0.5, "max_chunks": 0}, "max_chunks must be a positive integer"),
        ({"budget": 0.5, "beam_width": 0}, "beam_width must be a positive integer"),
        ({"budget": 0.5, "top_k": 1.5}, "top_k must be a positive integer"),
        ({"budget": 0.5, "headroom": 1.0}, "headroom"),
    ],
)
def test_bad_settings_are_refused_when_the_pass_is_made(settings, message):
    # Once: an invalid budget failed only when the pass ran; max_chunks=0 raised
    # ZeroDivisionError and beam_width=0 IndexError from inside the search.
    with pytest.raises(ValueError, match=message):
        ac.transform.AutoChunk(**settings, target="llvm")


def test_the_same_settings_are_refused_by_select_plan(small):
    with pytest.raises(ValueError, match="max_chunks must be a positive integer"):
        ac.select_plan(small, 0.5, "llvm", max_chunks=0)
    with pytest.raises(ValueError, match="beam_width must be a positive integer"):
        ac.select_plan(small, 0.5, "llvm", beam_width=0)


@pytest.mark.parametrize("budget", [np.float64(1.0), np.float32(1.0), np.int64(1 << 30)])
def test_numpy_scalar_budgets_are_budgets(small, budget):
    sel = ac.select_plan(small, budget, "llvm")
    assert sel.budget == ac.parse_budget(budget, sel.unchunked_peak)


@I.ir_module
class UnknownShape:
    @R.function
    def main(x: R.Tensor((64, 64), "float32")):
        with R.dataflow():
            h = R.exp(x)
            u = R.nonzero(h)  # its shape depends on the data
            y = R.sum(u)
            R.output(y)
        return y


def test_a_tensor_of_unknown_shape_is_named_not_estimated_as_zero():
    # Once: a silent 0-byte estimate, an empty plan reported as "reached", and a raw
    # CodeGenVM error from ac.build.
    with pytest.raises(ValueError, match="unknown shape .*Dim"):
        ac.select_plan(UnknownShape, 0.1, "llvm")


def test_the_package_works_on_relax_without_torch(tmp_path):
    """torch is needed by the frontend and the zoo only: on a machine without it (simulated
    by blocking the import) the package imports and its Relax-level stages run."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import autochunk_tvm as ac\n"
        "from tvm.script import relax as R\n"
        "@R.function\n"
        "def main(x: R.Tensor((64, 64), 'float32')):\n"
        "    with R.dataflow():\n"
        "        y = R.nn.softmax(R.exp(x), axis=-1)\n"
        "        R.output(y)\n"
        "    return y\n"
        "import tvm\n"
        "mod = tvm.IRModule({'main': main})\n"
        "assert ac.estimate_activation_memory(mod).peak_bytes > 0\n"
        "assert ac.static_allocation(mod, 'llvm').peak_bytes > 0\n"
        "print('ok')\n"
    )
    script = tmp_path / "relax_only.py"  # TVMScript reads its source: a file, not -c
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_build_does_not_load_the_test_oracle():
    """The reference executor (search/reference.py) exists to check search against the
    lowering; the lowering and the pass must not depend on it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import autochunk_tvm.lowering, autochunk_tvm.selection, autochunk_tvm.transform\n"
        "import autochunk_tvm.pipeline, autochunk_tvm.cli\n"
        "print('autochunk_tvm.search.reference' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
