"""Converters that replace or extend TVM's ExportedProgram importer for specific ATen ops.

Each converter has the importer's converter signature ``(node, importer) -> relax.Var`` and is
registered in :data:`CONVERTERS` under the ATen overload name the importer uses as key
(``"cumsum.default"``). They route around importer gaps met in real exported models; every
entry says which gap it closes.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
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


# NOTE [accumulation dtype]: TVM accumulates a matmul or convolution in its ``out_dtype``. Torch
# accumulates half-precision products in float32 and rounds the result once; accumulating in
# fp16/bf16 instead loses ~10% of the output scale over a 3x3x64 convolution in bf16. So
# contractions run with a float32 result, cast back to the half type afterwards. (On GPUs the
# cast fuses into the kernel; on CPU builds it costs one float32 buffer per contraction.)
HALF_DTYPES = frozenset({"float16", "bfloat16"})


def accumulation_dtype(dtype: str) -> str:
    """The dtype a contraction producing ``dtype`` should accumulate in."""
    return "float32" if dtype in HALF_DTYPES else dtype


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
    if str(x.ty.dtype) != out_dtype:
        x = importer.block_builder.emit(relax.op.astype(x, out_dtype))
    return importer.block_builder.emit(relax.op.cumsum(x, dim, out_dtype))


@register("slice.Tensor")
def _slice(node, importer) -> relax.Var:
    """``aten.slice`` of a symbolic dim or at a symbolic position, whose length torch proved
    in bounds, keeps that length.

    NOTE [slices within a bound]: TVM's importer slices with ``assume_inbound=False``, so a
    dynamic slice ``mask[:, :, :t]`` of a 1025-row buffer gets the length ``min(t, 1025)``.
    Shape inference cannot prove that equal to ``t``, so the next broadcast (``where(mask,
    -inf, scores)``) loses its shape (``ndim=4`` only): its memory is unknown and chunk flows
    stop there. torch.export records the length it proved from the dims' ranges: when that is
    ``end - start`` exactly (no clamping), the slice is in bounds and is emitted as such.
    Slices of static dims at static positions are left to the importer.
    """
    from torch.fx import Node
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    dim, start, end, step = (list(node.args[1:5]) + [None] * 4)[:4]
    dim, start, step = dim or 0, start or 0, 1 if step is None else step
    val = node.meta.get("val")
    source = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    symbolic = (
        isinstance(start, Node)
        or isinstance(end, Node)
        or (source is not None and not isinstance(source.shape[dim], int))
    )
    if not symbolic or end is None or step != 1 or val is None:
        return importer._slice(node)

    def proved(a):
        return a.meta.get("val") if isinstance(a, Node) else a

    if not statically_known_true(val.shape[dim] == proved(end) - proved(start)):
        return importer._slice(node)

    def bound(a):
        return importer.env[a] if isinstance(a, Node) else a

    x = importer.env[node.args[0]]
    axis = dim % val.dim()  # TVM's dynamic slice needs a non-negative axis
    return importer.block_builder.emit(
        relax.op.strided_slice(x, [axis], [bound(start)], [bound(end)], [1], assume_inbound=True)
    )


@register("addmm.default")
def _addmm(node, importer) -> relax.Var:
    """``beta * input + alpha * (mat1 @ mat2)`` in the dtype torch computes it in.

    NOTE [addmm dtype]: TVM's importer asks the matmul for a float32 result and adds the bias in
    its own dtype, so an fp16 or bf16 ``nn.Linear`` (which decomposes to addmm) fails to
    type-check. We accumulate and add in float32 and round once, as torch does.
    """
    bias, mat1, mat2 = (importer.env[a] for a in node.args[:3])
    alpha = node.kwargs.get("alpha", 1)
    beta = node.kwargs.get("beta", 1)
    dtype = _torch_result_dtype(node)
    acc = accumulation_dtype(dtype)
    emit = importer.block_builder.emit
    result = None
    if alpha != 0:
        result = emit(relax.op.matmul(mat1, mat2, out_dtype=acc))
        if alpha != 1:
            result = emit(relax.op.multiply(result, relax.const(alpha, acc)))
    if beta != 0:
        if str(bias.ty.dtype) != acc:
            bias = emit(relax.op.astype(bias, acc))
        if beta != 1:
            bias = emit(relax.op.multiply(bias, relax.const(beta, acc)))
        result = bias if result is None else emit(relax.op.add(bias, result))
    if str(result.ty.dtype) != dtype:
        result = emit(relax.op.astype(result, dtype))
    return result


@register("convolution.default")
def _convolution(node, importer) -> relax.Var:
    """2-D convolution in the input's dtype; other convolutions go to TVM's converter.

    NOTE [conv dtype]: like addmm, TVM's converter asks for a float32 result and then adds the
    (fp16) bias, which fails to type-check for half-precision models. We accumulate and add the
    bias in float32 and round once (see NOTE [accumulation dtype]).
    """
    x, weight, bias, stride, padding, dilation, transposed, _, groups = (
        list(node.args) + [None] * 9
    )[:9]
    x, weight = importer.env[x], importer.env[weight]
    if transposed or len(weight.ty.shape.values) != 4:
        return importer._convolution(node)  # 1-D/3-D and transposed: importer's own path
    dtype = _torch_result_dtype(node)
    acc = accumulation_dtype(dtype)
    emit = importer.block_builder.emit
    out = emit(
        relax.op.nn.conv2d(
            x,
            weight,
            strides=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            out_dtype=acc,
        )
    )
    if bias is not None:
        b = importer.env[bias]
        if str(b.ty.dtype) != acc:
            b = emit(relax.op.astype(b, acc))
        out = emit(relax.op.add(out, relax.op.reshape(b, (1, -1, 1, 1))))
    if acc != dtype:
        out = emit(relax.op.astype(out, dtype))
    return out


def _in_float32(method: str) -> Converter:
    """A converter running the importer's ``method`` in float32 when the input is bfloat16.

    NOTE [bf16 norms]: TVM's ``layer_norm`` and ``group_norm`` accept only float32/float16 and
    reject bfloat16 at type inference. Torch itself normalizes bf16 tensors in float32 and rounds
    the result, so we do the same: cast the op's bf16 tensor inputs up, run TVM's own converter,
    cast the result back. Other dtypes go straight to TVM's converter.
    """

    def convert(node, importer) -> relax.Var:
        if str(importer.env[node.args[0]].ty.dtype) != "bfloat16":
            return getattr(importer, method)(node)
        emit = importer.block_builder.emit
        saved = {}
        for arg in node.args:
            value = importer.env.get(arg) if hasattr(arg, "meta") else None
            if isinstance(value, relax.Var) and str(getattr(value.ty, "dtype", "")) == "bfloat16":
                saved[arg] = value
                importer.env[arg] = emit(relax.op.astype(value, "float32"))
        try:
            out = getattr(importer, method)(node)
        finally:
            importer.env.update(saved)
        return emit(relax.op.astype(out, "bfloat16"))

    return convert


for _name, _method in [
    ("layer_norm.default", "_layer_norm"),
    ("native_layer_norm.default", "_native_layer_norm"),
]:
    CONVERTERS[_name] = _in_float32(_method)


@register("group_norm.default", "native_group_norm.default")
def _group_norm(node, importer) -> relax.Var:
    """``aten.group_norm`` / ``aten.native_group_norm``, with or without an affine transform.

    NOTE [affine-free group norm]: ``F.group_norm(x, groups)`` exports with ``weight=None,
    bias=None``; TVM's converter hands those ``None``s to ``relax.op.nn.group_norm``, which
    fails with a null-pointer error. A missing weight is ones and a missing bias zeros, as in
    torch. bfloat16 inputs normalize in float32 (NOTE [bf16 norms]).
    """
    args = list(node.args)
    if str(node.target).endswith("native_group_norm.default"):
        # (input, weight, bias, N, C, HxW, group, eps)
        x_node, weight, bias, groups, eps = args[0], args[1], args[2], args[6], args[7]
    else:
        # (input, num_groups, weight=None, bias=None, eps=1e-05, cudnn_enabled=True)
        named = {"weight": None, "bias": None, "eps": 1e-05, **node.kwargs}
        x_node, groups = args[0], args[1]
        weight = args[2] if len(args) > 2 else named["weight"]
        bias = args[3] if len(args) > 3 else named["bias"]
        eps = args[4] if len(args) > 4 else named["eps"]
    emit = importer.block_builder.emit
    x = importer.env[x_node]
    dtype = str(x.ty.dtype)
    compute = "float32" if dtype == "bfloat16" else dtype
    channels = int(x.ty.shape.values[1])

    def operand(arg, fill: float) -> relax.Expr:
        if arg is None:
            return relax.const(np.full((channels,), fill, dtype=compute))
        value = importer.env[arg]
        return emit(relax.op.astype(value, compute)) if str(value.ty.dtype) != compute else value

    if compute != dtype:
        x = emit(relax.op.astype(x, compute))
    out = emit(
        relax.op.nn.group_norm(
            x,
            operand(weight, 1.0),
            operand(bias, 0.0),
            num_groups=int(groups),
            channel_axis=1,
            axes=list(range(2, x.ty.ndim)),
            epsilon=float(eps),
        )
    )
    return emit(relax.op.astype(out, dtype)) if compute != dtype else out


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
        have = str(getattr(out.ty, "dtype", ""))
        if have in _FLOAT_DTYPES and want in _FLOAT_DTYPES and have != want:
            out = importer.block_builder.emit(relax.op.astype(out, want))
        return out

    return wrapped


# ---- a user's converters file ---------------------------------------------------------------

# The name a converters file must give its dict: the same as this module's own table.
CONVERTERS_NAME = "CONVERTERS"

CONVERTERS_FILE_FORMAT = (
    "a Python file that defines CONVERTERS = {'op.overload': fn}, with "
    "fn(node, importer) -> relax.Var, e.g. {'hypot.default': my_hypot}"
)


def load_converters(path: str | os.PathLike) -> dict[str, Converter]:
    """The ``CONVERTERS`` dict of a user's Python file, checked, for ``custom_convert_map``.

    The file is what the command line's ``--converters`` takes: Python source that defines
    ``CONVERTERS = {"op.overload": fn}`` with converters ``fn(node, importer) -> relax.Var``,
    keyed as :data:`CONVERTERS` here is (``"hypot.default"``; ``"aten.hypot.default"`` works too).

    Parameters
    ----------
    path
        The file; any name ending is accepted.

    Returns
    -------
    dict[str, Converter]
        The file's ``CONVERTERS``, as a new dict.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file does not compile, raises when run, or defines no ``CONVERTERS``; the message
        says which, and where.
    TypeError
        Its ``CONVERTERS`` is not a dict of op names to callables; the message names the entry.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"converters file {path!r} {what}; give {CONVERTERS_FILE_FORMAT}")
    # NOTE [converters module]: loaded under a name of its own (so two files never clash) and
    # registered in sys.modules while it runs, as dataclasses and pickling in it expect.
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    name = f"autochunk_tvm_user_converters_{digest}"
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except SyntaxError as err:
        raise ValueError(
            f"converters file {path!r} is not valid Python: {err.msg} at line {err.lineno}"
        ) from err
    except Exception as err:
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == path]
        at = f" at line {lines[-1]}" if lines else ""
        raise ValueError(
            f"converters file {path!r} raised {type(err).__name__}{at} when run: {err}"
        ) from err
    finally:
        sys.modules.pop(name, None)
    table = getattr(module, CONVERTERS_NAME, None)
    if table is None:
        dicts = sorted(k for k, v in vars(module).items() if isinstance(v, dict) and k[0] != "_")
        hint = f" (it defines {', '.join(dicts)}: name the table CONVERTERS)" if dicts else ""
        raise ValueError(
            f"converters file {path!r} defines no CONVERTERS{hint}; give {CONVERTERS_FILE_FORMAT}"
        )
    if not isinstance(table, Mapping):
        raise TypeError(
            f"CONVERTERS in {path!r} is a {type(table).__name__}, not a dict; give "
            f"{CONVERTERS_FILE_FORMAT}"
        )
    for key, fn in table.items():
        if not isinstance(key, str):
            raise TypeError(
                f"CONVERTERS in {path!r} has the key {key!r}: keys are op names as strings, "
                "'op.overload' (e.g. 'hypot.default')"
            )
        if not callable(fn):
            raise TypeError(
                f"CONVERTERS[{key!r}] in {path!r} is a {type(fn).__name__}, not a function "
                "fn(node, importer) -> relax.Var"
            )
    return dict(table)
