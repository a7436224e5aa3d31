"""The corpus of real architectures (``autochunk_tvm.models.corpus``), built from the
libraries' own configs with random weights: every stage runs on graphs this project did not
write. Each model is skipped, with the reason, when its library is not installed.

Default suite: every model imports, its unchunked build equals PyTorch, and the static
prediction is within 3% (+0.5 MiB) of the measured peak; AutoChunk at 30% of the peak is
checked on the decoder families, where `ac.build` once crashed in the liveness analysis. The
AutoChunk check of every other model, and the OpenFold blocks at 25%, run with ``-m slow``
(selection takes minutes on 2 cores).
"""

import autochunk_tvm as ac
import numpy as np
import pytest
import tvm
from autochunk_tvm.models.corpus import CORPUS, corpus_model, missing_library
from autochunk_tvm.runtime import output_arrays, to_numpy
from autochunk_tvm.selection.estimate import PlanEstimator
from conftest import torch_outputs
from tvm import relax


def _built(name):
    missing = missing_library(name)
    if missing is not None:
        pytest.skip(f"{name} needs {missing}, which is not installed")
    model, args = corpus_model(name)
    return model, args, ac.from_torch(model, args)


@pytest.fixture(scope="module")
def corpus():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _built(name)
        return cache[name]

    return get


SMALL_SIZE_SLACK = 1 << 19


def _run(ex, args):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return output_arrays(vm["main"](*[tvm.runtime.tensor(to_numpy(a)) for a in args]))


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_unchunked_build_equals_pytorch_and_its_memory_is_predicted(corpus, name):
    model, args, mod = corpus(name)
    plain = relax.build(mod, "llvm")
    got, want = _run(plain, args), torch_outputs(model, args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    predicted = ac.static_allocation(mod, "llvm").peak_bytes
    measured = ac.measure_peak_memory(plain, args).peak_bytes
    print(f"{name}: predicted {predicted / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB")
    # 3%, plus half a MiB: at these test sizes (a few MiB) the runtime's own constant
    # allocations and RSS page noise are that large (SD3 at 3.6 MiB measured 0.24 MiB over)
    assert abs(predicted - measured) <= 0.03 * measured + SMALL_SIZE_SLACK, (predicted, measured)


DEFAULT_AUTOCHUNK = {"gpt2_masked", "llama"}


@pytest.mark.parametrize(
    "name",
    [
        n if n in DEFAULT_AUTOCHUNK else pytest.param(n, marks=pytest.mark.slow)
        for n in sorted(CORPUS)
    ],
)
def test_autochunk_at_30_percent_meets_the_budget_with_equal_outputs(corpus, name):
    model, args, mod = corpus(name)
    seen = []
    try:
        chunked = ac.build(mod, "llvm", budget=0.3, on_selection=seen.append)
    except ac.BudgetUnreachableError as err:
        # the floor is explained, and is itself a budget that can be met
        assert err.smallest_peak > err.budget and "at the peak" in str(err)
        sel = ac.select_plan(mod, err.smallest_peak, "llvm")
        assert sel.reached
        pytest.xfail(f"{name}: 30% is below the floor, {err.smallest_peak / 2**20:.1f} MiB")
    (sel,) = seen
    assert sel.reached and sel.plan.steps
    plain = relax.build(mod, "llvm")
    for g, w in zip(_run(chunked, args), _run(plain, args)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    measured = ac.measure_peak_memory(chunked, args).peak_bytes
    # the estimate measures up to ~3% low on chunked plans; selection keeps 3% headroom
    assert measured <= sel.budget * 1.03, (measured, sel.budget)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["openfold_evoformer", "openfold_pairformer"])
def test_openfold_blocks_reach_a_quarter_of_their_peak(corpus, name):
    # Their floors were 44% and 41% while the search window counted reshapes: the triangle
    # attention's region stopped before the probabilities@values matmul. Planned at 20% (19%
    # estimated for both), they measure under 25%: at these 3 MiB sizes the runtime's own
    # allocations add a few percent.
    model, args, mod = corpus(name)
    seen = []
    chunked = ac.build(mod, "llvm", budget=0.2, on_selection=seen.append)
    (sel,) = seen
    assert sel.reached
    plain = relax.build(mod, "llvm")
    for g, w in zip(_run(chunked, args), _run(plain, args)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    measured = ac.measure_peak_memory(chunked, args).peak_bytes
    unchunked = ac.measure_peak_memory(plain, args).peak_bytes
    print(f"{name}: {measured / unchunked:.1%} of the unchunked peak")
    assert measured <= 0.25 * unchunked


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size", [("openfold_evoformer", {"n_res": 128}), ("esmfold_block", {"n_res": 144})]
)
def test_the_evoformer_blocks_meet_30_percent_on_cuda_as_on_llvm(name, size):
    # At their benchmark sizes both meet 30% on llvm. On CUDA they stopped at 72% and 38%:
    # NOTE [coarser children] (the triangle attention needs fewer chunks than the finest) and
    # NOTE [positions are high-level] (the transition was never searched).
    missing = missing_library(name)
    if missing is not None:
        pytest.skip(f"{name} needs {missing}, which is not installed")
    model, args = corpus_model(name, **size)
    sel = ac.select_plan(ac.from_torch(model, args), 0.3, "cuda")
    assert sel.reached and sel.plan.estimated_peak <= sel.budget


def test_llama_reaches_a_fifth_of_its_peak_past_a_flat_stretch():
    """NOTE [patience] (selection/select.py): on a 2-layer transformers Llama at seq 1024 the
    least-memory search walks four stages without a lower peak before the one that meets 20%;
    a floor search that gave up after four reported 21.3% as unreachable."""
    missing = missing_library("llama")
    if missing is not None:
        pytest.skip(f"llama needs {missing}, which is not installed")
    model, args = corpus_model("llama", n_layers=2, seq_len=1024)
    sel = ac.select_plan(ac.from_torch(model, args), 0.2, "llvm")
    assert sel.reached and sel.plan.estimated_peak <= sel.budget


def test_a_storage_sized_late_in_the_function_is_a_cause_after_cuda_fusion(corpus):
    """NOTE [positions are high-level] (selection/estimate.py): on CUDA, fusion makes the
    lowered function shorter than the high-level one. A storage is sized by the largest tensor
    the planner ever puts in it (ESMFold's transition, at the end of the block) and allocated
    at its first use; that tensor's binding lies past the lowered function's length, and
    selection once dropped it as a cause: the transition was never searched on CUDA."""
    model, args, mod = corpus("esmfold_block")
    estimate = PlanEstimator(mod, "cuda").estimate(())
    assert len(estimate.position) < estimate.returns_at  # fusion shortened the function
    sized_by = {}  # storage binding -> (its bytes, the high-level binding of its largest tensor)
    for j, tensors in estimate.allocation.storage_tensors.items():
        t, nbytes = max(tensors, key=lambda item: item[1])
        sized_by[j] = (nbytes, estimate.position[t])
    largest = max(nbytes for nbytes, _ in sized_by.values())
    first = min(j for j, (nbytes, _) in sized_by.items() if nbytes == largest)
    cause = sized_by[first][1]
    assert cause >= len(estimate.position)
    assert cause in estimate.excess_causes(1)
