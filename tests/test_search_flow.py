"""Chunk-flow tracing on hand-written graphs: the four rules, scales through reshapes,
hoisting, barriers. Axes and names are asserted, never binding indices."""

import pytest
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from autochunk_tvm.search import WHOLE, CantChunk, ChunkAxis, flat_bindings, trace_region


def _span(func, first, last):
    names = [b.var.name for b in flat_bindings(func)]
    return names.index(first), names.index(last)


def trace(func, first, last, **output_axes):
    start, end = _span(func, first, last)
    return trace_region(func, start, end, output_axes)


@R.function
def mlp(
    x: R.Tensor((64, 16), "float32"),
    w1: R.Tensor((16, 32), "float32"),
    w2: R.Tensor((32, 16), "float32"),
    b: R.Tensor((16,), "float32"),
):
    with R.dataflow():
        w1t = R.permute_dims(w1, [1, 0])
        h = R.matmul(x, R.permute_dims(w1t, [1, 0]))
        g = R.nn.gelu(h)
        o = R.matmul(g, w2)
        y = R.add(o, b)
        R.output(y)
    return y


def test_mlp_chunks_rows_with_weights_whole_and_weight_prep_hoisted():
    start, end = _span(mlp, "w1t", "y")
    c = trace_region(mlp, start, end, {"y": 0})
    axes = c.axes
    assert axes["h"] == axes["g"] == axes["o"] == axes["y"] == ChunkAxis(0)
    assert c.input_axes == {"x": ChunkAxis(0), "w1": WHOLE, "w2": WHOLE, "b": WHOLE}
    assert c.extent == 64
    assert "w1t" in c.hoistable  # the weight transposes do not depend on the chunk
    # columns of the output flow into w2's columns only: x and the hidden layer stay whole
    cols = trace_region(mlp, start, end, {"y": 1})
    assert cols.input_axes["w2"] == ChunkAxis(1) and cols.input_axes["x"] == WHOLE
    assert cols.input_axes["b"] == ChunkAxis(0) and "g" in cols.hoistable


@R.function
def attention(
    q: R.Tensor((4, 128, 8), "float32"),
    k: R.Tensor((4, 128, 8), "float32"),
    v: R.Tensor((4, 128, 8), "float32"),
):
    with R.dataflow():
        kt = R.permute_dims(k, [0, 2, 1])
        s = R.matmul(q, kt)
        s2 = R.multiply(s, R.const(0.35, "float32"))
        p = R.nn.softmax(s2, axis=-1)
        o = R.matmul(p, v)
        R.output(o)
    return o


def test_attention_chunks_queries_and_heads_but_not_keys():
    queries = trace(attention, "kt", "o", o=1)
    assert queries.input_axes["q"] == ChunkAxis(1)
    assert queries.input_axes["k"] == queries.input_axes["v"] == WHOLE
    assert queries.axes["p"] == ChunkAxis(1) and queries.extent == 128
    heads = trace(attention, "kt", "o", o=0)
    assert [heads.input_axes[n] for n in "qkv"] == [ChunkAxis(0)] * 3 and heads.extent == 4
    assert heads.input_axes["s2.arg1"] == WHOLE  # the 0.35 scale, used whole
    # the softmax normalizes over keys: a region ending in it cannot chunk that axis
    with pytest.raises(CantChunk, match="softmax"):
        trace(attention, "kt", "p", p=-1)


@R.function
def merge_split(x: R.Tensor((4, 6, 8), "float32")):
    with R.dataflow():
        a = R.reshape(x, (24, 8))
        e = R.exp(a)
        y = R.reshape(e, (4, 6, 8))
        R.output(y)
    return y


def test_reshape_merge_and_split_as_outermost_factor_carry_scales():
    c = trace(merge_split, "a", "y", y=0)
    assert c.input_axes["x"] == ChunkAxis(0, 1)
    assert c.axes["e"] == ChunkAxis(0, 6)  # a chunk unit is 6 rows of the merged axis
    assert c.extent == 4
    with pytest.raises(CantChunk, match="inner factor"):
        trace(merge_split, "a", "y", y=1)
    # chunking the merged axis directly: units of one row, x chunked at scale 1/6 -> normalized
    c2 = trace(merge_split, "a", "e", e=0)
    assert c2.axes["e"] == ChunkAxis(0, 6) and c2.input_axes["x"] == ChunkAxis(0, 1)


