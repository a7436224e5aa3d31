"""Shallow twins (selection/shallow.py): a deep function's repeated block is found, the twin
keeps a few repeats and rewires what follows, a plan found on the twin carries over to every
repeat, and select_plan uses it with the whole function's estimate deciding."""

import pytest
import tvm
from tvm import relax

import autochunk_tvm as ac
from autochunk_tvm.lowering import ChunkStep
from autochunk_tvm.search import flat_bindings, trace_region
from autochunk_tvm.search.classes import ClassFinder
from autochunk_tvm.selection import (
    BudgetUnreachableError,
    OverBudgetWarning,
    PlanEstimator,
    select_plan,
)
from autochunk_tvm.selection.shallow import Repeats, ShallowTwin, find_repeats


def _block(bb: relax.BlockBuilder, prev: relax.Expr, k: int) -> relax.Var:
    """One attention-like block ``k`` reading ``prev``; its output ``y{k}``."""
    kt = bb.emit(relax.op.permute_dims(prev, [1, 0]), name_hint=f"kt{k}")
    s = bb.emit(relax.op.matmul(prev, kt), name_hint=f"s{k}")
    p = bb.emit(relax.op.nn.softmax(s, axis=-1), name_hint=f"p{k}")
    o = bb.emit(relax.op.matmul(p, prev), name_hint=f"o{k}")
    return bb.emit(relax.op.add(o, prev), name_hint=f"y{k}")


def _prefix(bb: relax.BlockBuilder, x: relax.Var) -> relax.Var:
    return bb.emit(relax.op.multiply(x, relax.const(0.5, "float32")), name_hint="h")


def _stack(head_reads_block_3: bool = False) -> tvm.IRModule:
    """A prefix, five alike attention-like blocks each reading the one before, and a head that
    reads the last block (and, with ``head_reads_block_3``, the third one too: a twin keeping
    two blocks has no stand-in for it)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((256, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            ys = [_prefix(bb, x)]
            for k in range(1, 6):
                ys.append(_block(bb, ys[-1], k))
            if head_reads_block_3:
                head = relax.op.add(ys[5], ys[3])
            else:
                head = relax.op.sum(ys[5], axis=[1])
            out = bb.emit_output(head, name_hint="t")
        bb.emit_func_output(out)
    return bb.get()


Stack = _stack()
Skip = _stack(head_reads_block_3=True)


def _names(func):
    return [b.var.name for b in flat_bindings(func)]


def test_the_repeated_block_is_found():
    func = Stack["main"]
    reps = find_repeats(ClassFinder(func))
    names = _names(func)
    assert reps is not None and reps.count == 5
    assert reps.period == names.index("y2") - names.index("y1")  # one block
    assert reps.start <= names.index("s1") < reps.start + reps.period
    assert [reps.repeat_of(names.index(f"s{k}")) for k in range(1, 6)] == [0, 1, 2, 3, 4]
    assert reps.repeat_of(names.index("h")) is None
    assert reps.repeat_of(names.index("t")) is None


def test_a_block_unlike_the_others_ends_the_repeats():
    """Three alike blocks then one at another shape: only the first three repeat."""

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((256, 16), "float32"))
    z = relax.Var("z", relax.TensorType((128, 16), "float32"))
    with bb.function("main", [x, z]):
        with bb.dataflow():
            y = _prefix(bb, x)
            for k in range(1, 4):
                y = _block(bb, y, k)
            out = bb.emit_output(relax.Tuple([y, _block(bb, z, 4)]), name_hint="out")
        bb.emit_func_output(out)
    uneven = bb.get()["main"]

    reps = find_repeats(ClassFinder(uneven))
    assert reps is not None and reps.count == 3
    names = _names(uneven)
    assert reps.end <= names.index("s4") + 1
    assert find_repeats(ClassFinder(uneven), min_count=4) is None


def test_the_twin_keeps_the_first_repeats_and_reads_the_last_kept_one():
    func = Stack["main"]
    classes = ClassFinder(func)
    reps = find_repeats(classes)
    twin = ShallowTwin(Stack, "main", classes, reps, kept=2)
    names = _names(twin.mod["main"])
    assert len(names) == len(_names(func)) - 3 * reps.period
    # the head's reads of the last block now read the last kept one, under the same names
    t = flat_bindings(twin.mod["main"])[-1]
    assert t.var.name == "t"
    (read,) = tvm.relax.analysis.free_vars(t.value)
    assert read.name == names[names.index("t") - 1]
    assert twin.whole_index(names.index("t")) == _names(func).index("t")
    assert twin.whole_index(names.index("h")) == _names(func).index("h")


def test_a_head_reading_a_dropped_repeat_has_no_twin():
    classes = ClassFinder(Skip["main"])
    reps = find_repeats(classes)
    assert reps is not None and reps.count >= 4
    assert ShallowTwin(Skip, "main", classes, reps, kept=2).mod is None


def test_a_plan_on_the_twin_maps_to_every_repeat():
    """A region chunked in each repeat of a 2-repeat twin is chunked in all five blocks of the
    whole function, traced there with the twin's flow."""
    func = Stack["main"]
    classes = ClassFinder(func)
    reps = find_repeats(classes)
    twin = ShallowTwin(Stack, "main", classes, reps, kept=2)
    tfunc = twin.mod["main"]
    tnames = _names(tfunc)
    steps = []
    for k in (1, 2):  # the softmax and the matmul after it, in each kept repeat
        first = tnames.index(f"p{k}")
        region = trace_region(tfunc, first, first + 1, {f"o{k}": 0})
        steps.append(ChunkStep(region, 32))
    whole = twin.whole_steps(steps)
    assert whole is not None and len(whole) == reps.count
    names = _names(func)
    assert [names[s.candidate.start] for s in whole] == [f"p{k}" for k in range(1, 6)]
    for step in whole:
        assert [a for _, a in step.candidate.bindings] == [
            a for _, a in steps[0].candidate.bindings
        ]
        assert step.chunk_len == 32


