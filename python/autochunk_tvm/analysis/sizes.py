"""Byte sizes of Relax values, symbolic or static, and their evaluation at given bounds."""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax, tirx
from tvm.sym import Analyzer

SizeExpr = tvm.ir.expr.Expr | int


def dtype_bytes(dtype: str) -> int:
    """Bytes one element of ``dtype`` occupies in memory (sub-byte types round up)."""
    dt = tvm.runtime.DataType(dtype)
    return max(1, (dt.bits * dt.lanes + 7) // 8)


def type_bytes(ty) -> SizeExpr | None:
    """Bytes of a Relax value of type ``ty``: tensors and tuples of tensors; 0 for shapes,
    scalars and objects; ``None`` when a tensor's shape or dtype is unknown."""
    if isinstance(ty, relax.TensorType):
        dtype = str(ty.dtype)  # a PrimType object in 0.27; "" or "void" when unknown
        if ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr) or dtype in ("", "void"):
            return None
        size: SizeExpr = dtype_bytes(dtype)
        for dim in ty.shape.values:
            size = size * dim
        return size
    if isinstance(ty, relax.TupleType):
        total: SizeExpr = 0
        for field in ty.fields:
            field_size = type_bytes(field)
            if field_size is None:
                return None
            total = total + field_size
        return total
    return 0


def is_zero(size: SizeExpr) -> bool:
    """Whether a size is the constant 0 (a symbolic size is not)."""
    try:
        return int(size) == 0
    except TypeError:
        return False


def symbolic_vars(ty) -> list[tirx.Var]:
    """The shape variables that appear in a Relax type."""
    return list(relax.analysis.tir_vars_in_type(ty))


def input_dims(func: relax.Function) -> dict[str, tirx.Var]:
    """The shape variables of a Relax function's inputs, by name."""
    return {v.name: v for p in func.params for v in symbolic_vars(p.ty)}


def upper_bounds(func: relax.Function) -> dict[str, int]:
    """The function's ``tir_var_upper_bound`` attribute, by shape variable name."""
    attrs = func.attrs
    if attrs is None or "tir_var_upper_bound" not in attrs:
        return {}
    return {str(k): int(v) for k, v in attrs["tir_var_upper_bound"].items()}


def evaluate(size: SizeExpr, bounds: Mapping[str, int]) -> int:
    """Evaluate a byte-size expression with shape variables bound by name.

    Raises
    ------
    ValueError
        If the expression still has free shape variables after binding ``bounds``.
    """
    if isinstance(size, int):
        return size
    if isinstance(size, tirx.IntImm):
        return int(size)
    analyzer = Analyzer()
    for var in free_vars(size):
        if var.name in bounds:
            analyzer.bind(var, tirx.IntImm(str(var.ty.dtype), int(bounds[var.name])))
    result = analyzer.simplify(size)
    if not isinstance(result, tirx.IntImm):
        raise ValueError(
            f"size {size} depends on shape variable(s) without a bound; pass "
            "bounds={name: value} or give the function a 'tir_var_upper_bound' attribute "
            "(torch.export's dynamic_shapes ranges become one)"
        )
    return int(result)


def free_vars(expr: tvm.ir.expr.Expr) -> list[tirx.Var]:
    """The shape variables a size expression uses."""
    # NOTE [no TIR visitor in Python]: TVM 0.27's Python API has no expression visitor, but
    # wrapping the expression in a Relax shape gives us Relax's own free-var analysis for it.
    return list(relax.analysis.tir_vars_in_type(relax.TensorType([expr], "int8")))
