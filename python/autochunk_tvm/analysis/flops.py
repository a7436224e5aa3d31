"""Arithmetic work of high-level Relax bindings: the FLOP terms of the selection cost model.

Counts are estimates of the work a legalized kernel does, by op family:

* contractions (``matmul``, ``conv*``, ``attention``): two FLOPs per multiply-add;
* normalizations and softmax: a small constant per output element (they read the input
  twice or three times: mean, variance or max, sum, then the scaled output);
* elementwise arithmetic and activations: one per output element (a few for GELU, whose
  legalized form is a polynomial or an erf);
* reductions: one per input element;
* data movement (reshape, permute, take, concat, broadcast, ...): zero. These ops cost
  memory traffic, not arithmetic; the cost model sees them through its per-node terms.

An unknown op counts as one FLOP per output element: the counts feed a cost model, never a
legality decision, so a rough default is safe here. Symbolic dimensions count at their upper
bound when one is given in ``bounds``, else as 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tvm
from tvm import relax, tirx

# FLOPs per output element of ops that are not contractions.
_PER_OUTPUT: dict[str, int] = {
    "relax.nn.softmax": 5,
    "relax.nn.log_softmax": 6,
    "relax.nn.layer_norm": 8,
    "relax.nn.group_norm": 8,
    "relax.nn.rms_norm": 6,
    "relax.nn.batch_norm": 4,
    "relax.nn.gelu": 8,
    "relax.nn.gelu_tanh": 10,
    "relax.nn.silu": 4,
    "relax.sigmoid": 4,
    "relax.tanh": 4,
    "relax.exp": 2,
    "relax.erf": 4,
    "relax.sin": 2,
    "relax.cos": 2,
    "relax.sqrt": 2,
    "relax.rsqrt": 2,
    "relax.image.resize2d": 4,
}
# Pure data movement: no arithmetic.
_MOVEMENT = frozenset(
    {
        "relax.reshape",
        "relax.permute_dims",
        "relax.expand_dims",
        "relax.squeeze",
        "relax.flatten",
        "relax.broadcast_to",
        "relax.concat",
        "relax.split",
        "relax.take",
        "relax.strided_slice",
        "relax.full",
        "relax.full_like",
        "relax.zeros",
        "relax.ones",
        "relax.zeros_like",
        "relax.ones_like",
        "relax.arange",
        "relax.astype",
        "relax.repeat",
        "relax.tile",
        "relax.layout_transform",
    }
)
_REDUCTIONS = frozenset(
    {"relax.sum", "relax.mean", "relax.max", "relax.min", "relax.prod", "relax.variance"}
)


def _dims(expr_or_ty, bounds: Mapping[str, int] | None) -> list[int] | None:
    ty = expr_or_ty.ty if isinstance(expr_or_ty, relax.Expr) else expr_or_ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    out = []
    for dim in ty.shape.values:
        if isinstance(dim, tirx.IntImm):
            out.append(int(dim))
        elif isinstance(dim, tirx.Var) and bounds and dim.name in bounds:
            out.append(int(bounds[dim.name]))
        else:
            out.append(1)
    return out


def _numel(dims: list[int] | None) -> int:
    return math.prod(dims) if dims else 0


def _output_elements(ty, bounds) -> int:
    if isinstance(ty, relax.TupleType):
        return sum(_output_elements(f, bounds) for f in ty.fields)
    return _numel(_dims(ty, bounds))


def call_flops(call: relax.Call, bounds: Mapping[str, int] | None = None) -> int:
    """Estimated FLOPs of one high-level Relax call (see the module docstring)."""
    op = call.op
    if not isinstance(op, tvm.ir.Op):
        return _output_elements(call.ty, bounds)  # call_tir and friends: unknown work
    name = op.name
    out = _output_elements(call.ty, bounds)
    if name in _MOVEMENT:
        return 0
    if name == "relax.matmul":
        a = _dims(call.args[0], bounds)
        return 2 * out * (a[-1] if a else 1)
    if name.startswith("relax.nn.conv"):
        w = _dims(call.args[1], bounds)  # (O, I / groups, *kernel) in OIHW-like layouts
        return 2 * out * (_numel(w[1:]) if w else 1)
    if name == "relax.nn.attention":
        q = _dims(call.args[0], bounds)  # (B, Sq, H, D)
        k = _dims(call.args[1], bounds)  # (B, Sk, H, D)
        if not q or not k:
            return out
        batch, sq, heads, d = q
        sk = k[1]
        v = _dims(call.args[2], bounds) if len(call.args) > 2 else None
        dv = v[-1] if v else d
        scores = batch * heads * sq * sk
        return 2 * scores * d + 5 * scores + 2 * scores * dv
    if name in _REDUCTIONS:
        return _numel(_dims(call.args[0], bounds))
    return out * _PER_OUTPUT.get(name, 1)


def binding_flops(binding: relax.Binding, bounds: Mapping[str, int] | None = None) -> int:
    """FLOPs of a binding: its call's, or 0 for tuples, tuple reads, constants and vars."""
    value = binding.value
    if isinstance(value, relax.Call):
        return call_flops(value, bounds)
    return 0
