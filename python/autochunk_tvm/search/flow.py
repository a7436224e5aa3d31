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

from ..analysis.memory import flat_bindings, handle
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
# kept per (call, axis); a call is keyed by its handle and kept in the entry, which holds it
# alive (and its handle unique) while cached. The cache is dropped when a rule is registered
# (a refusal may have been "no rule").
_RULE_CACHE_LIMIT = 200_000
_rule_cache: dict[tuple[int, int], tuple[relax.Call, object]] = {}
_rule_cache_generation = rules.generation()


def _arg_flows(call: relax.Call, axis: int):
    global _rule_cache_generation
    if _rule_cache_generation != rules.generation():
        _rule_cache.clear()
        _rule_cache_generation = rules.generation()
    key = (handle(call), axis)
    entry = _rule_cache.get(key)
    if entry is None:
        try:
            found = _ask_rule(call, axis)
        except CantChunk as err:
            found = err
        if len(_rule_cache) >= _RULE_CACHE_LIMIT:
            _rule_cache.clear()
        entry = _rule_cache[key] = (call, found)
    found = entry[1]
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
    for binding in region:
        for const, name in _binding_constants(binding):
            names.setdefault(const, name)
    return names


def _binding_constants(binding: relax.Binding) -> list[tuple[relax.Expr, str]]:
    """The constants one binding reads, in order, each named by its site."""
    found: list[tuple[relax.Expr, str]] = []

    def visit(expr: relax.Expr, name: str) -> None:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            found.append((expr, name))
        elif isinstance(expr, relax.Tuple):
            for k, field in enumerate(expr.fields):
                visit(field, f"{name}.{k}")

    value = binding.value
    if isinstance(value, tvm.ir.expr.GenericConst | relax.Tuple):
        visit(value, f"{binding.var.name}.value")
    elif isinstance(value, relax.Call):
        for j, arg in enumerate(value.args):
            visit(arg, f"{binding.var.name}.arg{j}")
    return found


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


def region_outputs(func: relax.Function, start: int, end: int) -> list[relax.Var]:
    """Bindings of ``[start, end]`` that are used after the region or returned.

    Costs O(region length): what the function's bindings read is indexed once per function
    (NOTE [flow index]).
    """
    return _FlowIndex.of(func).outputs(start, end)


# NOTE [flow index]: search traces thousands of overlapping regions of one function (SD3's
# transformer on CUDA: 38k traces in one selection), and reading the IR through the FFI cost
# more than the tracing itself: every ``binding.var`` is a new Python wrapper, so keying a
# dict by it calls ``Expr.__eq__``, which fetches the type through the FFI. The function is
# read once into plain records, every variable and constant keyed by its object handle (an
# int, stable while the function is alive; the cache keeps it alive), and tracing works on
# those. A trace's answer depends only on the function, the region, the output axes and the
# rule registry, so it is kept too: selection searches around many centres whose windows
# overlap.
_ALIAS, _GET, _TUPLE, _OP_CALL, _FUNC_CALL, _OTHER = range(6)
_INDEX_CACHE_SIZE = 8
# Traces kept per function before they are dropped: a selection traces tens of thousands of
# distinct regions (26k on the 48-block Evoformer's twin); the limit bounds the memory.
_TRACE_CACHE_LIMIT = 100_000


def _traceable(expr) -> bool:
    """Whether a value takes a chunk setting: a variable or a constant (shapes and prim
    values are never chunked)."""
    return isinstance(expr, relax.Var | tvm.ir.expr.GenericConst)


