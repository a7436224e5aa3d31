"""Converters that replace or extend TVM's ExportedProgram importer for specific ATen ops.

Each converter has the importer's converter signature ``(node, importer) -> relax.Var`` and is
registered in :data:`CONVERTERS` under the ATen overload name the importer uses as key
(``"cumsum.default"``). They route around importer gaps met in real exported models; every
entry says which gap it closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import relax

Converter = Callable[[Any, Any], relax.Var]

CONVERTERS: dict[str, Converter] = {}


def register(*names: str) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter for the given ATen overload names."""

    def wrap(fn: Converter) -> Converter:
        for name in names:
            CONVERTERS[name] = fn
        return fn

    return wrap


def _torch_result_dtype(node) -> str:
    """The dtype torch.export recorded for ``node``'s output, as a TVM dtype string."""
    val = node.meta.get("val")
    if val is None:
        raise ValueError(f"exported node {node.name} carries no tensor metadata")
    return str(val.dtype).replace("torch.", "")


@register("cumsum.default")
def _cumsum(node, importer) -> relax.Var:
    """``aten.cumsum`` with torch's dtype promotion.

    NOTE [cumsum dtype]: torch sums bool and integer tensors in int64 when no dtype is given
    (``(ids != pad).cumsum(-1)``, as position-id code does). TVM's importer keeps the input dtype,
    so a bool cumsum becomes a bool tensor that fails to legalize and would be wrong anyway. We
    take the result dtype torch recorded for the node and cast the input to it first.
    """
    x = importer.env[node.args[0]]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
    out_dtype = _torch_result_dtype(node)
    if x.ty.dtype != out_dtype:
        x = importer.block_builder.emit(relax.op.astype(x, out_dtype))
    return importer.block_builder.emit(relax.op.cumsum(x, dim, out_dtype))


@register("addmm.default")
def _addmm(node, importer) -> relax.Var:
    """``beta * input + alpha * (mat1 @ mat2)`` in the dtype torch computes it in.

    NOTE [addmm dtype]: TVM's importer always asks the matmul for a float32 result, so an fp16 or
    bf16 ``nn.Linear`` (which decomposes to addmm) fails to type-check when the bias is added.
    The result dtype torch recorded is the dtype of every step here.
    """
    bias, mat1, mat2 = (importer.env[a] for a in node.args[:3])
    alpha = node.kwargs.get("alpha", 1)
    beta = node.kwargs.get("beta", 1)
    dtype = _torch_result_dtype(node)
    emit = importer.block_builder.emit
    result = None
    if alpha != 0:
        result = emit(relax.op.matmul(mat1, mat2, out_dtype=dtype))
        if alpha != 1:
            result = emit(relax.op.multiply(result, relax.const(alpha, dtype)))
    if beta != 0:
        if beta != 1:
            bias = emit(relax.op.multiply(bias, relax.const(beta, dtype)))
        result = bias if result is None else emit(relax.op.add(bias, result))
    return result


@register("convolution.default")
def _convolution(node, importer) -> relax.Var:
    """2-D convolution in the input's dtype; other convolutions go to TVM's converter.

    NOTE [conv dtype]: like addmm, TVM's converter asks for a float32 result and then adds the
    (fp16) bias, which fails to type-check for half-precision models.
    """
    x, weight, bias, stride, padding, dilation, transposed, _, groups = (
        list(node.args) + [None] * 9
    )[:9]
    x, weight = importer.env[x], importer.env[weight]
    if transposed or len(weight.ty.shape.values) != 4:
        return importer._convolution(node)  # 1-D/3-D and transposed: importer's own path
    dtype = _torch_result_dtype(node)
    emit = importer.block_builder.emit
    out = emit(
        relax.op.nn.conv2d(
            x,
            weight,
            strides=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            out_dtype=dtype,
        )
    )
    if bias is not None:
        out = emit(relax.op.add(out, relax.op.reshape(importer.env[bias], (1, -1, 1, 1))))
    return out


_FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def keep_torch_dtype(convert: Callable[[Any], relax.Var], importer) -> Callable[[Any], relax.Var]:
    """Wrap one of TVM's converters so its result has the dtype torch recorded for the node.

    NOTE [half precision]: several of TVM's converters (matmul, mm, bmm, linear, ...) request a
    float32 result regardless of their inputs. For an fp16/bf16 model the next op then mixes
    dtypes and fails. Casting the result back matches torch, which also accumulates half-
    precision matmuls in float32 on CPU before rounding the result.
    """

    def wrapped(node) -> relax.Var:
        out = convert(node)
        val = node.meta.get("val") if hasattr(node, "meta") else None
        if not isinstance(out, relax.Var) or val is None or not hasattr(val, "dtype"):
            return out
        want = str(val.dtype).replace("torch.", "")
        have = getattr(out.ty, "dtype", None)
        if have in _FLOAT_DTYPES and want in _FLOAT_DTYPES and have != want:
            out = importer.block_builder.emit(relax.op.astype(out, want))
        return out

    return wrapped