@R.function
def square(x: R.Tensor((32, 32), "float32")):
    with R.dataflow():
        t = R.permute_dims(x, [1, 0])
        y = R.add(x, t)
        R.output(y)
    return y


def test_unique_setting_rejects_two_axes_for_one_value():
    with pytest.raises(CantChunk, match="unique setting"):
        trace(square, "t", "y", y=0)


@R.function
def two_outputs(x: R.Tensor((16, 8), "float32"), z: R.Tensor((8, 16), "float32")):
    with R.dataflow():
        a = R.exp(x)
        b = R.exp(z)
        s = R.add(a, R.const(1.0, "float32"))
        c = R.add(s, R.permute_dims(b, [1, 0]))
        R.output(a, c)
    return (a, c)


def test_output_alignment():
    c = trace(two_outputs, "a", "c", a=0, c=0)
    assert c.output_axes == {"a": ChunkAxis(0), "c": ChunkAxis(0)}
    assert c.input_axes["z"] == ChunkAxis(1)
    with pytest.raises(CantChunk, match="not aligned|unique setting"):
        trace(two_outputs, "a", "c", a=0, c=1)  # 16 units vs 8 units


@R.function
def broadcasts(
    x: R.Tensor((16, 8), "float32"),
    row: R.Tensor((1, 8), "float32"),
    col: R.Tensor((16, 1), "float32"),
):
    with R.dataflow():
        a = R.add(x, row)
        y = R.multiply(a, col)
        R.output(y)
    return y


def test_broadcast_operands_are_used_whole_along_the_axis_they_broadcast():
    c = trace(broadcasts, "a", "y", y=0)
    assert c.input_axes == {"x": ChunkAxis(0), "row": WHOLE, "col": ChunkAxis(0)}
    c1 = trace(broadcasts, "a", "y", y=1)
    assert c1.input_axes == {"x": ChunkAxis(1), "row": ChunkAxis(1), "col": WHOLE}


@R.function
def reductions(x: R.Tensor((16, 8), "float32")):
    with R.dataflow():
        s = R.sum(x, axis=[1], keepdims=True)
        m = R.mean(x, axis=[0], keepdims=False)
        R.output(s, m)
    return (s, m)


def test_reductions_chunk_kept_axes_only():
    assert trace(reductions, "s", "s", s=0).input_axes["x"] == ChunkAxis(0)
    with pytest.raises(CantChunk, match="size-1|reduced|below 2"):
        trace(reductions, "s", "s", s=1)
    assert trace(reductions, "m", "m", m=0).input_axes["x"] == ChunkAxis(1)


@I.ir_module
class WithKernel:
    @T.prim_func(private=True, s_tir=True)
    def copy(x: T.Buffer((T.int64(16),), "float32"), y: T.Buffer((T.int64(16),), "float32")):
        for i in range(T.int64(16)):
            with T.sblock("c"):
                vi = T.axis.remap("S", [i])
                y[vi] = x[vi]

    @R.function
    def main(x: R.Tensor((16,), "float32")):
        cls = WithKernel
        with R.dataflow():
            a = R.call_tir(cls.copy, (x,), out_ty=R.Tensor((16,), "float32"))
            y = R.exp(a)
            R.output(y)
        return y


def test_an_op_without_rule_is_a_barrier_not_a_guess():
    with pytest.raises(CantChunk, match="no chunk rule"):
        trace(WithKernel["main"], "a", "y", y=0)
    assert trace(WithKernel["main"], "y", "y", y=0).input_axes == {"a": ChunkAxis(0)}


def test_bad_regions():
    with pytest.raises(CantChunk, match="outside"):
        trace_region(mlp, 3, 99, {"y": 0})
    with pytest.raises(CantChunk, match="outputs are"):
        trace(mlp, "h", "y", g=0)
    with pytest.raises(CantChunk, match="no axis"):
        trace(mlp, "h", "y", y=5)