class _Node:
    """One binding, read once: what the tracer and the output checks need of it."""

    __slots__ = ("var", "key", "name", "kind", "reads", "call", "view", "source", "constants")

    def __init__(self, binding: relax.Binding, index: _FlowIndex) -> None:
        var, value = binding.var, binding.value
        self.var = var
        self.key = index.register(var)
        self.name = var.name
        # The constants it reads with their names for candidates (see constant_names).
        self.constants = tuple((index.register(c), n) for c, n in _binding_constants(binding))
        self.call = None
        self.view = False  # a reshape-like call: its data is its first argument's
        # ``reads``: for an alias or a tuple read, the key it passes its setting to (None for
        # a value that takes none); for a tuple, one per field; for a call, one entry per
        # argument: a key, None, or a tuple of them for a tuple argument.
        # ``source``: for _computed_in, the key of the value whose data this one is (views),
        # or a tuple of them (a tuple), or None (a kernel, or nothing inside the function).
        self.source = None
        if _traceable(value):
            self.kind = _ALIAS
            self.reads = index.register(value)
            self.source = self.reads if isinstance(value, relax.Var) else None
        elif isinstance(value, relax.TupleGetItem):
            self.kind = _GET
            tup = value.tuple_value
            self.reads = index.register(tup) if _traceable(tup) else None
            self.source = _var_key_through_gets(value)
        elif isinstance(value, relax.Tuple):
            self.kind = _TUPLE
            fields = value.fields[:]
            self.reads = tuple(index.register(f) if _traceable(f) else None for f in fields)
            self.source = tuple(_var_key_through_gets(f) for f in fields)
        elif isinstance(value, relax.Call):
            self.kind = _OP_CALL if isinstance(value.op, tvm.ir.Op) else _FUNC_CALL
            self.call = value
            args = value.args[:]
            self.reads = tuple(_arg_entry(a, index) for a in args)
            if is_view_value(value) and args:
                self.view = True
                self.source = _var_key_through_gets(args[0])
        else:
            self.kind = _OTHER
            self.reads = type(value).__name__  # for the refusal


def _arg_entry(arg: relax.Expr, index: _FlowIndex):
    if isinstance(arg, relax.Tuple):
        return tuple(index.register(f) if _traceable(f) else None for f in arg.fields[:])
    return index.register(arg) if _traceable(arg) else None


def _var_key_through_gets(expr: relax.Expr) -> int | None:
    """The key of the variable ``expr`` reads through tuple reads, or None (a constant)."""
    while isinstance(expr, relax.TupleGetItem):
        tup = expr.tuple_value
        expr = tup.fields[expr.index] if isinstance(tup, relax.Tuple) else tup
    return handle(expr) if isinstance(expr, relax.Var) else None