def test_deep_selection_runs_on_a_twin_and_is_estimated_on_the_whole():
    """A six-layer GPT: selected on a twin of fewer layers, one region per layer, and the
    estimate reported is the whole function's (a fresh estimator agrees)."""
    model, args = ac.models.gpt("small", n_layer=6, seq_len=512, n_embd=64)
    mod = ac.from_torch(model, args)
    sel = select_plan(mod, 0.3, "llvm")
    assert sel.reached and sel.selected_on is not None
    assert isinstance(sel.selected_on.repeats, Repeats)
    assert sel.selected_on.kept < sel.selected_on.repeats.count
    assert len(sel.plan.steps) % 6 == 0
    fresh = PlanEstimator(mod, "llvm")
    assert fresh.estimate(sel.plan.steps).peak == sel.plan.estimated_peak <= sel.budget
    assert sel.unchunked_peak == fresh.estimate(()).peak
    kept, count = sel.selected_on.kept, sel.selected_on.repeats.count
    assert f"searched on {kept} of the model's {count} repeated blocks" in str(
        ac.PlanReport.of(mod, sel)
    )


def test_an_unreachable_budget_is_confirmed_on_the_whole_function():
    """Nothing fits a 1-byte budget: the twin's smallest peaks are checked on the whole
    function, which reports them (strict=False builds that plan, strict raises)."""
    model, args = ac.models.gpt("small", n_layer=6, seq_len=512, n_embd=64)
    mod = ac.from_torch(model, args)
    est = PlanEstimator(mod, "llvm")
    with pytest.warns(OverBudgetWarning):
        sel = select_plan(mod, 1, "llvm", strict=False, estimator=est)
    assert not sel.reached and sel.selected_on is not None
    assert len(sel.plan.steps) >= 6  # every layer, and regions outside them
    assert PlanEstimator(mod, "llvm").estimate(sel.plan.steps).peak == sel.plan.estimated_peak
    with pytest.raises(BudgetUnreachableError) as err:
        select_plan(mod, 1, "llvm", estimator=est)
    assert err.value.smallest_peak >= sel.plan.estimated_peak
    assert err.value.smallest_peak < sel.unchunked_peak


def test_a_plan_that_does_not_carry_over_is_selected_on_the_whole_function(monkeypatch, caplog):
    """When the twin's plan cannot be mapped, selection says so and runs on the whole."""
    model, args = ac.models.gpt("small", n_layer=4, seq_len=512, n_embd=64)
    mod = ac.from_torch(model, args)
    monkeypatch.setattr(ShallowTwin, "whole_steps", lambda self, steps: None)
    with caplog.at_level("INFO", logger="autochunk_tvm"):
        sel = select_plan(mod, 0.3, "llvm")
    assert sel.reached and sel.selected_on is None
    assert "does not carry over to every repeat; selecting on the whole function" in caplog.text
