"""Contractions: ``matmul`` and ``einsum``. Batch and free (row/column) axes carry the chunk;
the contracted axis is computed across, so it never does."""

from __future__ import annotations

from tvm import relax

from ..candidate import CantChunk
from . import flow, register, shape_of, static


def _batch_flow(shape: list, out_axis: int, out_batch_rank: int):
    batch_rank = len(shape) - 2
    in_axis = out_axis - (out_batch_rank - batch_rank)
    if in_axis < 0 or static(shape[in_axis]) == 1:
        return None  # broadcast batch axis: used whole
    return flow(in_axis)


@register("relax.matmul")
def matmul(call: relax.Call, out_axis: int):
    a, b = call.args[:2]
    sa, sb = shape_of(a), shape_of(b)
    rank = len(shape_of(call))
    if len(sa) == 1 and len(sb) == 1:
        raise CantChunk("a vector dot product has no free axis")
    if len(sa) == 1:  # (K,) @ (..., K, N) -> (..., N)
        if out_axis == rank - 1:
            return [None, flow(len(sb) - 1)]
        return [None, _batch_flow(sb, out_axis, rank - 1)]
    if len(sb) == 1:  # (..., M, K) @ (K,) -> (..., M)
        if out_axis == rank - 1:
            return [flow(len(sa) - 2), None]
        return [_batch_flow(sa, out_axis, rank - 1), None]
    if out_axis == rank - 1:  # columns: only b is sliced
        return [None, flow(len(sb) - 1)]
    if out_axis == rank - 2:  # rows: only a is sliced
        return [flow(len(sa) - 2), None]
    return [_batch_flow(sa, out_axis, rank - 2), _batch_flow(sb, out_axis, rank - 2)]


@register("relax.einsum")
def einsum(call: relax.Call, out_axis: int):
    subscripts = str(call.attrs.subscripts).replace(" ", "")
    if "..." in subscripts or "->" not in subscripts:
        raise CantChunk("einsum with ellipsis or implicit output is not analysed")
    lhs, out = subscripts.split("->")
    letter = out[out_axis]
    operands = lhs.split(",")
    fields = call.args[0].fields
    flows = []
    for spec, operand in zip(operands, fields):
        if len(set(spec)) != len(spec):
            raise CantChunk("einsum operand with a repeated index (a diagonal)")
        pos = spec.find(letter)
        if pos < 0 or static(shape_of(operand)[pos]) == 1:
            flows.append(None)
        else:
            flows.append(flow(pos))
    return [flows]