class _FlowIndex:
    """A function read once for tracing (NOTE [flow index]); get it with :meth:`of`."""

    _cache: dict[int, _FlowIndex] = {}

    @classmethod
    def of(cls, func: relax.Function) -> _FlowIndex:
        key = handle(func)
        index = cls._cache.pop(key, None)
        if index is None:
            index = cls(func)
            while len(cls._cache) >= _INDEX_CACHE_SIZE:
                cls._cache.pop(next(iter(cls._cache)))  # the least recently used
        cls._cache[key] = index
        return index

    def __init__(self, func: relax.Function) -> None:
        self.func = func  # keeps every handle below alive
        self.exprs: dict[int, relax.Expr] = {}
        for param in func.params[:]:
            self.register(param)
        self.nodes = [_Node(b, self) for b in flat_bindings(func)]
        self.position = {node.key: i for i, node in enumerate(self.nodes)}
        self.last_use = {handle(var): i for var, i in last_uses(func).items()}
        self._shapes: dict[int, list | None] = {}
        self._traces: dict[tuple, ChunkCandidate | CantChunk] = {}
        self._traces_generation = rules.generation()

    def register(self, expr: relax.Expr) -> int:
        key = handle(expr)
        if key not in self.exprs:
            self.exprs[key] = expr
        return key

    def name(self, key: int) -> str:
        return _name(self.exprs[key])

    def shape(self, key: int) -> list | None:
        """The shape of a tensor (or of the fields of a chunked tuple), or None."""
        if key not in self._shapes:
            value = self.exprs[key]
            self._shapes[key] = (
                _tuple_shape(value) if isinstance(value.ty, relax.TupleType) else shape_of(value)
            )
        return self._shapes[key]

    def outputs(self, start: int, end: int) -> list[relax.Var]:
        last = self.last_use
        return [n.var for n in self.nodes[start : end + 1] if last.get(n.key, -1) > end]

    def computed_in(self, key: int | None, start: int, end: int) -> bool:
        """Whether a kernel inside ``[start, end]`` computes the data of ``key``, rather than
        it being a region input, a constant, or a view of one (an alias, a tuple read, a
        reshape)."""
        while key is not None:
            at = self.position.get(key)
            if at is None or not start <= at <= end:
                return False  # a region input or a parameter
            node = self.nodes[at]
            if node.kind == _TUPLE:
                return any(self.computed_in(k, start, end) for k in node.source)
            if node.kind in (_ALIAS, _GET) or node.view:
                key = node.source
                continue
            return True  # a kernel, control flow, anything else that makes new data
        return False

    def trace(
        self, start: int, end: int, output_axes: Mapping[str, int], function_name: str
    ) -> ChunkCandidate:
        if self._traces_generation != rules.generation():
            self._traces.clear()
            self._traces_generation = rules.generation()
        key = (start, end, tuple(sorted(output_axes.items())), function_name)
        found = self._traces.get(key)
        if found is None:
            try:
                found = self._trace(start, end, output_axes, function_name)
            except CantChunk as err:
                found = err
            if len(self._traces) >= _TRACE_CACHE_LIMIT:
                self._traces.clear()
            self._traces[key] = found
        if isinstance(found, CantChunk):
            raise type(found)(*found.args)
        return found

    def _trace(
        self, start: int, end: int, output_axes: Mapping[str, int], function_name: str
    ) -> ChunkCandidate:
        if not 0 <= start <= end < len(self.nodes):
            raise CantChunk(f"region [{start}, {end}] outside the {len(self.nodes)} bindings")
        outputs = self.outputs(start, end)
        if not outputs:
            raise CantChunk("the region has no output")
        names = {v.name for v in outputs}
        if set(output_axes) != names:
            raise CantChunk(
                f"output axes given for {sorted(output_axes)}, outputs are {sorted(names)}"
            )
        region = self.nodes[start : end + 1]
        for var in outputs:
            if not self.computed_in(handle(var), start, end):
                # NOTE [outputs need a kernel]: `q, k, v = qkv(x).split(...)` reads fields of a
                # tuple made before the region; a region that starts at such a read would
                # output a view of its own input, which no kernel of its loop writes.
                raise CantChunk(f"output {var.name} is a view of a region input: start after it")
        tracer = _Tracer(self, start, end)
        for var in outputs:
            shape = self.shape(handle(var))
            if shape is None or isinstance(var.ty, relax.TupleType):
                raise CantChunk(f"output {var.name} is not a tensor of known rank")
            axis = output_axes[var.name]
            if not -len(shape) <= axis < len(shape):
                raise CantChunk(f"output {var.name} has no axis {axis}")
            tracer.settings[handle(var)] = (axis % len(shape), Fraction(1))
        for node in reversed(region):
            tracer.visit(node)

        axes = _normalize(tracer.settings)
        extent = self._extent(axes)
        const_names: dict[int, str] = {}
        for node in region:
            for key, name in node.constants:
                const_names.setdefault(key, name)
        inputs = [(const_names.get(k) or self.name(k), axes[k]) for k in tracer.inputs]
        return ChunkCandidate(
            function=function_name,
            start=start,
            end=end,
            bindings=tuple((n.name, axes[n.key]) for n in region),
            inputs=tuple(inputs),
            outputs=tuple((v.name, axes[handle(v)]) for v in outputs),
            extent=extent,
            hoistable=tuple(n.name for n in region if not axes[n.key].chunked),
        )

    def _extent(self, axes: Mapping[int, ChunkAxis]) -> int | str:
        extent = None
        for key, chunk in axes.items():
            if not chunk.chunked:
                continue
            shape = self.shape(key)
            if shape is None:
                raise CantChunk(f"{self.name(key)} has no known shape")
            dim = shape[chunk.axis]
            if static(dim) is not None:
                if static(dim) % chunk.scale:
                    raise CantChunk(
                        f"{self.name(key)}: dim {dim} not a multiple of scale {chunk.scale}"
                    )
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


