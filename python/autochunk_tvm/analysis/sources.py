"""Where each binding of an imported function came from, in the PyTorch program's terms.

Plots and reports name a binding by what the user wrote (``softmax in blocks.0.attn``), not by
its Relax variable (``lv34``). The importer does not keep that: TVM 0.27's
``from_exported_program`` emits every binding without a span, under a fresh ``lv<N>`` name, and
drops the FX node's ``nn_module_stack`` and ``torch_fn`` metadata. Our frontend therefore records
a :class:`TorchSource` per binding while it converts the graph
(:mod:`autochunk_tvm.frontend.sources`) and carries the table in the IRModule's attributes,
under :data:`SOURCES_ATTR`.

NOTE [sources by name]: the table is keyed by variable name, per function. The names of a
high-level function are unique (the block builder makes them so), and they survive the rewrites
AutoChunk makes: a binding outside a chunked region is re-emitted as itself, and lowering adds
an entry for each composite call (:func:`add_sources`). A lowered module keeps the attribute
but not the meaning of the names (``FuseOps`` names its calls ``lv``, ``lv1``, ... afresh), so an
entry applies only where the binding still computes the Relax op it was recorded for
(``relax_op``); elsewhere the label falls back to the op name. The build's footprint is
labelled through the high-level binding each lowered binding belongs to
(``PlanEstimate.position``), never by the lowered names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

import tvm
from tvm import relax

from .sizes import type_bytes
from .views import is_view_value

# The IRModule attribute holding the tables: {function name: {variable name: record fields}}.
SOURCES_ATTR = "autochunk_tvm.torch_sources"


@dataclasses.dataclass(frozen=True)
class TorchSource:
    """What a Relax binding computes, in the terms of the PyTorch program it was imported from.

    Attributes
    ----------
    op
        The torch function or method the user's code called (``softmax``, ``linear``,
        ``matmul``); for a chunked region, what the region computes
        (``chunked matmul..softmax``).
    module
        Dotted path of the innermost ``nn.Module`` whose ``forward`` made the call
        (``blocks.0.attn``); empty for the model's own ``forward`` or when unknown.
    module_type
        That module's class name (``CausalSelfAttention``); empty when unknown.
    relax_op
        The Relax op of the binding when it was recorded (``relax.nn.softmax``, as
        :attr:`BindingMemory.op <autochunk_tvm.analysis.BindingMemory>` names it): an entry
        applies only to a binding that still computes it (NOTE [sources by name]).
    """

    op: str
    module: str = ""
    module_type: str = ""
    relax_op: str = ""

    def __post_init__(self) -> None:
        if not self.op:
            raise ValueError(f"a TorchSource needs an op name, got {self}")

    @property
    def label(self) -> str:
        """``"softmax in blocks.0.attn"``; the op alone when the module path is unknown."""
        return f"{self.op} in {self.module}" if self.module else self.op


def op_label(op: str) -> str:
    """A label from a binding's op name alone, for bindings with no recorded source:
    ``relax.nn.softmax`` -> ``softmax``, ``call_tir:fused_matmul_add`` -> ``fused_matmul_add``,
    ``tuple_get_item`` unchanged."""
    if ":" in op:
        return op.split(":", 1)[1]
    return op.rsplit(".", 1)[-1]


def sources_table(mod: tvm.IRModule, func_name: str = "main") -> dict[str, TorchSource]:
    """The recorded sources of ``func_name``'s bindings, by variable name (empty if none)."""
    attrs = mod.attrs
    if attrs is None or SOURCES_ATTR not in attrs:
        return {}
    per_function = attrs[SOURCES_ATTR]
    if func_name not in per_function:
        return {}
    return {str(name): _decode(fields) for name, fields in per_function[func_name].items()}


def with_sources(
    mod: tvm.IRModule, func_name: str, sources: Mapping[str, TorchSource]
) -> tvm.IRModule:
    """``mod`` (a new module; ``mod`` itself is not changed) with ``sources`` as the table of
    ``func_name``, replacing any table it had."""
    attrs = mod.attrs
    tables: dict = {}
    if attrs is not None and SOURCES_ATTR in attrs:
        tables = {str(k): v for k, v in attrs[SOURCES_ATTR].items()}
    tables[func_name] = {name: _encode(src) for name, src in sources.items()}
    return mod.with_attr(SOURCES_ATTR, tables)


def add_sources(
    mod: tvm.IRModule, func_name: str, sources: Mapping[str, TorchSource]
) -> tvm.IRModule:
    """``mod`` with ``sources`` added to the table of ``func_name`` (a new module)."""
    return with_sources(mod, func_name, {**sources_table(mod, func_name), **sources})


