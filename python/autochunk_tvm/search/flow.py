"""Chunk-flow tracing through one region of a Relax function (paper §3.3).

Given a region (a contiguous run of bindings) and a chunk axis for each of its outputs, walk the
bindings from last to first (every consumer is visited before its producer) and ask each op's
rule which axis of each argument carries the chunk. The paper's four rules, as checked here:

1. *basic chunk form*: every value in the region is either chunked along exactly one axis or
   used whole, and an op can be chunked only along an axis it does not compute across (its
   rule raises :class:`CantChunk` otherwise);
2. *output alignment*: all outputs are chunked into the same number of chunk units;
3. *flow traceability*: the flow reaches every region input through known rules; an op
   without a rule, or a call into another function, is a barrier;
4. *unique setting*: a value gets one setting; two consumers that need it chunked differently
   (or one chunked and one whole) make the region illegal.

Values the flow leaves whole inside the region do not depend on the chunk axis and are marked
hoistable (computed once outside the loop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from fractions import Fraction

import tvm
from tvm import relax

from ..analysis.memory import flat_bindings
from ..analysis.views import is_view_value
from .candidate import WHOLE, CantChunk, ChunkAxis, ChunkCandidate
from . import rules
from .rules import rule_for, same_dim, shape_of, static

logger = logging.getLogger("autochunk_tvm")

# (axis, scale) during tracing; scales are rational until normalized at the end.
_Setting = tuple[int | None, Fraction]
_WHOLE: _Setting = (None, Fraction(1))

# NOTE [rule cache]: a rule's answer depends only on the call (an immutable IR node) and the
# output axis, and the search asks the same question of the same call in many overlapping
# regions (GPT-small: 146k visits, a few thousand distinct). Answers, refusals included, are
# kept per (call, axis); a call is keyed by identity, which holds it alive while cached. The
# cache is dropped when a rule is registered (a refusal may have been "no rule").
_RULE_CACHE_LIMIT = 200_000
_rule_cache: dict[tuple[relax.Call, int], object] = {}
_rule_cache_generation = rules.generation()


def _arg_flows(call: relax.Call, axis: int):
    global _rule_cache_generation
    if _rule_cache_generation != rules.generation():
        _rule_cache.clear()
        _rule_cache_generation = rules.generation()
    key = (call, axis)
    found = _rule_cache.get(key)
    if found is None:
        try:
            found = _ask_rule(call, axis)
        except CantChunk as err:
            found = err
        if len(_rule_cache) >= _RULE_CACHE_LIMIT:
            _rule_cache.clear()
        _rule_cache[key] = found
    if isinstance(found, CantChunk):
        raise type(found)(*found.args)  # a fresh one: re-raising would grow its traceback
    return found


def _ask_rule(call: relax.Call, axis: int):
    """The rule's answer for ``call`` chunked on output ``axis``.

    NOTE [rules see known shapes]: rules read shapes and ranks; a tensor of unknown shape
    (``R.Tensor(ndim=2)``, ``R.Tensor()``) among the call's result or arguments makes the op a
    barrier before the rule is asked. A rule that fails on a call it does not understand (an
    error other than :class:`CantChunk`, e.g. from a rule registered by a user) is a barrier
    too, with the reason logged: the search never crashes on an op it cannot read.
    """
    for expr in (call, *call.args):
        if _unknown_tensor(expr):
            raise CantChunk(f"{_op_of(call)}: a tensor of unknown shape {expr.ty}")
    rule = rule_for(call)
    try:
        return rule(call, axis)
    except CantChunk:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a rule stops the flow, logged
        logger.warning(
            "chunk rule %s failed on %s (axis %d) with %s: %s; the op is a barrier here",
            getattr(rule, "__qualname__", rule),
            _op_of(call),
            axis,
            type(err).__name__,
            err,
        )
        raise CantChunk(f"the chunk rule for {_op_of(call)} failed: {err}") from None


def _op_of(call: relax.Call) -> str:
    return getattr(call.op, "name", str(call.op))


def _unknown_tensor(expr: relax.Expr) -> bool:
    return _unknown_tensor_type(expr.ty)


def _unknown_tensor_type(ty) -> bool:
    if isinstance(ty, relax.TupleType):
        return any(_unknown_tensor_type(f) for f in ty.fields)
    return isinstance(ty, relax.TensorType) and not isinstance(ty.shape, relax.ShapeExpr)


def constant_names(region: list[relax.Binding]) -> dict[relax.Expr, str]:
    """Stable names for the constants a region reads: ``"<binding>.arg<j>"`` of the first site
    (in program order) that reads each one, with ``".<k>"`` for a field of a tuple argument."""
    names: dict[relax.Expr, str] = {}

    def visit(expr: relax.Expr, name: str) -> None:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            names.setdefault(expr, name)
        elif isinstance(expr, relax.Tuple):
            for k, field in enumerate(expr.fields):
                visit(field, f"{name}.{k}")

    for binding in region:
        value = binding.value
        if isinstance(value, tvm.ir.expr.GenericConst):
            visit(value, f"{binding.var.name}.value")
        elif isinstance(value, relax.Call):
            for j, arg in enumerate(value.args):
                visit(arg, f"{binding.var.name}.arg{j}")
        elif isinstance(value, relax.Tuple):
            visit(value, f"{binding.var.name}.value")
    return names


def last_uses(func: relax.Function) -> dict[relax.Var, int]:
    """Index of the last binding reading each variable; ``len(bindings)`` if it is returned."""
    bindings = flat_bindings(func)
    last: dict[relax.Var, int] = {}
    for index, binding in enumerate(bindings):
        for var in relax.analysis.free_vars(binding.value):
            last[var] = index
    result = func.body.body if isinstance(func.body, relax.SeqExpr) else func.body
    for var in relax.analysis.free_vars(result):
        last[var] = len(bindings)
    return last


def region_outputs(
    func: relax.Function,
    start: int,
    end: int,
    last_use: dict[relax.Var, int] | None = None,
    bindings: list[relax.Binding] | None = None,
) -> list[relax.Var]:
    """Bindings of ``[start, end]`` that are used after the region or returned.

    ``last_use`` (from :func:`last_uses`) and ``bindings`` save recomputing them when many
    regions of one function are examined: then this costs O(region length).
    """
    bindings = bindings if bindings is not None else flat_bindings(func)
    last = last_use if last_use is not None else last_uses(func)
    return [b.var for b in bindings[start : end + 1] if last.get(b.var, -1) > end]


class _Tracer:
    def __init__(self, region: list[relax.Binding]) -> None:
        self.inside = {b.var for b in region}
        self.settings: dict[relax.Expr, _Setting] = {}
        self.inputs: dict[relax.Expr, None] = {}  # ordered set of values read from outside

    def assign(self, value: relax.Expr, setting: _Setting) -> None:
        if not isinstance(value, relax.Var | tvm.ir.expr.GenericConst):
            return  # shapes, prim values: never chunked
        old = self.settings.get(value)
        if old is not None and old != setting:
            raise CantChunk(f"{_name(value)} needs two different chunk settings (unique setting)")
        self.settings[value] = setting
        if value not in self.inside:
            self.inputs[value] = None

    def visit(self, binding: relax.Binding) -> None:
        var, value = binding.var, binding.value
        setting = self.settings.get(var, _WHOLE)
        self.settings[var] = setting
        axis, scale = setting
        if isinstance(value, relax.Var | tvm.ir.expr.GenericConst):
            self.assign(value, setting)
        elif isinstance(value, relax.TupleGetItem):
            self.assign(value.tuple_value, setting)  # a chunked tuple has all fields chunked
        elif isinstance(value, relax.Tuple):
            for field in value.fields:
                self.assign(field, setting)
        elif isinstance(value, relax.Call):
            if axis is None:
                for arg in value.args:  # computed whole: everything it reads is whole
                    self._assign_arg(arg, _WHOLE)
                return
            if not isinstance(value.op, tvm.ir.Op):
                raise CantChunk(f"{var.name} calls a function (barrier)")
            flows = _arg_flows(value, axis)
            for arg, arg_flow in zip(value.args, flows):
                if isinstance(arg_flow, list):  # a tuple argument: one flow per field
                    for field, field_flow in zip(arg.fields, arg_flow):
                        self.assign(field, _scaled(field_flow, scale))
                else:
                    self._assign_arg(arg, _scaled(arg_flow, scale))
        else:
            raise CantChunk(f"{var.name} is a {type(value).__name__} (control flow): barrier")

    def _assign_arg(self, arg: relax.Expr, setting: _Setting) -> None:
        if isinstance(arg, relax.Tuple):
            for field in arg.fields:
                self.assign(field, setting)
        else:
            self.assign(arg, setting)


def _scaled(arg_flow, scale: Fraction) -> _Setting:
    if arg_flow is None:
        return _WHOLE
    axis, ratio = arg_flow
    return (axis, scale * ratio)


def _name(value: relax.Expr) -> str:
    return value.name if isinstance(value, relax.Var) else "a constant"


def _normalize(settings: Mapping[relax.Expr, _Setting]) -> dict[relax.Expr, ChunkAxis]:
    scales = [s for a, s in settings.values() if a is not None]
    denominators = math.lcm(*(s.denominator for s in scales))
    integers = [int(s * denominators) for s in scales]
    common = math.gcd(*integers)
    result = {}
    for value, (axis, scale) in settings.items():
        if axis is None:
            result[value] = WHOLE
        else:
            result[value] = ChunkAxis(axis, int(scale * denominators) // common)
    return result


def _extent(axes: Mapping[relax.Expr, ChunkAxis]) -> int | str:
    extent = None
    for value, chunk in axes.items():
        if not chunk.chunked:
            continue
        shape = (
            shape_of(value) if not isinstance(value.ty, relax.TupleType) else _tuple_shape(value)
        )
        if shape is None:
            raise CantChunk(f"{_name(value)} has no known shape")
        dim = shape[chunk.axis]
        if static(dim) is not None:
            if static(dim) % chunk.scale:
                raise CantChunk(f"{_name(value)}: dim {dim} not a multiple of scale {chunk.scale}")
            units = static(dim) // chunk.scale
        elif chunk.scale == 1:
            units = dim
        else:
            raise CantChunk("scaled chunk of a symbolic dim")
        if extent is None:
            extent = units
        elif not same_dim(extent, units):
            raise CantChunk(f"chunk extents differ ({extent} vs {units}): outputs not aligned")
    if extent is None:
        raise CantChunk("nothing is chunked")
    if static(extent) is not None:
        if static(extent) < 2:
            raise CantChunk("a chunk extent below 2 (size-1 axis)")
        return static(extent)
    return str(extent)


def _tuple_shape(value: relax.Expr) -> list | None:
    fields = value.ty.fields
    first = fields[0] if fields else None
    if isinstance(first, relax.TensorType) and isinstance(first.shape, relax.ShapeExpr):
        return list(first.shape.values)  # all fields of a chunked tuple share the chunk axis
    return None


def _computed_in(expr: relax.Expr, values: Mapping[relax.Var, relax.Expr]) -> bool:
    """Whether a kernel inside the region computes ``expr``'s data, rather than ``expr``
    being a region input, a constant, or a view of one (an alias, a tuple read, a reshape)."""
    while True:
        if isinstance(expr, relax.TupleGetItem):
            tup = expr.tuple_value
            expr = tup.fields[expr.index] if isinstance(tup, relax.Tuple) else tup
            continue
        if not isinstance(expr, relax.Var) or expr not in values:
            return False  # a region input or a constant
        value = values[expr]
        if isinstance(value, relax.Tuple):
            return any(_computed_in(f, values) for f in value.fields)
        if isinstance(value, relax.Var | relax.TupleGetItem | tvm.ir.expr.GenericConst):
            expr = value
        elif isinstance(value, relax.Call) and is_view_value(value) and value.args:
            expr = value.args[0]
        else:
            return True  # a kernel, control flow, anything else that makes new data


def trace_region(
    func: relax.Function,
    start: int,
    end: int,
    output_axes: Mapping[str, int],
    *,
    function_name: str = "main",
    last_use: dict[relax.Var, int] | None = None,
    bindings: list[relax.Binding] | None = None,
) -> ChunkCandidate:
    """Trace the chunk flow of region ``[start, end]`` with its outputs chunked as given.

    Parameters
    ----------
    func
        The Relax function.
    start, end
        Inclusive binding indices.
    output_axes
        Chunk axis of every region output, by variable name (negative axes allowed).
    last_use, bindings
        Precomputed :func:`last_uses` and :func:`flat_bindings` of ``func`` (for speed when
        tracing many regions of one function).

    Returns
    -------
    ChunkCandidate

    Raises
    ------
    CantChunk
        If the flow is illegal under any of the four rules.
    """
    bindings = bindings if bindings is not None else flat_bindings(func)
    if not 0 <= start <= end < len(bindings):
        raise CantChunk(f"region [{start}, {end}] outside the {len(bindings)} bindings")
    outputs = region_outputs(func, start, end, last_use, bindings)
    if not outputs:
        raise CantChunk("the region has no output")
    names = {v.name for v in outputs}
    if set(output_axes) != names:
        raise CantChunk(f"output axes given for {sorted(output_axes)}, outputs are {sorted(names)}")

    region = bindings[start : end + 1]
    values = {b.var: b.value for b in region}
    for var in outputs:
        if not _computed_in(var, values):
            # NOTE [outputs need a kernel]: `q, k, v = qkv(x).split(...)` reads fields of a
            # tuple made before the region; a region that starts at such a read would output
            # a view of its own input, which no kernel of its loop writes.
            raise CantChunk(f"output {var.name} is a view of a region input: start after it")
    tracer = _Tracer(region)
    for var in outputs:
        shape = shape_of(var)
        if shape is None:
            raise CantChunk(f"output {var.name} is not a tensor of known rank")
        axis = output_axes[var.name]
        if not -len(shape) <= axis < len(shape):
            raise CantChunk(f"output {var.name} has no axis {axis}")
        tracer.settings[var] = (axis % len(shape), Fraction(1))
    for binding in reversed(region):
        tracer.visit(binding)

    axes = _normalize(tracer.settings)
    extent = _extent(axes)
    const_names = constant_names(region)
    return ChunkCandidate(
        function=function_name,
        start=start,
        end=end,
        bindings=tuple((b.var.name, axes[b.var]) for b in region),
        inputs=tuple((const_names.get(v) or v.name, axes[v]) for v in tracer.inputs),
        outputs=tuple((v.name, axes[v]) for v in outputs),
        extent=extent,
        hoistable=tuple(b.var.name for b in region if not axes[b.var].chunked),
    )
