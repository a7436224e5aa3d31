"""A reference executor for chunk candidates: slice, compute the region per chunk, concat.

It checks search independently of the TIR lowering. The region is rewritten, in Relax, into an
unrolled sequence of chunks: every chunked input is sliced with ``strided_slice``, the region's
bindings are re-emitted at chunk shape (shape arguments of reshape, broadcast_to and the
creation ops rewritten), bindings the flow leaves whole are computed once before the chunks, and
each output is concatenated back along its axis. The rewritten module is an ordinary Relax
module: build it and compare with the unchunked one. It keeps every chunk alive, so it saves no
memory; it exists to prove candidates right.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax

from .candidate import WHOLE, ChunkAxis, ChunkCandidate
from .flow import constant_names, flat_bindings
from .rewrite import substitute, with_chunk_shape


def _slice(bb: relax.BlockBuilder, value: relax.Expr, axis: ChunkAxis, lo: int, hi: int):
    if isinstance(value.ty, relax.TupleType):  # a chunked tuple: every field on the same axis
        fields = [
            _slice(bb, bb.emit(relax.TupleGetItem(value, i)), axis, lo, hi)
            for i in range(len(value.ty.fields))
        ]
        return bb.emit(relax.Tuple(fields))
    return bb.emit(
        relax.op.strided_slice(
            value, axes=[axis.axis], begin=[lo * axis.scale], end=[hi * axis.scale]
        )
    )


def chunk_with_reference(
    mod: tvm.IRModule, candidate: ChunkCandidate, chunk_units: int
) -> tvm.IRModule:
    """A new module computing ``candidate``'s region in chunks of ``chunk_units`` units.

    ``chunk_units`` need not divide the extent (the last chunk is shorter). The function is
    rebuilt as one dataflow block, which is what the frontend produces; the input module is not
    modified.
    """
    if not isinstance(candidate.extent, int):
        raise ValueError("the reference executor needs a static extent")
    if not 1 <= chunk_units <= candidate.extent:
        raise ValueError(f"chunk_units must be in [1, {candidate.extent}], got {chunk_units}")
    func = mod[candidate.function]
    bindings = flat_bindings(func)
    region = bindings[candidate.start : candidate.end + 1]
    axes = candidate.axes
    inputs = candidate.input_axes
    consts = constant_names(region)

    def input_axis(value: relax.Expr) -> ChunkAxis:
        if isinstance(value, relax.Var):
            return inputs.get(value.name, WHOLE)
        return inputs.get(consts.get(value, ""), WHOLE)

    bb = relax.BlockBuilder()
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function(candidate.function, list(func.params), attrs=attrs, pure=True):
        with bb.dataflow():
            env: dict[relax.Expr, relax.Expr] = {}
            for binding in bindings[: candidate.start]:
                env[binding.var] = bb.emit(substitute(binding.value, env), binding.var.name)
            # Whole (hoistable) bindings once, before the chunks.
            for binding in region:
                if not axes[binding.var.name].chunked:
                    env[binding.var] = bb.emit(substitute(binding.value, env))
            pieces: dict[relax.Var, list[relax.Expr]] = {}
            outputs = candidate.output_axes
            for lo in range(0, candidate.extent, chunk_units):
                hi = min(candidate.extent, lo + chunk_units)
                local = dict(env)
                sliced = _slice_inputs(bb, region, local, input_axis, lo, hi)
                local.update(sliced)
                for binding in region:
                    axis = axes[binding.var.name]
                    if not axis.chunked:
                        continue
                    value = substitute(binding.value, local)
                    if isinstance(value, relax.Call):
                        value = with_chunk_shape(value, axis, hi - lo)
                    local[binding.var] = bb.emit(value)
                    if binding.var.name in outputs:
                        pieces.setdefault(binding.var, []).append(local[binding.var])
            for var, parts in pieces.items():
                axis = outputs[var.name].axis
                env[var] = (
                    bb.emit(relax.op.concat(parts, axis=axis)) if len(parts) > 1 else parts[0]
                )
            for binding in bindings[candidate.end + 1 :]:
                env[binding.var] = bb.emit(substitute(binding.value, env))
            result = bb.emit_output(substitute(func.body.body, env))
        bb.emit_func_output(result)
    new_mod = bb.get()
    out = tvm.IRModule({gv: f for gv, f in mod.functions.items()})
    out[candidate.function] = new_mod[candidate.function]
    return relax.transform.Normalize()(out)


def _slice_inputs(
    bb: relax.BlockBuilder,
    region: list[relax.Binding],
    env: dict[relax.Var, relax.Expr],
    input_axis: Callable[[relax.Expr], ChunkAxis],
    lo: int,
    hi: int,
) -> dict:
    """Slices of every chunked region input for chunk ``[lo, hi)``, keyed by the input (a
    variable, or a constant object), ready to be merged into the chunk's environment."""
    inside = {b.var for b in region}
    done: dict = {}

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Tuple):
            for field in expr.fields:
                visit(field)
            return
        if isinstance(expr, relax.TupleGetItem):
            visit(expr.tuple_value)
            return
        if not isinstance(expr, relax.Var | tvm.ir.expr.GenericConst) or expr in inside:
            return
        if expr in done:
            return
        axis = input_axis(expr)
        if axis.chunked:
            source = env.get(expr, expr) if isinstance(expr, relax.Var) else expr
            done[expr] = _slice(bb, source, axis, lo, hi)

    for binding in region:
        value = binding.value
        for arg in value.args if isinstance(value, relax.Call) else [value]:
            visit(arg)
    return done
