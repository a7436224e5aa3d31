"""Rewriting one binding at chunk shape: the helpers the lowering and the reference executor
(the test oracle in :mod:`.reference`) share.

A region's bindings are re-emitted with their arguments replaced (:func:`substitute`) and, for
ops whose argument is the output shape, that shape cut to one chunk (:func:`with_chunk_shape`).
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax

from .candidate import ChunkAxis

# Ops whose argument ``index`` is the output shape: rewritten at chunk shape.
SHAPE_ARGUMENT = {
    "relax.reshape": 1,
    "relax.broadcast_to": 1,
    "relax.full": 0,
    "relax.zeros": 0,
    "relax.ones": 0,
}


def substitute(expr: relax.Expr, env: Mapping[relax.Expr, relax.Expr]) -> relax.Expr:
    """``expr`` with the variables (and constants) of ``env`` replaced, one level of calls,
    tuples and tuple items deep: the shape of a binding's value."""
    if isinstance(expr, relax.Var | tvm.ir.expr.GenericConst):
        return env.get(expr, expr)  # sliced constants are keyed by the constant itself
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, env) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, env), expr.index)
    if isinstance(expr, relax.Call):
        args = [substitute(a, env) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    return expr  # constants, shapes, prim values


def with_chunk_shape(call: relax.Call, axis: ChunkAxis, units) -> relax.Call:
    """``call`` with its output-shape argument (reshape, broadcast_to, full, ...) at a chunk of
    ``units`` chunk units (an int, or a PrimExpr for a symbolic chunk length)."""
    op = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
    if op not in SHAPE_ARGUMENT or not axis.chunked:
        return call
    index = SHAPE_ARGUMENT[op]
    dims = list(call.args[index].values)
    dims[axis.axis] = units * axis.scale
    args = list(call.args)
    args[index] = relax.ShapeExpr(dims)
    return relax.Call(call.op, args, call.attrs, call.ty_args)