@R.function
def symbolic(x: R.Tensor(("n", 16), "float32"), w: R.Tensor((16, 16), "float32")):
    n = T.int64()  # noqa: F841 - declares the symbolic dim for TVMScript
    with R.dataflow():
        h = R.matmul(x, w)
        y = R.nn.relu(h)
        R.output(y)
    return y


def test_symbolic_extent_is_allowed_when_the_rule_proves_legality():
    c = trace(symbolic, "h", "y", y=0)
    assert c.extent == "n" and c.input_axes == {"x": ChunkAxis(0), "w": WHOLE}
    cols = trace(symbolic, "h", "y", y=1)  # columns: static extent, x used whole
    assert cols.extent == 16 and cols.input_axes == {"x": WHOLE, "w": ChunkAxis(1)}


@R.function(pure=False)
def with_control_flow(x: R.Tensor((8, 4), "float32"), c: R.Tensor((), "bool")):
    a = R.exp(x)
    if c:
        b = R.add(a, a)
    else:
        b = R.multiply(a, a)
    y = R.nn.relu(b)
    return y


def test_control_flow_is_a_barrier_and_search_does_not_crash():
    from autochunk_tvm.search import search_chunk_candidates

    names = [b.var.name for b in flat_bindings(with_control_flow)]
    if_index = next(
        i for i, b in enumerate(flat_bindings(with_control_flow)) if type(b.value).__name__ == "If"
    )
    with pytest.raises(CantChunk, match="control flow"):
        trace_region(with_control_flow, if_index, if_index, {names[if_index]: 0})
    candidates = search_chunk_candidates(with_control_flow)
    assert all(not (c.start <= if_index <= c.end) for c in candidates)


def test_function_without_bindings_has_no_candidates():
    from tvm import relax

    from autochunk_tvm.search import search_chunk_candidates

    x = relax.Var("x", relax.TensorType((4,), "float32"))
    assert search_chunk_candidates(relax.Function([x], x)) == []


@R.function
def unknown_shape(x: R.Tensor((64, 16), "float32"), y: R.Tensor(ndim=2, dtype="float32")):
    with R.dataflow():
        h = R.exp(x)
        r = R.reshape(y, R.shape([64, 16]))
        o = R.add(h, r)
        R.output(o)
    return o


def test_a_tensor_of_unknown_shape_is_a_barrier_not_a_crash():
    # Once a TypeError from the reshape rule's shape arithmetic (rules/manipulate.py).
    with pytest.raises(CantChunk, match="unknown shape"):
        trace(unknown_shape, "r", "o", o=0)
    assert trace(unknown_shape, "h", "h", h=0).extent == 64


@R.function
def truncate(x: R.Tensor((64, 16), "float32")):
    # relax.trunc has no chunk rule: the tests below register one of their own
    with R.dataflow():
        o = R.trunc(x)
        R.output(o)
    return o


def test_a_rule_that_fails_is_a_barrier_with_its_reason_logged(caplog):
    from autochunk_tvm.search import rules

    @rules.register("relax.trunc")
    def broken(call, out_axis):
        raise IndexError("a bug in a user's rule")

    try:
        with pytest.raises(CantChunk, match="failed"):
            trace(truncate, "o", "o", o=0)
        assert "a bug in a user's rule" in caplog.text
    finally:
        rules.unregister("relax.trunc")


def test_a_rule_registered_after_a_trace_changes_the_answer_for_the_same_region():
    # NOTE [flow index]: traces are kept per function; a kept refusal ("no chunk rule") must
    # not outlive a rule registered since, nor a kept answer the rule's removal.
    from autochunk_tvm.search import rules

    with pytest.raises(CantChunk, match="no chunk rule for relax.trunc"):
        trace(truncate, "o", "o", o=0)
    rules.register("relax.trunc")(lambda call, out_axis: [rules.flow(out_axis)])
    try:
        assert trace(truncate, "o", "o", o=0).extent == 64
    finally:
        rules.unregister("relax.trunc")
    with pytest.raises(CantChunk, match="no chunk rule for relax.trunc"):
        trace(truncate, "o", "o", o=0)