class _Tracer:
    """The settings of one region's trace, keyed like the index (NOTE [flow index])."""

    def __init__(self, index: _FlowIndex, start: int, end: int) -> None:
        self.index = index
        self.start, self.end = start, end
        self.settings: dict[int, _Setting] = {}
        self.inputs: dict[int, None] = {}  # ordered set of values read from outside

    def assign(self, key: int | None, setting: _Setting) -> None:
        if key is None:
            return  # shapes, prim values: never chunked
        old = self.settings.get(key)
        if old is not None and old != setting:
            raise CantChunk(
                f"{self.index.name(key)} needs two different chunk settings (unique setting)"
            )
        self.settings[key] = setting
        at = self.index.position.get(key)
        if at is None or not self.start <= at <= self.end:
            self.inputs[key] = None

    def visit(self, node: _Node) -> None:
        setting = self.settings.get(node.key, _WHOLE)
        self.settings[node.key] = setting
        kind = node.kind
        if kind == _ALIAS or kind == _GET:
            self.assign(node.reads, setting)  # a chunked tuple has all fields chunked
        elif kind == _TUPLE:
            for field in node.reads:
                self.assign(field, setting)
        elif kind == _OP_CALL or kind == _FUNC_CALL:
            axis, scale = setting
            if axis is None:
                for entry in node.reads:  # computed whole: everything it reads is whole
                    self._assign_arg(entry, _WHOLE)
                return
            if kind == _FUNC_CALL:
                raise CantChunk(f"{node.var.name} calls a function (barrier)")
            flows = _arg_flows(node.call, axis)
            for entry, arg_flow in zip(node.reads, flows):
                if isinstance(arg_flow, list):  # a tuple argument: one flow per field
                    if not isinstance(entry, tuple):
                        raise CantChunk(f"{node.var.name}: a tuple flow for a non-tuple argument")
                    for field, field_flow in zip(entry, arg_flow):
                        self.assign(field, _scaled(field_flow, scale))
                else:
                    self._assign_arg(entry, _scaled(arg_flow, scale))
        else:
            raise CantChunk(f"{node.var.name} is a {node.reads} (control flow): barrier")

    def _assign_arg(self, entry, setting: _Setting) -> None:
        if isinstance(entry, tuple):
            for field in entry:
                self.assign(field, setting)
        else:
            self.assign(entry, setting)


def _scaled(arg_flow, scale: Fraction) -> _Setting:
    if arg_flow is None:
        return _WHOLE
    axis, ratio = arg_flow
    return (axis, scale if ratio == 1 else scale * ratio)


def _name(value: relax.Expr) -> str:
    return value.name if isinstance(value, relax.Var) else "a constant"


def _normalize(settings: Mapping[int, _Setting]) -> dict[int, ChunkAxis]:
    """Rational scales to the smallest integers in the same proportions."""
    scales = [s for a, s in settings.values() if a is not None]
    denominator = math.lcm(*(s.denominator for s in scales))
    common = math.gcd(*(s.numerator * (denominator // s.denominator) for s in scales))
    axes: dict[tuple[int, int], ChunkAxis] = {}  # one record per (axis, scale)
    result = {}
    for value, (axis, scale) in settings.items():
        if axis is None:
            result[value] = WHOLE
            continue
        units = scale.numerator * (denominator // scale.denominator) // common
        chunk = axes.get((axis, units))
        if chunk is None:
            chunk = axes[(axis, units)] = ChunkAxis(axis, units)
        result[value] = chunk
    return result


def _tuple_shape(value: relax.Expr) -> list | None:
    fields = value.ty.fields
    first = fields[0] if fields else None
    if isinstance(first, relax.TensorType) and isinstance(first.shape, relax.ShapeExpr):
        return list(first.shape.values)  # all fields of a chunked tuple share the chunk axis
    return None


def trace_region(
    func: relax.Function,
    start: int,
    end: int,
    output_axes: Mapping[str, int],
    *,
    function_name: str = "main",
) -> ChunkCandidate:
    """Trace the chunk flow of region ``[start, end]`` with its outputs chunked as given.

    Parameters
    ----------
    func
        The Relax function. It is read once and the answers kept (NOTE [flow index]), so
        tracing many regions of one function costs each its region's length.
    start, end
        Inclusive binding indices.
    output_axes
        Chunk axis of every region output, by variable name (negative axes allowed).

    Returns
    -------
    ChunkCandidate

    Raises
    ------
    CantChunk
        If the flow is illegal under any of the four rules.
    """
    return _FlowIndex.of(func).trace(start, end, output_axes, function_name)
