"""Step 1 of lowering: a chunk region re-emitted as a small Relax function at chunk shape.

The function's parameters are the tensors the region's chunked bindings read from outside:
region inputs (chunked ones at chunk shape along their axis, whole ones at full shape), the
hoisted bindings (computed once, outside the loop) and the constants. Its result is a tuple of
the region's outputs at chunk shape, tuple-valued outputs flattened field by field. The chunk
length is an ``int``, or a TIR variable for a symbolic length (the last chunk of a symbolic
extent).
"""

from __future__ import annotations

import dataclasses

import tvm
import tvm_ffi
from tvm import relax

from ..search.candidate import WHOLE, ChunkAxis, ChunkCandidate
from ..search.flow import constant_names, flat_bindings
from ..search.rewrite import substitute, with_chunk_shape


@tvm_ffi.register_error  # keeps its type across the FFI boundary of a module pass
class LoweringError(RuntimeError):
    """A planned region could not be lowered (an op the target pipeline cannot legalize or
    schedule inside a chunk); the message names it. The module is left unchanged."""


@dataclasses.dataclass(frozen=True)
class RegionInput:
    """One parameter of the region function: the value passed from outside, and its axis."""

    value: relax.Expr  # a Var, a constant, or a TupleGetItem of a tuple-valued Var
    axis: ChunkAxis

    @property
    def ty(self) -> relax.TensorType:
        value = self.value
        if isinstance(value, relax.TupleGetItem):
            return value.tuple_value.ty.fields[value.index]
        return value.ty


@dataclasses.dataclass(frozen=True)
class RegionOutput:
    """One result of the region function: the region binding it comes from (``field`` is the
    tuple index for a tuple-valued binding) and its chunk axis."""

    var: relax.Var
    field: int | None
    axis: ChunkAxis

    @property
    def ty(self) -> relax.TensorType:
        return self.var.ty if self.field is None else self.var.ty.fields[self.field]


@dataclasses.dataclass(frozen=True)
class RegionFunction:
    """The region at chunk shape, with what the outer function passes in and gets back."""

    func: relax.Function
    inputs: tuple[RegionInput, ...]
    outputs: tuple[RegionOutput, ...]
    hoisted: tuple[relax.Binding, ...]


def _tensor_type(value: relax.Expr, what: str) -> relax.TensorType:
    ty = value.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        raise LoweringError(f"{what} is not a tensor of known shape ({ty}); it cannot be chunked")
    return ty


def _at_chunk(ty: relax.TensorType, axis: ChunkAxis, length) -> relax.TensorType:
    dims = list(ty.shape.values)
    if axis.chunked:
        dims[axis.axis] = length * axis.scale
    return relax.TensorType(dims, str(ty.dtype))


def region_function(
    func: relax.Function,
    candidate: ChunkCandidate,
    length,
    hoist: bool = True,
    bindings: list[relax.Binding] | None = None,
) -> RegionFunction:
    """Re-emit ``candidate``'s chunked bindings as a Relax function at chunk ``length``.

    ``hoist=False`` keeps the bindings that do not depend on the chunk inside the function
    (at full size, recomputed per chunk) instead of passing them in. ``bindings``: the
    function's :func:`flat_bindings`, when the caller has them (a deep plan lowers hundreds
    of regions of one function).
    """
    bindings = bindings if bindings is not None else flat_bindings(func)
    region = bindings[candidate.start : candidate.end + 1]
    axes = candidate.axes
    given = candidate.input_axes
    consts = constant_names(region)
    chunked = [b for b in region if not hoist or axes[b.var.name].chunked]
    hoisted = tuple(b for b in region if hoist and not axes[b.var.name].chunked)
    hoisted_vars = {b.var for b in hoisted}
    defined = {b.var for b in chunked}

    reads: dict[relax.Expr, None] = {}  # values read from outside, in first-use order

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Tuple):
            for field in expr.fields:
                visit(field)
        elif isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value)
        elif isinstance(expr, relax.Var | tvm.ir.expr.GenericConst) and expr not in defined:
            reads.setdefault(expr, None)

    for binding in chunked:
        value = binding.value
        for arg in value.args if isinstance(value, relax.Call) else [value]:
            visit(arg)

    def axis_of(value: relax.Expr) -> ChunkAxis:
        if value in hoisted_vars:
            return WHOLE
        if isinstance(value, relax.Var):
            return given.get(value.name, WHOLE)
        return given.get(consts.get(value, ""), WHOLE)

    inputs: list[RegionInput] = []
    params: list[relax.Var] = []
    env: dict[relax.Expr, relax.Expr] = {}
    tuple_inputs: list[tuple[relax.Expr, list[relax.Var]]] = []
    for value in reads:
        axis = axis_of(value)
        name = value.name if isinstance(value, relax.Var) else consts.get(value, "const")
        if isinstance(value.ty, relax.TupleType):
            fields = []
            for i, field_ty in enumerate(value.ty.fields):
                item = relax.TupleGetItem(value, i)
                ty = _tensor_type(relax.Var("f", field_ty), f"field {i} of {name}")
                param = relax.Var(f"{name}_{i}", _at_chunk(ty, axis, length))
                inputs.append(RegionInput(item, axis))
                params.append(param)
                fields.append(param)
            tuple_inputs.append((value, fields))
            continue
        ty = _tensor_type(value, f"region input {name}")
        param = relax.Var(name.replace(".", "_"), _at_chunk(ty, axis, length))
        inputs.append(RegionInput(value, axis))
        params.append(param)
        env[value] = param

    outputs: list[RegionOutput] = []
    out_axes = candidate.output_axes
    bb = relax.BlockBuilder()
    with bb.function("region", params, pure=True):  # public: fusion drops private ones
        with bb.dataflow():
            for value, fields in tuple_inputs:
                env[value] = bb.emit(relax.Tuple(fields))
            results = []
            for binding in chunked:
                axis = axes[binding.var.name]
                value = substitute(binding.value, env)
                if isinstance(value, relax.Call):
                    value = with_chunk_shape(value, axis, length)
                env[binding.var] = bb.emit(value, binding.var.name)
                if binding.var.name not in out_axes:
                    continue
                if isinstance(binding.var.ty, relax.TupleType):
                    for i in range(len(binding.var.ty.fields)):
                        outputs.append(RegionOutput(binding.var, i, axis))
                        results.append(bb.emit(relax.TupleGetItem(env[binding.var], i)))
                else:
                    outputs.append(RegionOutput(binding.var, None, axis))
                    results.append(env[binding.var])
            result = bb.emit_output(relax.Tuple(results))
        bb.emit_func_output(result)
    for out in outputs:
        _tensor_type(relax.Var("o", out.ty), f"region output {out.var.name}")
    return RegionFunction(bb.get()["region"], tuple(inputs), tuple(outputs), hoisted)
