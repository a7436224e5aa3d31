"""The converse of the property test: search misses no legal region.

Ground truth comes from brute force, independent of the tracer. For every region of at most 4
bindings (one output) and every chunk axis of its output, try every assignment of axes to the
region's values and inputs, evaluate chunk by chunk in numpy, and call the region legal if any
assignment reproduces the unchunked output. The tracer must then accept it. Graphs use ops
without reshapes, so every chunk has scale 1.
"""

import itertools

import numpy as np
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from autochunk_tvm.search import CantChunk, flat_bindings, region_outputs, trace_region


def _np_const(c):
    return c.value.numpy()


def _eval(value, env):
    """Evaluate one binding's value in numpy (the op subset the generator emits)."""

    def arg(e):  # constants may be sliced: look them up in env first
        return env[e] if e in env else _np_const(e)

    if isinstance(value, relax.Var):
        return env[value]
    op = value.op.name
    a = [arg(x) for x in value.args if isinstance(x, relax.Var | tvm.ir.expr.GenericConst)]
    if op == "relax.sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * a[0]))  # overflow-free form of 1 / (1 + e^-x)
    if op == "relax.tanh":
        return np.tanh(a[0])
    if op == "relax.add":
        return a[0] + a[1]
    if op == "relax.multiply":
        return a[0] * a[1]
    if op == "relax.permute_dims":
        return np.transpose(a[0], [int(i) for i in value.attrs.axes])
    if op == "relax.sum":
        return np.sum(a[0], axis=tuple(int(i) for i in value.attrs.axis), keepdims=True)
    if op == "relax.nn.softmax":
        e = np.exp(a[0] - a[0].max(axis=int(value.attrs.axis), keepdims=True))
        return e / e.sum(axis=int(value.attrs.axis), keepdims=True)
    if op == "relax.matmul":
        return np.matmul(a[0], a[1])
    raise NotImplementedError(op)


@st.composite
def graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = draw(st.lists(st.sampled_from([2, 3, 4]), min_size=2, max_size=3))
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for _ in range(draw(st.integers(2, 4))):
                s = [int(d) for d in y.ty.shape.values]
                kind = draw(
                    st.sampled_from(
                        [
                            "sigmoid",
                            "tanh",
                            "add",
                            "mul",
                            "permute",
                            "sum",
                            "softmax",
                            "matmul",
                            "x2",
                        ]
                    )
                )
                if kind in ("sigmoid", "tanh"):
                    y = bb.emit(getattr(relax.op, kind)(y))
                elif kind in ("add", "mul"):
                    b_shape = [d if draw(st.booleans()) else 1 for d in s]
                    b = relax.const(rng.standard_normal(b_shape).astype("float32"))
                    y = bb.emit((relax.op.add if kind == "add" else relax.op.multiply)(y, b))
                elif kind == "permute":
                    y = bb.emit(relax.op.permute_dims(y, draw(st.permutations(range(len(s))))))
                elif kind == "sum":
                    y = bb.emit(
                        relax.op.sum(y, axis=[draw(st.integers(0, len(s) - 1))], keepdims=True)
                    )
                elif kind == "softmax":
                    y = bb.emit(relax.op.nn.softmax(y, axis=draw(st.integers(0, len(s) - 1))))
                elif kind == "matmul":
                    w = rng.standard_normal((s[-1], draw(st.sampled_from([2, 3, 4]))))
                    y = bb.emit(relax.op.matmul(y, relax.const(w.astype("float32"))))
                else:  # a value used twice: y * y^T-like reuse inside regions
                    y = bb.emit(relax.op.multiply(y, y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return relax.transform.Normalize()(bb.get())["main"], rng.standard_normal(shape)


def _chunked_equal(region, out_var, setting, env_full, extent, chunk):
    """Run the region chunk by chunk under ``setting`` (value -> axis or None) in numpy."""
    env = dict(env_full)
    whole = {b.var for b in region if setting[b.var] is None}
    for b in region:  # whole bindings: computed once, from whole values only
        if b.var in whole:
            reads = list(relax.analysis.free_vars(b.value))
            if isinstance(b.value, relax.Call):
                reads += [a for a in b.value.args if isinstance(a, tvm.ir.expr.GenericConst)]
            if any(setting.get(v) is not None for v in reads):
                return False
            env[b.var] = _eval(b.value, env)
    pieces = []
    for lo in range(0, extent, chunk):
        hi = min(extent, lo + chunk)
        local = dict(env)
        for v, axis in setting.items():
            if axis is not None and v not in {b.var for b in region}:
                local[v] = np.take(env_full[v], range(lo, hi), axis=axis)
        try:
            for b in region:
                if b.var not in whole:
                    local[b.var] = _eval(b.value, local)
            piece = local[out_var]
        except ValueError:  # shapes that do not broadcast: this assignment is not a chunking
            return False
        if piece.shape[setting[out_var]] != hi - lo:
            return False
        pieces.append(piece)
    got = np.concatenate(pieces, axis=setting[out_var])
    return got.shape == env_full[out_var].shape and np.allclose(
        got, env_full[out_var], atol=1e-6, equal_nan=True
    )


def _legal_by_brute_force(region, out_var, axis, env_full):
    extent = env_full[out_var].shape[axis]
    if extent < 2:
        return False
    inside = {b.var for b in region}
    inputs = []
    for b in region:
        reads = list(relax.analysis.free_vars(b.value))
        if isinstance(b.value, relax.Call):
            reads += [a for a in b.value.args if isinstance(a, tvm.ir.expr.GenericConst)]
        for v in reads:
            if v not in inside and v not in inputs:
                inputs.append(v)
                if v not in env_full:
                    env_full[v] = _np_const(v)
    values = [b.var for b in region if b.var is not out_var] + inputs
    choices = [[None] + [a for a, d in enumerate(env_full[v].shape) if d == extent] for v in values]
    for combo in itertools.product(*choices):
        setting = dict(zip(values, combo))
        setting[out_var] = axis
        if all(_chunked_equal(region, out_var, setting, env_full, extent, c) for c in (1, 2)):
            return True
    return False


def _only_aliases_an_input(region, out_var) -> bool:
    """Whether the region's output is a variable alias (``gv = lv1``) of a value made before
    the region: these graphs have no other views."""
    values = {b.var: b.value for b in region}
    v = out_var
    while v in values and isinstance(values[v], relax.Var):
        v = values[v]
    return v not in values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs())
def test_search_misses_no_legal_region_of_length_up_to_4(graph):
    func, x = graph
    bindings = flat_bindings(func)
    env = {func.params[0]: x.astype("float32")}
    for b in bindings:
        env[b.var] = _eval(b.value, env)
    for start in range(len(bindings)):
        for end in range(start, min(len(bindings), start + 4)):
            outputs = region_outputs(func, start, end)
            if len(outputs) != 1:
                continue
            out = outputs[0]
            if _only_aliases_an_input(bindings[start : end + 1], out):
                continue  # nothing to compute in a loop: not a region (NOTE [outputs need a kernel])
            if np.ptp(env[out]) == 0:
                continue  # a constant output (a softmax over a size-1 axis) chunks trivially
            for axis in range(env[out].ndim):
                legal = _legal_by_brute_force(bindings[start : end + 1], out, axis, dict(env))
                try:
                    trace_region(func, start, end, {out.name: axis})
                    found = True
                except CantChunk:
                    found = False
                assert found == legal, (str(func), start, end, axis, legal)
