"""The bounds of a symbolic function, stated where the build and the runtime read them.

A module chunked for symbolic lengths is planned for their upper bounds (NOTE [symbolic
selection], selection/symbolic.py). Two rewrites make that hold in the built module:

- :func:`with_bounds` states the bounds as the function's ``tir_var_upper_bound``, from which
  ``StaticPlanBlockMemory`` sizes its storages (without it, memory is allocated per call).
- :func:`guard_bounds` makes the function check its lengths against the bounds first. A longer
  input does not fit the storages planned for the bound; unchecked, the VM refuses it deep in
  the call with ``storage allocation failure``, a message that names no dim.
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax

GUARD = "_within_bounds"


def own_bounds(func: relax.Function) -> dict[str, int]:
    """The function's ``tir_var_upper_bound``, by dim name."""
    attrs = func.attrs
    if attrs is None or "tir_var_upper_bound" not in attrs:
        return {}
    return {str(k): int(v) for k, v in attrs["tir_var_upper_bound"].items()}


def _replaced(mod: tvm.IRModule, func_name: str, func: relax.Function) -> tvm.IRModule:
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out[func_name] = func
    return out


def with_bounds(mod: tvm.IRModule, func_name: str, bounds: Mapping[str, int]) -> tvm.IRModule:
    """``mod`` whose function states ``bounds`` as its ``tir_var_upper_bound`` (merged with the
    bounds it states already); ``mod`` itself when it states them all."""
    func = mod[func_name]
    own = own_bounds(func)
    if all(own.get(k) == int(v) for k, v in bounds.items()):
        return mod
    merged = {**own, **{k: int(v) for k, v in bounds.items()}}
    return _replaced(mod, func_name, func.with_attr("tir_var_upper_bound", merged))


def guard_bounds(mod: tvm.IRModule, func_name: str, bounds: Mapping[str, int]) -> tvm.IRModule:
    """``mod`` whose function first asserts that each symbolic input dim named in ``bounds``
    is within its bound, with a message that names the dim, its value and the bound."""
    func = mod[func_name]
    dims = {v.name: v for p in func.params for v in relax.analysis.tir_vars_in_type(p.ty)}
    checks = [(dims[name], int(bound)) for name, bound in sorted(bounds.items()) if name in dims]
    body = func.body
    if not checks or not isinstance(body, relax.SeqExpr):
        return mod
    guards = []
    for var, bound in checks:
        # The runtime formats the message with str.format: "{}" is the value, and literal
        # braces are doubled.
        message = (
            f"{var.name} = {{}} is above {bound}, the longest length this module was built "
            f"for; build it again for a larger bound (torch.export.Dim({var.name!r}, max=...) "
            f"or bounds={{{{{var.name!r}: ...}}}})"
        )
        call = relax.op.assert_op(
            relax.prim_value(var <= bound), [relax.prim_value(var)], format=message
        )
        guards.append(relax.VarBinding(relax.Var(GUARD), call))
    blocks = [relax.BindingBlock(guards), *body.blocks]
    guarded = relax.Function(
        func.params, relax.SeqExpr(blocks, body.body), func.ret_ty, func.is_pure, func.attrs
    )
    return relax.transform.Normalize()(_replaced(mod, func_name, guarded))
