"""Per-op chunk-dimension rules: a registry filled by one module per op family.

A rule answers, for one call and a chunk axis on its output: along which axis (and at what
scale) each argument must be chunked, or that the argument is used whole. It raises
:class:`~..candidate.CantChunk` when the op computes across that axis (a softmax over it, a
reduction of it, a matmul's contraction) or when it cannot prove the flow legal. An op with no
rule is a barrier: the flow stops there; nothing is ever guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

import tvm
from tvm import relax

from ..candidate import CantChunk

# Per argument of the call: None (used whole), or (axis, ratio) where the argument's chunk
# scale is the output's times ``ratio``; a tuple argument (concat, einsum) gets a list of those.
ArgFlow = tuple[int, Fraction] | None
Rule = Callable[[relax.Call, int], Sequence[ArgFlow | list[ArgFlow]]]

RULES: dict[str, Rule] = {}
# Bumped by every registration, so that answers cached during tracing (search/flow.py) from an
# older registry, refusals by a missing rule included, are not reused after a rule is added.
_generation = 0


def generation() -> int:
    """How many times the registry has changed."""
    return _generation


def register(*op_names: str) -> Callable[[Rule], Rule]:
    """Register ``rule`` for the given Relax op names (``"relax.add"``).

    A rule is ``rule(call, out_axis) -> [flow per argument]``: for each argument of ``call``,
    ``flow(axis, ratio)`` (the argument is chunked along ``axis``) or ``None`` (it is used
    whole by every chunk); it raises :class:`~..candidate.CantChunk` when the op computes
    across ``out_axis``. The tutorial ``tutorials/custom_chunk_rule.py`` writes one.

    Examples
    --------
    >>> @register("relax.trunc")  # doctest: +SKIP
    ... def trunc(call, out_axis):
    ...     return [flow(out_axis)]
    """

    def wrap(rule: Rule) -> Rule:
        global _generation
        for name in op_names:
            if name in RULES:
                raise ValueError(f"a chunk rule for {name} is already registered")
            RULES[name] = rule
        _generation += 1
        return rule

    return wrap


def unregister(*op_names: str) -> None:
    """Remove the rules of ``op_names`` (the ops become barriers again); for tests and for
    replacing a rule deliberately: unregister, then register the new one."""
    global _generation
    for name in op_names:
        if name not in RULES:
            raise KeyError(f"no chunk rule registered for {name}")
        del RULES[name]
    _generation += 1


def rule_for(call: relax.Call) -> Rule:
    """The rule of ``call``'s op; :class:`CantChunk` if there is none (a barrier)."""
    op = call.op
    name = op.name if isinstance(op, tvm.ir.Op) else str(op)
    rule = RULES.get(name)
    if rule is None:
        raise CantChunk(f"no chunk rule for {name}")
    return rule


def flow(axis: int, ratio: Fraction | int = 1) -> ArgFlow:
    """The argument is chunked along ``axis`` at the output's scale times ``ratio``."""
    return (axis, Fraction(ratio))


def shape_of(expr: relax.Expr) -> list | None:
    """Shape of a tensor-typed expression as a list of PrimExprs, or None."""
    ty = expr.ty
    if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
        return list(ty.shape.values)
    return None


def static(dim) -> int | None:
    """``dim`` as an int when it is a constant."""
    try:
        return int(dim)
    except (TypeError, ValueError):
        return None


def same_dim(a, b) -> bool:
    """Whether two dims are provably equal (equal constants or the same expression)."""
    sa, sb = static(a), static(b)
    if sa is not None or sb is not None:
        return sa == sb
    try:  # 0.27 exposes only the asserting form of structural equality
        tvm.ir.assert_structural_equal(a, b)
    except ValueError:
        return False
    return True


def normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise CantChunk(f"axis {axis} out of range for rank {ndim}")
    return axis % ndim


# Importing the families fills RULES.
from . import elementwise, manipulate, matmul, nn, reduce  # noqa: F401
