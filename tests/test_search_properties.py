"""Property test: on random graphs of supported ops, every legal candidate the tracer returns
computes the same function when executed chunked, for any chunk size (divisor or not).

The grammar holds what random models once broke: affine-free norms (``F.group_norm`` without
weight or bias), a fused projection split into fields read apart, and half precision."""

import numpy as np
from autochunk_tvm.lowering import ChunkPlan, LoweringError, lower_chunk_plan
from autochunk_tvm.search import CantChunk, flat_bindings, region_outputs, trace_region
from autochunk_tvm.search.reference import chunk_with_reference
from conftest import run_on_vm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax


def _emit_random_op(bb, x, draw, rng):
    shape = [int(d) for d in x.ty.shape.values]
    rank = len(shape)
    dtype = str(x.ty.dtype)

    def constant(shape):
        return relax.const(rng.standard_normal(shape).astype(dtype))

    kind = draw(
        st.sampled_from(
            [
                "unary",
                "binary",
                "permute",
                "merge",
                "split",
                "sum",
                "softmax",
                "matmul",
                "layer_norm",
                "concat",
                "slice",
                "cumsum",
                "split_fields",
                "affine_free_norm",
            ]
        )
    )
    if kind == "unary":
        op = draw(st.sampled_from([relax.op.exp, relax.op.tanh, relax.op.nn.relu]))
        return bb.emit(op(relax.op.multiply(x, relax.const(0.1, dtype))))
    if kind == "binary":
        # a constant operand broadcast along a random subset of axes
        b_shape = [d if draw(st.booleans()) else 1 for d in shape]
        b = constant(b_shape)
        return bb.emit(draw(st.sampled_from([relax.op.add, relax.op.multiply]))(x, b))
    if kind == "permute" and rank >= 2:
        return bb.emit(relax.op.permute_dims(x, draw(st.permutations(range(rank)))))
    if kind == "merge" and rank >= 2:
        i = draw(st.integers(0, rank - 2))
        return bb.emit(relax.op.reshape(x, shape[:i] + [shape[i] * shape[i + 1]] + shape[i + 2 :]))
    if kind == "split" and rank <= 3:
        i = draw(st.integers(0, rank - 1))
        factors = [f for f in (2, 3) if shape[i] % f == 0 and shape[i] > f]
        if factors:
            f = draw(st.sampled_from(factors))
            return bb.emit(relax.op.reshape(x, shape[:i] + [shape[i] // f, f] + shape[i + 1 :]))
    if kind == "sum" and rank >= 2:
        return bb.emit(relax.op.sum(x, axis=[draw(st.integers(0, rank - 1))], keepdims=True))
    if kind == "softmax":
        return bb.emit(relax.op.nn.softmax(x, axis=draw(st.integers(0, rank - 1))))
    if kind == "matmul":
        w = constant((shape[-1], draw(st.integers(2, 5))))
        return bb.emit(relax.op.matmul(x, w))
    if kind == "layer_norm":
        return bb.emit(
            relax.op.nn.layer_norm(x, constant(shape[-1:]), constant(shape[-1:]), axes=[-1])
        )
    if kind == "affine_free_norm":
        # no weight or bias: the importer once passed a null gamma for F.group_norm(x, g)
        if rank >= 3 and draw(st.booleans()):
            channels = shape[1]
            norm = relax.op.nn.group_norm(
                x,
                relax.const(np.ones(channels, dtype)),
                relax.const(np.zeros(channels, dtype)),
                draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0])),
                1,
                list(range(2, rank)),
                center=False,
                scale=False,
            )
        else:
            last = relax.const(np.ones(shape[-1:], dtype))
            norm = relax.op.nn.layer_norm(x, last, last, axes=[-1], center=False, scale=False)
        return bb.emit(norm)
    if kind == "concat":
        return bb.emit(relax.op.concat([x, x], axis=draw(st.integers(0, rank - 1))))
    if kind == "slice":
        axis = draw(st.integers(0, rank - 1))
        return bb.emit(
            relax.op.strided_slice(x, axes=[axis], begin=[0], end=[max(1, shape[axis] - 1)])
        )
    if kind == "cumsum":
        return bb.emit(relax.op.cumsum(x, axis=draw(st.integers(0, rank - 1))))
    if kind == "split_fields":
        # `q, k, v = qkv(x).split(d, -1)`: a tuple whose fields are read apart (found by
        # random models: a region starting at such a read has no kernel for its output)
        axis = draw(st.integers(0, rank - 1))
        if shape[axis] % 2 == 0:
            parts = bb.emit(relax.op.split(x, 2, axis=axis))
            first = bb.emit(relax.TupleGetItem(parts, 0))
            second = bb.emit(relax.TupleGetItem(parts, 1))
            return bb.emit(relax.op.add(first, relax.op.exp(second)))
    return bb.emit(relax.op.negative(x))


@st.composite
def random_graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = draw(st.lists(st.integers(2, 6), min_size=2, max_size=3))
    dtype = draw(st.sampled_from(["float32", "float32", "float16"]))
    x = relax.Var("x", relax.TensorType(shape, dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for _ in range(draw(st.integers(2, 5))):
                y = _emit_random_op(bb, y, draw, rng)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = relax.transform.Normalize()(bb.get())
    return mod, rng.standard_normal(shape).astype(dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_graphs(), pick=st.randoms(use_true_random=False))
def test_every_traced_candidate_is_numerically_exact(graph, pick):
    mod, x = graph
    # the dtype's tolerance: a chunk's kernels may round differently at another shape
    tol = 1e-5 if x.dtype == np.float32 else 1e-2
    func = mod["main"]
    n = len(flat_bindings(func))
    candidates = []
    for start in range(n):
        for end in range(start, n):
            outputs = region_outputs(func, start, end)
            if len(outputs) != 1 or not isinstance(outputs[0].ty, relax.TensorType):
                continue  # a tuple output (a split read after the region) is not a region's
            for axis in range(len(outputs[0].ty.shape.values)):
                try:
                    candidates.append(trace_region(func, start, end, {outputs[0].name: axis}))
                except CantChunk:
                    pass
    if not candidates:
        return
    ref = run_on_vm(mod, [x])
    for i, c in enumerate(pick.sample(candidates, min(3, len(candidates)))):
        units = pick.randint(1, c.extent - 1)
        out = run_on_vm(chunk_with_reference(mod, c, units), [x])
        np.testing.assert_allclose(out[0], ref[0], rtol=tol, atol=tol, err_msg=str(c))
        if i == 0:  # and one through the real lowering: a TIR loop over chunks
            try:
                lowered = lower_chunk_plan(mod, ChunkPlan.of((c, units)), "llvm")
            except LoweringError:
                # a refusal, never a wrong answer: e.g. an identity permute_dims legalizes to
                # no kernel, leaving the region's output unwritten; selection drops such plans
                continue
            out = run_on_vm(lowered, [x])
            np.testing.assert_allclose(out[0], ref[0], rtol=tol, atol=tol, err_msg=str(c))
