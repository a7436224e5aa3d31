"""The bounds of a symbolic function, stated where the build and the runtime read them.

A module chunked for symbolic lengths is planned for their upper bounds (NOTE [symbolic
selection], selection/symbolic.py). Two rewrites make that hold in the built module:

- :func:`with_bounds` states the bounds as the function's ``tir_var_upper_bound``, from which
  ``StaticPlanBlockMemory`` sizes its storages (without it, memory is allocated per call).
- :func:`guard_bounds` makes the function check its lengths against the bounds first. A longer
  input does not fit the storages planned for the bound; unchecked, the VM refuses it deep in
  the call with ``storage allocation failure``, a message that names no dim (or, where a
  length indexes a table, a gather reads out of bounds).
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax, tirx

from ..analysis.sizes import input_dims, upper_bounds

GUARD = "_within_bounds"


def _replaced(mod: tvm.IRModule, func_name: str, func: relax.Function) -> tvm.IRModule:
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out[func_name] = func
    return out


def with_bounds(mod: tvm.IRModule, func_name: str, bounds: Mapping[str, int]) -> tvm.IRModule:
    """``mod`` whose function states ``bounds`` as its ``tir_var_upper_bound`` (merged with the
    bounds it states already); ``mod`` itself when it states them all."""
    func = mod[func_name]
    own = upper_bounds(func)
    if all(own.get(k) == int(v) for k, v in bounds.items()):
        return mod
    merged = {**own, **{k: int(v) for k, v in bounds.items()}}
    return _replaced(mod, func_name, func.with_attr("tir_var_upper_bound", merged))


def guard_bounds(mod: tvm.IRModule, func_name: str, bounds: Mapping[str, int]) -> tvm.IRModule:
    """``mod`` whose function first checks that each symbolic input dim named in ``bounds``
    is within its bound, raising a ``ValueError`` that names the dim and the bound.

    NOTE [bounds check on the host]: the check is a host PrimFunc of TIR asserts, called with
    the dims. Relax's ``assert_op`` would do in Python, but it runs a function that only the
    Python package registers, so the TVM runtime alone (the C++ runner, a deployment) cannot
    load a module that uses it; compiled asserts run anywhere, on every target.
    """
    func = mod[func_name]
    dims = input_dims(func)
    checks = [(dims[name], int(bound)) for name, bound in sorted(bounds.items()) if name in dims]
    body = func.body
    if not checks or not isinstance(body, relax.SeqExpr):
        return mod
    params = [tirx.Var(var.name, var.ty.dtype) for var, _ in checks]
    # TVM 0.27's Python AssertStmt names its first two parameters (kind, condition) but hands
    # them on in that order to a constructor that takes (condition, kind): they go swapped.
    asserts = [
        tirx.AssertStmt(
            param <= tirx.IntImm(param.ty.dtype, bound),
            tvm.ir.StringImm("ValueError"),
            [
                tvm.ir.StringImm(
                    f"{param.name} is above {bound}, the longest length this module was built "
                    f"for; build it again for a larger bound (torch.export.Dim({param.name!r}, "
                    f"max=...) or bounds={{{param.name!r}: ...}})"
                )
            ],
        )
        for param, bound in zip(params, (b for _, b in checks))
    ]
    check = tirx.PrimFunc(params, asserts[0] if len(asserts) == 1 else tirx.SeqStmt(asserts))
    check = check.with_attr("tir.is_host_func", True)
    builder = relax.BlockBuilder(mod)
    gv = builder.add_func(check, f"{func_name}{GUARD}")  # a GlobalVar typed as the function
    out = builder.get()
    call = relax.Call(gv, [relax.prim_value(var) for var, _ in checks])
    blocks = [relax.BindingBlock([relax.VarBinding(relax.Var(GUARD), call)]), *body.blocks]
    guarded = relax.Function(
        func.params, relax.SeqExpr(blocks, body.body), func.ret_ty, func.is_pure, func.attrs
    )
    out[func_name] = guarded
    return relax.transform.Normalize()(out)