def binding_sources(
    bindings: Sequence[relax.Binding], ops: Sequence[str], table: Mapping[str, TorchSource]
) -> list[TorchSource | None]:
    """Per binding, its recorded source, or ``None`` where there is none or it does not apply
    (the binding no longer computes the op it was recorded for: NOTE [sources by name]).
    ``ops`` are the bindings' op names as :class:`~autochunk_tvm.analysis.BindingMemory` has
    them."""
    found: list[TorchSource | None] = []
    for binding, op in zip(bindings, ops, strict=True):
        src = table.get(binding.var.name)
        found.append(src if src is not None and src.relax_op == op else None)
    return found


def binding_labels(
    bindings: Sequence[relax.Binding], ops: Sequence[str], table: Mapping[str, TorchSource]
) -> tuple[str, ...]:
    """The user-facing label of every binding: its source's, else its op's."""
    return tuple(
        src.label if src is not None else op_label(op)
        for src, op in zip(binding_sources(bindings, ops, table), ops)
    )


def region_source(
    bindings: Sequence[relax.Binding], sources: Sequence[TorchSource | None]
) -> TorchSource | None:
    """What a region of bindings computes, as one source: its kernels' ops (views left out),
    ``matmul, softmax`` or, past three, the first and last (``matmul..add``; with the largest
    tensor's op between when they are the same, ``matmul..softmax..matmul``), and the deepest
    module that holds all of them (``blocks.0.attn``). ``None`` when none of its bindings has a
    source."""
    known = [(b, s) for b, s in zip(bindings, sources, strict=True) if s is not None]
    if not known:
        return None
    kernels = [(b, s) for b, s in known if not is_view_value(b.value)] or known
    ops = list(dict.fromkeys(s.op for _, s in kernels))  # distinct, in order
    first, last = kernels[0][1].op, kernels[-1][1].op
    if len(ops) <= 3:
        what = ", ".join(ops)
    elif first != last:
        what = f"{first}..{last}"
    else:  # matmul..matmul says little: name the largest tensor made in between
        between = [(b, s) for b, s in kernels if s.op != first]
        middle = max(reversed(between), key=lambda bs: _static_bytes(bs[0]))[1].op
        what = f"{first}..{middle}..{last}"
    module = _common_prefix([s.module for _, s in known])
    types = {s.module_type for _, s in known if s.module == module}
    return TorchSource(
        op=what,
        module=module,
        module_type=types.pop() if len(types) == 1 else "",
    )


def _static_bytes(binding: relax.Binding) -> int:
    size = type_bytes(binding.var.ty)
    return int(size) if isinstance(size, int | tvm.tirx.IntImm) else 0


def _common_prefix(paths: Iterable[str]) -> str:
    split = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for parts in zip(*split):
        if any(part != parts[0] for part in parts):
            break
        common.append(parts[0])
    return ".".join(common)


_INDEX = re.compile(r"\d+")


def merge_layers(labels: Sequence[str]) -> str:
    """One label for the same thing in several layers: labels that differ only in one integer
    of their module path become ``chunked matmul..softmax in blocks.{0..11}.attn`` (a range when
    the integers are consecutive, else a list). Labels that differ otherwise are joined with
    ``"; "``."""
    distinct = list(dict.fromkeys(labels))
    if len(distinct) <= 1:
        return distinct[0] if distinct else ""
    pieces = [_INDEX.split(label) for label in distinct]
    numbers = [_INDEX.findall(label) for label in distinct]
    if all(p == pieces[0] for p in pieces) and all(len(n) == len(numbers[0]) for n in numbers):
        differing = [k for k in range(len(numbers[0])) if len({n[k] for n in numbers}) > 1]
        if len(differing) == 1:
            k = differing[0]
            values = sorted({int(n[k]) for n in numbers})
            if values == list(range(values[0], values[-1] + 1)):
                merged = f"{{{values[0]}..{values[-1]}}}"
            else:
                merged = "{" + ",".join(map(str, values)) + "}"
            parts = [numbers[0][i] if i != k else merged for i in range(len(numbers[0]))]
            out = pieces[0][0]
            for piece, number in zip(pieces[0][1:], parts):
                out += number + piece
            return out
    return "; ".join(distinct)


def _encode(src: TorchSource) -> list[str]:
    return [src.op, src.module, src.module_type, src.relax_op]


def _decode(fields) -> TorchSource:
    op, module, module_type, relax_op = (str(f) for f in fields)
    return TorchSource(op, module, module_type, relax_op)
