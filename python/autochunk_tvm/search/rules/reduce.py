"""Reductions and scans: the chunk axis must not be reduced (or scanned) over."""

from __future__ import annotations

from tvm import relax

from ..candidate import CantChunk
from . import flow, normalize_axis, register, shape_of


def _reduced_axes(call: relax.Call, in_rank: int) -> set[int]:
    axis = call.attrs.axis
    if axis is None:
        return set(range(in_rank))
    axes = [int(a) for a in axis] if hasattr(axis, "__len__") else [int(axis)]
    return {normalize_axis(a, in_rank) for a in axes}


@register(
    "relax.sum",
    "relax.mean",
    "relax.max",
    "relax.min",
    "relax.prod",
    "relax.variance",
    "relax.std",
    "relax.argmax",
    "relax.argmin",
)
def reduction(call: relax.Call, out_axis: int):
    in_rank = len(shape_of(call.args[0]))
    reduced = _reduced_axes(call, in_rank)
    kept = [a for a in range(in_rank) if a not in reduced]
    if bool(call.attrs.keepdims):
        if out_axis in reduced:
            raise CantChunk("chunk axis is reduced")
        return [flow(out_axis)]
    return [flow(kept[out_axis])]


@register("relax.cumsum", "relax.cumprod")
def scan(call: relax.Call, out_axis: int):
    if call.attrs.axis is None:
        raise CantChunk("scan over the flattened tensor")
    if normalize_axis(int(call.attrs.axis), len(shape_of(call))) == out_axis:
        raise CantChunk("chunk axis is scanned over")
    return [flow(out_axis)]
