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
