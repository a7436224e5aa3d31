"""Which Relax bindings are views: the one list the memory model, the cost model and the plan
report share.

NOTE [views]: a view reuses its source's storage and launches no kernel. The high-level
reshape-like ops become views once lowered: LegalizeOps turns them into reshape-pattern
PrimFuncs and RewriteDataflowReshape turns those back into ``R.reshape``, which the VM executes
as a view. ``flatten`` is one of them (it legalizes to a reshape). ``permute_dims`` and
``broadcast_to`` are *not*: TVM materialises both (a transpose and a broadcast kernel).
After memory planning, a tensor placed in a planned storage (``alloc_tensor``) and the
``memory.view``/``ensure_zero_offset`` ops are views of their storage.
"""

from __future__ import annotations

import tvm
from tvm import relax

# Ops of high-level Relax that lower to views of their first argument.
RESHAPE_OPS = frozenset({"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"})
# Ops of planned (lowered) Relax that are views of their first argument's storage.
PLANNED_VIEW_OPS = frozenset(
    {"relax.memory.view", "relax.memory.alloc_tensor", "relax.memory.ensure_zero_offset"}
)
VIEW_OPS = RESHAPE_OPS | PLANNED_VIEW_OPS


def op_name(value: relax.Expr) -> str | None:
    """The name of the operator ``value`` calls (``"relax.matmul"``), or None."""
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def is_view_value(value: relax.Expr) -> bool:
    """Whether a bound value launches no kernel and allocates nothing new: a view op, or a
    value that is not a call at all (a tuple, a tuple read, a constant, a variable alias)."""
    if not isinstance(value, relax.Call):
        return True
    return op_name(value) in VIEW_OPS


def is_view(binding: relax.Binding) -> bool:
    """:func:`is_view_value` of the binding's value."""
    return is_view_value(binding.value)


def short_op(binding: relax.Binding) -> str:
    """What a binding computes, for reports: ``matmul`` for ``relax.matmul``, else the kind
    of value (``Tuple``, ``TupleGetItem``)."""
    name = op_name(binding.value)
    return name.removeprefix("relax.") if name else type(binding.value).__name__
