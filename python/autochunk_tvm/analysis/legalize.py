"""``LegalizeOps`` that makes each kernel once: the same pass, for modules of repeated blocks.

NOTE [kernels made once]: ``LegalizeOps`` lowers each high-level call through its TE function
to a PrimFunc, then adds it to the module, where it is found equal to the kernel of an alike
call made before and dropped. A 48-block Evoformer has 17,281 bindings and a few hundred
distinct kernels: every block's calls are made into TE and PrimFuncs and hashed only to be
thrown away, two thirds of the 12 s that the memory estimate of the whole model spends before
its first plan. Here each op's legalization is wrapped: a call whose kernel depends only on
what the key holds (the op, its attributes, the dtypes and static shapes of its tensor
arguments, the values of its shape arguments) is made once, and an alike call gets the
``call_tir`` of that kernel with its own arguments: what ``LegalizeOps`` itself would have
made of it, at the cost of a dict lookup. Any other call (constant or scalar arguments, which
TE may inline; symbolic shapes; a legalization that is not one ``call_tir`` of exactly the
call's own arguments) is legalized as ``LegalizeOps`` does, every time.
``tests/test_memory_analysis.py`` checks the result is the same module, structurally.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax

from .memory import flat_bindings, handle
from .views import op_name

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _static_dims(shape) -> tuple[int, ...] | None:
    dims = []
    for dim in shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        dims.append(int(dim))
    return tuple(dims)


def _arg_key(arg: relax.Expr):
    """What a kernel can depend on of one argument; None when it is not only its type."""
    if isinstance(arg, relax.Var):
        ty = arg.ty
        if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
            return None
        dims = _static_dims(ty.shape)
        return None if dims is None else ("tensor", str(ty.dtype), dims)
    if isinstance(arg, relax.ShapeExpr):
        dims = _static_dims(arg)
        return None if dims is None else ("shape", dims)
    return None


class _ReusingKernels:
    """One op's legalization, reusing the kernel of an alike call (one pass run long)."""

    def __init__(self, default, made: dict) -> None:
        self.default = default
        self.made = made  # key -> [(attrs, GlobalVar, argument order, call attrs, ty_args)]

    def __call__(self, bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        args = call.args[:]
        keys = [_arg_key(a) for a in args]
        if any(k is None for k in keys) or not isinstance(call.ty, relax.TensorType):
            return self.default(bb, call)
        out = call.ty
        if not isinstance(out.shape, relax.ShapeExpr) or _static_dims(out.shape) is None:
            return self.default(bb, call)
        attrs = call.attrs
        key = (
            call.op.name,
            tvm_ffi.structural_hash(attrs) if attrs is not None else None,
            tuple(keys),
        )
        for made_attrs, gv, order, call_attrs, ty_args in self.made.get(key, ()):
            if (attrs is None) == (made_attrs is None) and (
                attrs is None or tvm_ffi.structural_equal(attrs, made_attrs)
            ):
                fields = [args[i] for i in order]
                return relax.Call(_CALL_TIR, [gv, relax.Tuple(fields)], call_attrs, ty_args)
        result = self.default(bb, call)
        order = self._order(result, args)
        if order is not None:
            self.made.setdefault(key, []).append(
                (attrs, result.args[0], order, result.attrs, result.ty_args)
            )
        return result

    @staticmethod
    def _order(result: relax.Expr, args) -> list[int] | None:
        """Which of the call's arguments the kernel takes, in order; None unless ``result`` is
        one ``call_tir`` of a GlobalVar with the call's own variables only."""
        if not (isinstance(result, relax.Call) and result.op.same_as(_CALL_TIR)):
            return None
        call_args = result.args[:]
        if len(call_args) != 2 or not isinstance(call_args[0], relax.GlobalVar):
            return None
        if not isinstance(call_args[1], relax.Tuple):
            return None
        position = {handle(a): i for i, a in enumerate(args) if isinstance(a, relax.Var)}
        order = []
        for field in call_args[1].fields[:]:
            if not isinstance(field, relax.Var) or handle(field) not in position:
                return None
            order.append(position[handle(field)])
        return order


@tvm.transform.module_pass(opt_level=0, name="LegalizeOps")
def legalize_ops_reusing_kernels(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """``relax.transform.LegalizeOps()``, making each distinct kernel once (NOTE [kernels
    made once])."""
    ops = set()
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            ops.update(op_name(b.value) for b in flat_bindings(func))
    ops.discard(None)
    made: dict = {}
    custom = {}
    for name in sorted(ops):
        default = tvm.ir.Op.get(name).get_attr("FLegalize")
        if default is not None:
            custom[name] = _ReusingKernels(default, made)
    return relax.transform.LegalizeOps(custom)(mod)
