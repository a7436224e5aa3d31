"""Record, during import, which torch call and module each Relax binding comes from.

TVM's importer keeps no trace of the FX node a binding was converted from
(docs/architecture.md §6; :mod:`autochunk_tvm.analysis.sources`). :class:`SourceRecorder` wraps
every converter: after a node is converted it notes the variable the conversion returned, with
the node's ``torch_fn`` (the call the user wrote) and its innermost ``nn_module_stack`` entry.
Once the function is built, each binding belongs to the first recorded variable at or after it
(a converter emits its helper bindings, then its result) and the table is stored in the module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax

from ..analysis.memory import binding_op, flat_bindings
from ..analysis.sources import TorchSource, with_sources


def node_source(node: Any) -> TorchSource:
    """The :class:`TorchSource` of an FX node from its metadata (``relax_op`` left empty).

    The op is the function or method named by ``torch_fn`` (``('softmax_1',
    'method_descriptor.softmax')`` -> ``softmax``, ``__invert__`` -> ``invert``); without it,
    the ATen op's name
    (``aten._softmax.default`` -> ``softmax``). The module is the innermost entry of
    ``nn_module_stack``, ``(path, class)``.
    """
    meta = getattr(node, "meta", {}) or {}
    torch_fn = meta.get("torch_fn")
    if torch_fn and len(torch_fn) >= 2:
        op = str(torch_fn[1]).rsplit(".", 1)[-1].strip("_")  # __invert__ -> invert
    else:
        target = getattr(node, "target", None)
        name = getattr(target, "__name__", None) or str(target)
        op = name.split(".")[0].lstrip("_") or name
    module, module_type = "", ""
    stack = meta.get("nn_module_stack")
    if stack:
        path, kind = list(stack.values())[-1]
        module = str(path)
        module_type = (getattr(kind, "__qualname__", None) or str(kind)).rsplit(".", 1)[-1]
    return TorchSource(op=op or "op", module=module, module_type=module_type)


class SourceRecorder:
    """Notes the source of each converted FX node; :meth:`attach` stores the table."""

    def __init__(self) -> None:
        # name of the variable a node's conversion returned -> that node's source
        self._results: dict[str, TorchSource] = {}

    def wrap(self, convert: Callable[..., Any]) -> Callable[..., Any]:
        """``convert`` (a converter, called ``convert(node)`` or ``convert(node, importer)``),
        recording the node's source against the variable it returns."""

        def wrapped(node, *rest):
            out = convert(node, *rest)
            self._record(node, out)
            return out

        return wrapped

    def _record(self, node: Any, out: Any) -> None:
        var = _last_var(out)
        # A conversion that returns an earlier node's variable (a no-op view, a dropout in
        # eval mode) emitted nothing of its own: that variable stays with its first node.
        if var is not None and var.name not in self._results:
            self._results[var.name] = node_source(node)

    def attach(self, mod: tvm.IRModule, func_name: str = "main") -> tvm.IRModule:
        """``mod`` with the table of ``func_name``'s bindings (analysis/sources.py). Bindings
        after the last recorded result (the output tuple) get no entry."""
        table: dict[str, TorchSource] = {}
        pending: list[tuple[str, str]] = []  # (name, relax op) of bindings not yet assigned
        for binding in flat_bindings(mod[func_name]):
            pending.append((binding.var.name, binding_op(binding.value)))
            source = self._results.get(binding.var.name)
            if source is None:
                continue
            for name, op in pending:
                table[name] = dataclasses.replace(source, relax_op=op)
            pending = []
        return with_sources(mod, func_name, table) if table else mod


def _last_var(out: Any) -> relax.Var | None:
    if isinstance(out, relax.Var):
        return out
    if isinstance(out, list | tuple):
        for item in reversed(out):
            var = _last_var(item)
            if var is not None:
                return var
    return None
