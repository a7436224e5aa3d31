"""Recomputing a shared mask before each of its readers (NOTE [recompute shared masks]):
which values qualify, the rewrite, and what selection makes of it."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import cuda_kernels, run_on_vm

import autochunk_tvm as ac
from autochunk_tvm.analysis.planned import as_target
from autochunk_tvm.analysis.memory import flat_bindings
from autochunk_tvm.lowering import (
    COMPOSITE_ATTR,
    ChunkPlan,
    ChunkPlanError,
    lower_chunk_plan,
    planned_module,
)
from autochunk_tvm.lowering.recompute import recompute_at_readers
from autochunk_tvm.selection.estimate import PlanEstimator
from autochunk_tvm.selection.report import PlanReport
from autochunk_tvm.search.recompute import find_recomputable


def _two_layers(
    mask_in_second: bool = True,
    extra_reader: bool = False,
    symbolic: bool = False,
    name_twice: bool = False,
) -> tvm.IRModule:
    """Two attention-like layers that add one (512, 512) mask, built from a (1, 512) input
    and two aranges, to their scores; ``symbolic``: of length ``n`` up to 512; ``name_twice``:
    a later binding is named ``causal`` too."""
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64") if symbolic else 512
    x = relax.Var("x", relax.TensorType((1, n, 64), "float32"))
    keep = relax.Var("keep", relax.TensorType((1, n), "bool"))
    attrs = {"tir_var_upper_bound": {"n": 512}} if symbolic else None
    with bb.function("main", [x, keep], attrs=attrs):
        with bb.dataflow():

            def emit(name, expr):
                return bb.emit(expr, name)

            rows = emit("rows", relax.op.arange(0, n, 1, "int64"))
            q = emit("q", relax.op.expand_dims(rows, [1]))
            k = emit("k", relax.op.expand_dims(rows, [0]))
            causal = emit("causal", relax.op.less_equal(k, q))
            allowed = emit("allowed", relax.op.logical_and(causal, keep))
            zero, low = relax.const(0.0, "float32"), relax.const(-1e9, "float32")
            mask = emit("mask", relax.op.where(allowed, zero, low))
            t0 = emit("t0", relax.op.permute_dims(x, [0, 2, 1]))
            s0 = emit("s0", relax.op.matmul(x, t0))
            a0 = emit("a0", relax.op.add(s0, mask))
            p0 = emit("p0", relax.op.nn.softmax(a0, -1))
            h0 = emit("h0", relax.op.matmul(p0, x))
            t1 = emit("t1", relax.op.permute_dims(h0, [0, 2, 1]))
            s1 = emit("s1", relax.op.matmul(h0, t1))
            a1 = emit("a1", relax.op.add(s1, mask if mask_in_second else s1))
            e1 = emit(
                "e1",
                relax.op.astype(allowed, "float32") if extra_reader else relax.op.multiply(s1, s1),
            )
            b1 = emit("b1", relax.op.add(a1, e1))
            if name_twice:  # BlockBuilder.emit would make the name unique
                twice = relax.DataflowVar("causal", b1.ty)
                bb.emit_normalized(relax.VarBinding(twice, b1))
                b1 = twice
            p1 = emit("p1", relax.op.nn.softmax(b1, -1))
            h1 = bb.emit_output(relax.op.matmul(p1, h0), "h1")
        bb.emit_func_output(h1)
    return bb.get()


def _run(mod, args):
    (out,) = run_on_vm(mod, args)
    return out


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 512, 64)).astype("float32") * 0.1
    keep = rng.random((1, 512)) > 0.2
    keep[0, 0] = True
    return x, keep


def test_a_mask_read_by_two_layers_is_recomputed_with_its_large_chain():
    (found,) = find_recomputable(_two_layers())
    assert found.name == "mask"
    assert found.chain == ("causal", "allowed", "mask")  # the small aranges are shared
    assert found.readers == ("a0", "a1")
    assert found.nbytes == 512 * 512 * 4


def test_values_that_do_not_qualify_are_left_where_they_are():
    assert find_recomputable(_two_layers(mask_in_second=False)) == ()  # one reader
    assert find_recomputable(_two_layers(), min_bytes=2 << 20) == ()  # too small
    assert find_recomputable(_two_layers(name_twice=True)) == ()  # a record could not name it
    # ``allowed`` is read outside the mask's chain: the mask is not recomputed (its copies
    # would leave the original chain alive), but ``allowed``, read twice, is.
    (found,) = find_recomputable(_two_layers(extra_reader=True))
    assert (found.name, found.chain, found.readers) == (
        "allowed",
        ("causal", "allowed"),
        ("mask", "e1"),
    )


def test_a_binding_that_reads_a_value_twice_is_one_reader():
    bb = relax.BlockBuilder()
    keep = relax.Var("keep", relax.TensorType((1, 512), "bool"))
    with bb.function("main", [keep]):
        with bb.dataflow():
            rows = bb.emit(relax.op.arange(0, 512, 1, "int64"), "rows")
            q = bb.emit(relax.op.expand_dims(rows, [1]), "q")
            causal = bb.emit(relax.op.less_equal(rows, q), "causal")
            mask = bb.emit(relax.op.logical_and(causal, keep), "mask")
            both = bb.emit(relax.op.logical_or(mask, mask), "both")
            out = bb.emit_output(relax.op.astype(both, "float32"), "out")
        bb.emit_func_output(out)
    assert find_recomputable(bb.get(), min_bytes=64 << 10) == ()  # mask: one reader


def test_a_value_computed_from_a_large_matmul_output_is_not_recomputed():
    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((1, 512, 64), "float32")):
            with R.dataflow():
                t = R.permute_dims(x, axes=[0, 2, 1])
                s = R.matmul(x, t)
                half = R.multiply(s, R.const(0.5, "float32"))
                a = R.add(s, half)
                b = R.multiply(a, half)
                R.output(b)
            return b

    assert find_recomputable(Module) == ()


def test_each_reader_gets_its_own_copy_and_the_outputs_are_equal():
    mod = _two_layers()
    found = find_recomputable(mod)
    rewritten = recompute_at_readers(mod, found)
    names = [b.var.name for b in flat_bindings(rewritten["main"])]
    assert "mask" not in names and "causal" not in names
    at = names.index("a0")
    assert names[at - 3 : at] == ["causal_for_a0", "allowed_for_a0", "mask_for_a0"]
    at = names.index("a1")
    assert names[at - 3 : at] == ["causal_for_a1", "allowed_for_a1", "mask_for_a1"]
    assert [b.var.name for b in flat_bindings(mod["main"])].count("mask") == 1  # unchanged
    args = _inputs()
    np.testing.assert_array_equal(_run(rewritten, args), _run(mod, args))


def test_a_plan_that_recomputes_lowers_its_steps_on_the_rewritten_function():
    mod = _two_layers()
    found = find_recomputable(mod)
    planned = planned_module(mod, ChunkPlan((), recompute=found))
    cands = [
        c
        for c in ac.search_chunk_candidates(planned)
        if c.bindings[0][0] == "causal_for_a1" and c.outputs[0][0] == "h1"
    ]
    assert cands, "the second layer's attention, its mask copy included, is a region"
    plan = ChunkPlan.of((cands[0], 64))
    plan = ChunkPlan(plan.steps, recompute=found)
    chunked = lower_chunk_plan(mod, plan, "llvm")
    args = _inputs()
    np.testing.assert_allclose(_run(chunked, args), _run(mod, args), rtol=1e-5, atol=1e-6)


def test_records_found_on_another_module_are_refused():
    found = find_recomputable(_two_layers())
    other = _two_layers(mask_in_second=False)
    with pytest.raises(ChunkPlanError, match="another module"):
        recompute_at_readers(other, found)


@pytest.mark.parametrize("target", ["llvm", {"kind": "cuda", "arch": "sm_90"}])
def test_selection_recomputes_the_mask_and_meets_a_budget_it_set_the_floor_of(target):
    # Kept, the mask is live across both layers: the smallest plans peak at 76% (llvm) and
    # 58% (CUDA) of the unchunked peak; recomputed, each layer's region takes its copy in.
    mod = _two_layers()
    sel = ac.select_plan(mod, 0.45, target)
    assert sel.reached
    assert [r.name for r in sel.plan.recompute] == ["mask"]
    # The budget is a fraction of what the module as given allocates.
    assert sel.unchunked_peak == PlanEstimator(mod, target).estimate(()).peak
    assert sel.budget == int(0.45 * sel.unchunked_peak)
    assert any(
        b.var.name == "mask_for_a1" for b in flat_bindings(planned_module(mod, sel.plan)["main"])
    )
    assert "mask (1.00 MiB) is computed afresh" in str(PlanReport.of(mod, sel))
    chunked = ac.transform.apply_selection(mod, sel, target)
    if target == "llvm":
        args = _inputs()
        np.testing.assert_allclose(_run(chunked, args), _run(mod, args), rtol=1e-5, atol=1e-6)
    else:  # builds, and every composite, its mask copy included, launches device kernels
        kernels = cuda_kernels(relax.build(chunked, as_target(target)))
        composites = [
            gv.name_hint for gv, f in chunked.functions.items() if COMPOSITE_ATTR in (f.attrs or {})
        ]
        assert len(composites) == len(sel.plan.steps)
        for name in composites:
            assert any(k.startswith(f"{name}_kernel") for k in kernels), name


def test_a_budget_the_module_meets_as_given_leaves_it_unchanged():
    mod = _two_layers()
    sel = ac.select_plan(mod, 1.0, "llvm")
    assert sel.plan.recompute == () and sel.plan.steps == ()
    assert ac.transform.AutoChunk(1.0, target="llvm")(mod).same_as(mod)


def test_a_symbolic_length_is_selected_and_built_with_the_mask_recomputed():
    mod = _two_layers(symbolic=True)
    (found,) = find_recomputable(mod)
    assert found.nbytes == 512 * 512 * 4  # at the bound
    sel = ac.select_plan(mod, 0.45, "llvm")
    assert sel.reached and [r.name for r in sel.plan.recompute] == ["mask"]
    chunked = ac.transform.apply_selection(mod, sel, "llvm")
    x, keep = _inputs()
    for length in (512, 300):  # the bound, and a length no chunk length divides
        args = (x[:, :length], keep[:, :length])
        np.testing.assert_allclose(_run(chunked, args), _run(mod, args), rtol=1e-5, atol=1e-6)
