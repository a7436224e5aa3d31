"""Repeated structure: the regions that compute the same thing in different layers.

A deep model repeats its blocks, and TVM's memory planner shares one storage among the alike
tensors of all of them: chunking the attention of one layer out of twelve lowers nothing until
all twelve are chunked. Selection therefore chunks a whole *class* of alike regions in one
step, at one chunk length (``selection/select.py``).

Two regions are alike (*twins*) when, binding by binding, they bind the same ops with the same
attributes and types, read their own earlier bindings at the same offsets, have outputs at the
same offsets, and their chunk flows agree: the same axis and scale for every binding, the same
extent, the same hoistable bindings, and inputs chunked alike. The comparison is structural; a
twin is found by tracing its region afresh, never by assuming the flow carries over.
"""

from __future__ import annotations

import dataclasses

import tvm
from tvm import relax

from ..analysis.memory import handle
from .candidate import CantChunk, ChunkCandidate
from .flow import flat_bindings, region_outputs, trace_region

# A binding's own description (op, attributes, types; what its arguments are), independent of
# where it sits, and the binding indices its variable arguments were bound at (None: a
# parameter or a constant).
_Key = tuple
_Refs = tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class RegionClass:
    """A region and its twins, in program order, none overlapping another.

    ``members[k]`` is a :class:`ChunkCandidate`; the one the class was found from is among
    them. A class of one member is a region without twins.
    """

    members: tuple[ChunkCandidate, ...]

    def __len__(self) -> int:
        return len(self.members)


class ClassFinder:
    """Finds the twins of candidate regions of one function; keeps what it learns of the
    function (binding descriptions, uses) across calls."""

    def __init__(self, func: relax.Function, function_name: str = "main") -> None:
        self.func = func
        self.function_name = function_name
        self.bindings = flat_bindings(func)
        # By handle (NOTE [keys by handle], analysis/memory.py).
        index = {handle(b.var): i for i, b in enumerate(self.bindings)}
        self.position = index  # a binding variable's handle -> its index
        self._at = {b.var.name: i for i, b in enumerate(self.bindings)}
        self._classes: dict[ChunkCandidate, RegionClass] = {}
        types: dict[int, str] = {}
        described = [_describe(b, index, types) for b in self.bindings]
        self.keys: list[_Key] = [k for k, _ in described]
        self.refs: list[_Refs] = [r for _, r in described]
        self._by_key: dict[_Key, list[int]] = {}
        for i, key in enumerate(self.keys):
            self._by_key.setdefault(key, []).append(i)

    def region_class(self, cand: ChunkCandidate) -> RegionClass:
        """``cand`` and every twin of it in the function (see the module docstring)."""
        found = self._classes.get(cand)
        if found is None:
            found = self._classes[cand] = self._find(cand)
        return found

    def _find(self, cand: ChunkCandidate) -> RegionClass:
        length = cand.end - cand.start + 1
        shape = self._shape(cand.start, length)
        members = [cand]
        taken = [(cand.start, cand.end)]
        for start in self._by_key.get(self.keys[cand.start], ()):
            end = start + length - 1
            if start == cand.start or end >= len(self.bindings):
                continue
            if any(start <= e and s <= end for s, e in taken):
                continue
            if self._shape(start, length) != shape:
                continue
            twin = self._trace_twin(cand, start)
            if twin is not None:
                members.append(twin)
                taken.append((start, end))
        members.sort(key=lambda c: c.start)
        return RegionClass(tuple(members))

    def _shape(self, start: int, length: int):
        """The region ``[start, start + length)`` as a position-free structure: each binding's
        key, and each variable argument as an offset into the region or "outside"."""
        out = []
        for i in range(start, start + length):
            rel = tuple(
                r - start if r is not None and start <= r < i else None for r in self.refs[i]
            )
            out.append((self.keys[i], rel))
        return tuple(out)

    def twin_at(self, cand: ChunkCandidate, start: int) -> ChunkCandidate | None:
        """The region of this function at ``start`` as long as ``cand`` (of this function or
        of one alike, such as a shallow twin's), traced afresh, if it is chunked as ``cand``
        is; else None."""
        if start + cand.end - cand.start >= len(self.bindings):
            return None
        return self._trace_twin(cand, start)

    def _trace_twin(self, cand: ChunkCandidate, start: int) -> ChunkCandidate | None:
        end = start + cand.end - cand.start
        offset = start - cand.start
        position = {name: k for k, (name, _) in enumerate(cand.bindings)}
        outputs = region_outputs(self.func, start, end)
        rel_outputs = sorted(self._at[v.name] - start for v in outputs)
        if rel_outputs != sorted(position[name] for name, _ in cand.outputs):
            return None
        axes = {}
        for name, axis in cand.outputs:
            twin_var = self.bindings[cand.start + position[name] + offset].var
            axes[twin_var.name] = axis.axis
        try:
            twin = trace_region(
                self.func,
                start,
                end,
                axes,
                function_name=self.function_name,
            )
        except CantChunk:
            return None
        return twin if _same_flow(cand, twin) else None


