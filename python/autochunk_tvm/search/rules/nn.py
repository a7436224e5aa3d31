"""Neural-network ops: normalizations, softmax, attention, conv2d."""

from __future__ import annotations

from tvm import relax

from ..candidate import CantChunk
from . import flow, normalize_axis, register, shape_of


@register("relax.nn.softmax", "relax.nn.log_softmax")
def softmax(call: relax.Call, out_axis: int):
    if normalize_axis(int(call.attrs.axis), len(shape_of(call))) == out_axis:
        raise CantChunk("softmax normalizes along the chunk axis")
    return [flow(out_axis)]


def _norm(call: relax.Call, out_axis: int, n_params: int):
    rank = len(shape_of(call))
    if out_axis in {normalize_axis(int(a), rank) for a in call.attrs.axes}:
        raise CantChunk("normalization statistics are taken along the chunk axis")
    return [flow(out_axis)] + [None] * n_params  # scale/shift parameters used whole


@register("relax.nn.layer_norm")
def layer_norm(call: relax.Call, out_axis: int):
    return _norm(call, out_axis, 2)


@register("relax.nn.rms_norm")
def rms_norm(call: relax.Call, out_axis: int):
    return _norm(call, out_axis, 1)


@register("relax.nn.group_norm")
def group_norm(call: relax.Call, out_axis: int):
    rank = len(shape_of(call))
    if out_axis == normalize_axis(int(call.attrs.channel_axis), rank):
        raise CantChunk("group statistics span channels")
    return _norm(call, out_axis, 2)


@register("relax.nn.attention")
def attention(call: relax.Call, out_axis: int):
    """``(B, Sq, H, D) x (B, Sk, H, D) x (B, Sk, H, Dv) -> (B, Sq, H, Dv)``; bias (B, H, Sq, Sk)."""
    q, k, v = call.args[:3]
    bias = call.args[3] if len(call.args) > 3 and shape_of(call.args[3]) is not None else None
    extra = [None] * (len(call.args) - 3)
    if out_axis == 0:  # batch
        flows = [flow(0), flow(0), flow(0)]
        if bias is not None:
            extra[0] = flow(0) if int(shape_of(bias)[0]) != 1 else None
        return flows + extra
    if out_axis == 2:  # heads
        flows = [flow(2), flow(2), flow(2)]
        if bias is not None:
            extra[0] = flow(1) if int(shape_of(bias)[1]) != 1 else None
        return flows + extra
    if out_axis == 1:  # queries
        if call.attrs.causal_mask is not None:
            # NOTE [causal offset]: the mask is aligned to absolute query positions; a chunk of
            # queries would need the mask shifted by its offset, which the op cannot express.
            raise CantChunk("causal attention cannot be chunked along queries as one op")
        if bias is not None:
            extra[0] = flow(2) if int(shape_of(bias)[2]) != 1 else None
        return [flow(1), None, None] + extra
    if out_axis == 3:  # value features
        if bias is not None:
            extra[0] = None
        return [None, None, flow(3)] + extra
    raise CantChunk(f"attention output has no axis {out_axis}")


@register("relax.nn.conv2d")
def conv2d(call: relax.Call, out_axis: int):
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        raise CantChunk(f"conv2d layouts {layouts} are not analysed")
    if out_axis == 0:
        return [flow(0), None]
    if out_axis == 1 and int(attrs.groups) == 1:
        return [None, flow(0)]  # output channels come from weight rows
    # NOTE [conv halo]: a spatial chunk needs a halo of input rows; not expressed yet.
    raise CantChunk("conv2d spatial or grouped-channel chunks need a halo")


@register("relax.image.resize2d")
def resize2d(call: relax.Call, out_axis: int):
    """Resizing is independent per batch item and per channel; spatial axes interpolate."""
    layout = str(call.attrs.layout)
    if layout != "NCHW":
        raise CantChunk(f"resize2d layout {layout} is not analysed")
    if out_axis in (0, 1):
        return [flow(out_axis)] + [None] * (len(call.args) - 1)
    # NOTE [resize halo]: a chunk of output rows reads a (scaled, possibly overlapping) window
    # of input rows; not expressed yet.
    raise CantChunk("resize2d spatial chunks need index arithmetic")
