"""Shape manipulation: permutes, reshapes (with merges and splits), expand/squeeze, broadcast,
slicing, gathers, concat/split and tensor creation."""

from __future__ import annotations

from fractions import Fraction

from tvm import relax

from ..candidate import CantChunk
from . import flow, normalize_axis, register, same_dim, shape_of, static
from .elementwise import broadcast_flows


@register("relax.permute_dims")
def permute_dims(call: relax.Call, out_axis: int):
    rank = len(shape_of(call))
    axes = call.attrs.axes
    order = list(reversed(range(rank))) if axes is None else [int(a) for a in axes]
    return [flow(normalize_axis(order[out_axis], rank))]


def _groups(in_shape: list, out_shape: list) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input and output axes with equal element counts (size-1 axes dropped).

    NOTE [reshape groups]: row-major reshape keeps element order, so the dims split into
    consecutive groups whose products match on both sides. A symbolic dim forms a group only
    with an identical dim on the other side; anything else is not analysed.
    """
    ins = [i for i, d in enumerate(in_shape) if static(d) != 1]
    outs = [j for j, d in enumerate(out_shape) if static(d) != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        di, dj = in_shape[ins[i]], out_shape[outs[j]]
        if static(di) is None or static(dj) is None:
            if not same_dim(di, dj):
                raise CantChunk("reshape of a symbolic dim into other dims")
            groups.append(([ins[i]], [outs[j]]))
            i, j = i + 1, j + 1
            continue
        gi, gj, pi, pj = [ins[i]], [outs[j]], static(di), static(dj)
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(ins) or static(in_shape[ins[i]]) is None:
                    raise CantChunk("reshape groups do not match")
                pi *= static(in_shape[ins[i]])
                gi.append(ins[i])
                i += 1
            else:
                if j >= len(outs) or static(out_shape[outs[j]]) is None:
                    raise CantChunk("reshape groups do not match")
                pj *= static(out_shape[outs[j]])
                gj.append(outs[j])
                j += 1
        groups.append((gi, gj))
    if i != len(ins) or j != len(outs):
        raise CantChunk("reshape groups do not match")
    return groups


def _product(shape: list, axes: list[int]) -> int:
    total = 1
    for a in axes:
        total *= static(shape[a])
    return total


@register("relax.reshape", "relax.flatten")
def reshape(call: relax.Call, out_axis: int):
    """The chunk passes through a merge or split only as the outermost axis of its group; the
    scale changes by the ratio of the elements inside it on either side."""
    in_shape, out_shape = shape_of(call.args[0]), shape_of(call)
    if static(out_shape[out_axis]) == 1:
        raise CantChunk("size-1 axis")
    for gi, gj in _groups(in_shape, out_shape):
        if out_axis not in gj:
            continue
        if out_axis != gj[0]:
            raise CantChunk("chunk axis is an inner factor of a reshape")
        if len(gi) == 1 and len(gj) == 1:
            return [flow(gi[0])] + [None] * (len(call.args) - 1)
        ratio = Fraction(_product(out_shape, gj[1:]), _product(in_shape, gi[1:]))
        return [flow(gi[0], ratio)] + [None] * (len(call.args) - 1)
    raise CantChunk("chunk axis not found in reshape groups")


@register("relax.expand_dims")
def expand_dims(call: relax.Call, out_axis: int):
    rank = len(shape_of(call))
    inserted = {normalize_axis(int(a), rank) for a in call.attrs.axis}
    if out_axis in inserted:
        raise CantChunk("size-1 axis")
    return [flow(out_axis - sum(1 for a in inserted if a < out_axis))]


@register("relax.squeeze")
def squeeze(call: relax.Call, out_axis: int):
    in_shape = shape_of(call.args[0])
    if call.attrs.axis is None:
        removed = {a for a, d in enumerate(in_shape) if static(d) == 1}
    else:
        removed = {normalize_axis(int(a), len(in_shape)) for a in call.attrs.axis}
    kept = [a for a in range(len(in_shape)) if a not in removed]
    return [flow(kept[out_axis])]


@register("relax.broadcast_to", "relax.zeros_like", "relax.ones_like", "relax.full_like")
def broadcast_like(call: relax.Call, out_axis: int):
    return broadcast_flows(call, out_axis)


@register("relax.full", "relax.zeros", "relax.ones")
def creation(call: relax.Call, out_axis: int):
    """No tensor to chunk: the op is re-emitted at chunk shape (lowering rewrites its shape)."""
    return [None] * len(call.args)


@register("relax.arange")
def arange(call: relax.Call, out_axis: int):
    """Its values depend on the position along the axis, which a chunk at chunk shape does not
    know: a chunked arange stops the flow, so it stays outside the region and the region reads
    chunk views of its output."""
    raise CantChunk("a chunked arange would need the chunk's offset")


@register("relax.strided_slice")
def strided_slice(call: relax.Call, out_axis: int):
    rank = len(shape_of(call))
    sliced = {normalize_axis(int(a), rank) for a in call.args[1]}
    if out_axis in sliced:
        raise CantChunk("chunk axis is sliced")
    return [flow(out_axis)] + [None] * (len(call.args) - 1)


@register("relax.take")
def take(call: relax.Call, out_axis: int):
    """``x[..., indices, ...]``: chunks over ``indices`` gather chunks of rows (an embedding
    lookup chunked over tokens); chunks of the other axes slice ``x``."""
    x, indices = call.args[:2]
    rank_x, rank_i = len(shape_of(x)), len(shape_of(indices))
    axis = normalize_axis(int(call.attrs.axis), rank_x) if call.attrs.axis is not None else None
    if axis is None:
        raise CantChunk("take on the flattened tensor")
    if out_axis < axis:
        return [flow(out_axis), None]
    if out_axis < axis + rank_i:
        return [None, flow(out_axis - axis)]
    return [flow(out_axis - rank_i + 1), None]


@register("relax.concat")
def concat(call: relax.Call, out_axis: int):
    rank = len(shape_of(call))
    if normalize_axis(int(call.attrs.axis), rank) == out_axis:
        raise CantChunk("chunk axis is concatenated along")
    return [[flow(out_axis) for _ in call.args[0].fields]]


@register("relax.split")
def split(call: relax.Call, out_axis: int):
    """Every output field is chunked on ``out_axis`` (the flow gives all fields one axis)."""
    rank = len(shape_of(call.args[0]))
    if normalize_axis(int(call.attrs.axis), rank) == out_axis:
        raise CantChunk("chunk axis is split along")
    return [flow(out_axis)]


@register("relax.tril", "relax.triu")
def triangle(call: relax.Call, out_axis: int):
    if out_axis >= len(shape_of(call)) - 2:
        raise CantChunk("a triangular mask depends on absolute row/column positions")
    return [flow(out_axis)] + [None] * (len(call.args) - 1)