def _same_flow(a: ChunkCandidate, b: ChunkCandidate) -> bool:
    """Whether two structurally alike regions are chunked alike."""
    if a.extent != b.extent or len(a.bindings) != len(b.bindings):
        return False
    if [axis for _, axis in a.bindings] != [axis for _, axis in b.bindings]:
        return False
    hoist_a = {k for k, (name, _) in enumerate(a.bindings) if name in set(a.hoistable)}
    hoist_b = {k for k, (name, _) in enumerate(b.bindings) if name in set(b.hoistable)}
    if hoist_a != hoist_b:
        return False
    return sorted(_axis_key(x) for _, x in a.inputs) == sorted(_axis_key(x) for _, x in b.inputs)


def _axis_key(axis) -> tuple:
    return (-1 if axis.axis is None else axis.axis, axis.scale)


def _describe(binding: relax.Binding, index: dict, types: dict) -> tuple[_Key, _Refs]:
    """The binding's key and refs. ``types``: the printed type of each variable by handle,
    filled as bindings are described in order; an argument's type is looked up there.
    Printing a type costs as much as the rest of the description, and every variable is
    read several times: a 48-block Evoformer's classes took 1.7 s, most of it printing."""
    value = binding.value
    refs: list[int | None] = []
    own = types[handle(binding.var)] = str(binding.var.ty)
    key = (_value_key(value, index, refs, types), own)
    return key, tuple(refs)


def _value_key(value: relax.Expr, index: dict, refs: list, types: dict) -> tuple:
    if isinstance(value, relax.Call):
        op = value.op.name if isinstance(value.op, tvm.ir.Op) else f"fn:{value.op}"
        attrs = str(value.attrs) if value.attrs is not None else ""
        args = tuple(_arg_key(a, index, refs, types) for a in value.args)
        return ("call", op, attrs, args)
    if isinstance(value, relax.TupleGetItem):
        return ("get", value.index, _arg_key(value.tuple_value, index, refs, types))
    if isinstance(value, relax.Tuple):
        return ("tuple", tuple(_arg_key(f, index, refs, types) for f in value.fields))
    if isinstance(value, relax.Var):
        return ("alias", _arg_key(value, index, refs, types))
    return (type(value).__name__, str(value))


def _arg_key(arg: relax.Expr, index: dict, refs: list, types: dict) -> tuple:
    if isinstance(arg, relax.Var):
        key = handle(arg)
        refs.append(index.get(key))
        if key not in types:  # a parameter
            types[key] = str(arg.ty)
        return ("var", types[key])
    if isinstance(arg, tvm.ir.expr.GenericConst):
        return ("const", str(arg.ty))
    if isinstance(arg, relax.Tuple):
        return ("tuple", tuple(_arg_key(f, index, refs, types) for f in arg.fields))
    return (type(arg).__name__, str(arg))
