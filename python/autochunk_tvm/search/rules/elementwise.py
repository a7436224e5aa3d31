"""Elementwise ops, unary and binary with numpy broadcasting: the chunk axis passes through.

An operand whose dim along the chunk axis is 1 (or that has no such axis, being of lower rank)
is broadcast: every chunk uses it whole.
"""

from __future__ import annotations

from tvm import relax

from . import flow, register, shape_of, static

UNARY = [
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "ceil",
    "cos",
    "cosh",
    "erf",
    "exp",
    "floor",
    "isfinite",
    "isinf",
    "isnan",
    "log",
    "logical_not",
    "negative",
    "round",
    "rsqrt",
    "sigmoid",
    "sign",
    "sin",
    "sinh",
    "sqrt",
    "square",
    "tan",
    "tanh",
    "bitwise_not",
    "astype",
    "clip",
    "nn.relu",
    "nn.gelu",
    "nn.gelu_tanh",
    "nn.silu",
    "nn.leakyrelu",
    "nn.softplus",
    "nn.selu",
]
BINARY = [
    "add",
    "subtract",
    "multiply",
    "divide",
    "floor_divide",
    "power",
    "maximum",
    "minimum",
    "floor_mod",
    "mod",
    "equal",
    "not_equal",
    "less",
    "less_equal",
    "greater",
    "greater_equal",
    "logical_and",
    "logical_or",
    "logical_xor",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "where",
]


def broadcast_flows(call: relax.Call, out_axis: int):
    """Map the output axis onto each tensor argument under right-aligned broadcasting."""
    out_shape = shape_of(call)
    out_rank = len(out_shape)
    flows = []
    for arg in call.args:
        shape = shape_of(arg) if isinstance(arg.ty, relax.TensorType) else None
        if shape is None:
            flows.append(None)
            continue
        in_axis = out_axis - (out_rank - len(shape))
        if in_axis < 0 or static(shape[in_axis]) == 1:
            flows.append(None)  # broadcast along the chunk axis: used whole
        else:
            flows.append(flow(in_axis))
    return flows


register(*(f"relax.{name}" for name in UNARY + BINARY))(broadcast_flows)
