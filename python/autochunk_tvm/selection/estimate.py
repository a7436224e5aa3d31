"""Memory of a chunk plan, as the build will allocate it (paper §3.4, "memory estimation").

A plan is judged on the module it produces: the plan is lowered (stage 4, cached per region)
and :func:`~autochunk_tvm.static_allocation` replays the target's memory plan through the
runtime allocators. The Relax-level liveness profile is 35-50% below what a build allocates
(kernel workspace, storage the planner cannot share; ``benchmarks/results/memory_agreement``),
so it would accept plans that do not fit; the lowered prediction is within 2% of measurement
for unchunked builds and 3% for chunked plans (``tests/test_autochunk_e2e.py``).

The lowered function keeps the variable names of the high-level bindings it computes (the
legalized call of ``lv7`` still binds ``lv7``; a composite's outputs bind the names of the
region's outputs), which maps each lowered binding back to a position of the high-level
function: the first high-level name at or after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax

from ..analysis.memory import handle
from ..analysis.planned import (
    PER_FUNCTION_PASSES,
    StaticAllocation,
    allocation_of_planned,
    as_target,
    cached_per_function,
    fold_keeping_bindings,
    memory_plan_passes,
    split_at_legalize,
)
from ..lowering import ChunkPlan, ChunkStep, lower_chunk_plan
from ..lowering.lower import LoweringCache
from ..lowering.plan import ordered_steps
from ..search.flow import flat_bindings
from ..search.rewrite import substitute


@dataclasses.dataclass(frozen=True)
class PlanEstimate:
    """The predicted allocation of one plan.

    ``position[j]`` is the high-level binding index that lowered binding ``j`` belongs to;
    ``returns_at`` (the number of high-level bindings) stands for the function's return.
    """

    steps: tuple[ChunkStep, ...]
    allocation: StaticAllocation
    position: tuple[int, ...]
    returns_at: int

    @property
    def peak(self) -> int:
        return self.allocation.peak_bytes

    @property
    def footprint(self) -> tuple[int, ...]:
        return self.allocation.footprint

    def excess(self, budget: int) -> int:
        """Bytes above ``budget`` summed over the lowered bindings: 0 when the plan fits; a
        plan that shrinks or delays any over-budget allocation lowers it."""
        return sum(max(0, held - budget) for held in self.footprint)

    def high_water(self, until: int) -> int:
        """Bytes held at the high point of everything up to high-level binding ``until``."""
        return max(
            (held for pos, held in zip(self.position, self.footprint) if pos <= until),
            default=0,
        )

    def excess_causes(self, budget: int) -> list[int]:
        """Where memory has to be saved: the high-level bindings whose tensors set the sizes
        of the allocations held when the footprint first exceeds ``budget``, largest
        allocation first; empty if the footprint never exceeds the budget.

        The binding that tips the footprint over the budget is rarely the one to chunk. A
        storage is sized for the largest tensor the planner ever places in it and allocated
        at its first use, often much earlier: that tensor's binding is the cause.
        """
        largest = {
            j: max(tensors, key=lambda t: t[1])[0]
            for j, tensors in self.allocation.storage_tensors.items()
            if tensors
        }
        # Below half the peak, the first excess comes too early to hold the large
        # allocations (a budget of a few bytes is exceeded by the first one): look where the
        # footprint crosses half the peak instead.
        threshold = max(budget, self.peak // 2)
        bumps: dict[int, int] = {}
        previous = 0
        for j, held in enumerate(self.footprint):
            if held > previous:
                pos = self.position[largest.get(j, j)]
                # NOTE [positions are high-level]: compared with the high-level count, not
                # the lowered one. After fusion (CUDA) the lowered function is shorter than
                # the high-level one, and every storage sized late in the function was
                # dropped as a cause: ESMFold's transition, whose 10 MiB hidden tensors size
                # two storages from the start, was never searched (38% on CUDA at 30%).
                if pos < self.returns_at:
                    bumps[pos] = max(bumps.get(pos, 0), held - previous)
                if held > threshold:
                    return sorted(bumps, key=lambda p: -bumps[p])
                previous = held
        return []


REWRITE_RESHAPE = "RewriteDataflowReshape"


class PlanEstimator:
    """Predicts the allocation of plans for one function of one module, caching both the
    lowered regions and the estimates."""

    def __init__(
        self,
        mod: tvm.IRModule,
        target: Any,
        *,
        func_name: str = "main",
        bounds: Mapping[str, int] | None = None,
    ) -> None:
        self.mod = mod
        self.target = as_target(target)
        self.func_name = func_name
        self.func: relax.Function = mod[func_name]
        self.bindings = flat_bindings(self.func)
        self.index = {b.var.name: i for i, b in enumerate(self.bindings)}
        self.bounds = dict(bounds) if bounds else None
        self._regions = LoweringCache()
        self._estimates: dict[tuple, PlanEstimate] = {}
        self._anchors = frozenset(handle(b.var) for b in self.bindings)
        self._after_reshapes: list[tvm.transform.Pass] | None = None
        self._base_kernels: set[int] = set()
        self._reshape_kernels: dict[int, tuple[Any, bool]] = {}  # by handle, kept alive
        # NOTE [legalize once]: legalizing the whole module dominates an estimate. The passes
        # up to LegalizeOps run once; each plan's composites are spliced into the result and
        # only the passes after it run per plan. LegalizeOps rewrites binding by binding and
        # keeps every binding's variable, which the splice relies on (checked here).
        with self.target:
            self._front, back = split_at_legalize(memory_plan_passes(self.target))
            back = [
                cached_per_function(p) if p.info.name in PER_FUNCTION_PASSES else p for p in back
            ]
            names = [p.info.name for p in back]
            cut = names.index("FuseOps") + 1 if "FuseOps" in names else 0
            self._back_fused, self._back = back[:cut], back[cut:]
            self._legal = tvm.transform.Sequential(self._front)(mod)
            folded = fold_keeping_bindings(self._legal, self._back_fused, func_name)
        if not self._keeps_bindings(self._legal):
            self._legal = None  # fall back to legalizing every plan in full
        elif folded is not None and self._keeps_bindings(folded):
            self._legal = folded  # NOTE [fold once] (analysis/planned.py)
        if self._legal is not None and self._back and self._back[0].info.name == REWRITE_RESHAPE:
            # NOTE [reshapes once]: on CPU the first pass after LegalizeOps turns the calls of
            # reshape kernels back into views; it asks of every kernel call whether its kernel
            # is a reshape, a quarter of a CPU estimate. It is done once, on the module every
            # plan is spliced into; after that only a plan's own new kernels (its composites)
            # can be reshapes, so a plan without such a kernel skips the pass (it would leave
            # the module as it is: checked on 434 plans). Only where it directly follows
            # LegalizeOps: on GPU it runs after fusion, which it would change.
            with self.target:
                rewritten = self._back[0](self._legal)
            if self._keeps_bindings(rewritten):
                self._legal = rewritten
                self._after_reshapes = self._back[1:]
                self._base_kernels = {handle(f) for f in self._legal.functions.values()}

    def _new_reshape_kernel(self, front: tvm.IRModule) -> bool:
        """Whether ``front`` (a plan spliced into the module whose reshapes were rewritten)
        has a kernel that module lacks and ``RewriteDataflowReshape`` would rewrite a call
        of: a composite of a region that only moves data. None has been seen; the per-plan
        run was a no-op in 434 plans of a GPT, a Llama and a UNet."""
        for func in front.functions.values():
            key = handle(func)
            if key in self._base_kernels or not isinstance(func, tvm.tirx.PrimFunc):
                continue
            if key not in self._reshape_kernels:
                found = bool(relax.analysis.has_reshape_pattern(func))
                self._reshape_kernels[key] = (func, found)
            if self._reshape_kernels[key][1]:
                return True
        return False

    def _keeps_bindings(self, legal: tvm.IRModule) -> bool:
        """Whether every high-level binding is in ``legal``'s function as itself (the same
        variable), in order: what the splice needs (helper bindings between them are
        allowed, NOTE [helper bindings] in lowering/lower.py)."""
        # By handle (NOTE [keys by handle], analysis/memory.py): hashing a variable asks the
        # FFI, 60 ms a check on a 48-block function.
        found = [
            key
            for b in flat_bindings(legal[self.func_name])
            if (key := handle(b.var)) in self._anchors
        ]
        return found == [handle(b.var) for b in self.bindings]

    @property
    def evaluated(self) -> int:
        """Number of distinct plans estimated so far."""
        return len(self._estimates)

    def estimate(self, steps: tuple[ChunkStep, ...] = ()) -> PlanEstimate:
        key = ordered_steps(steps)
        found = self._estimates.get(key)
        if found is not None:
            return found
        with self.target:
            if not key:
                front = self._legal or tvm.transform.Sequential(self._front)(self.mod)
            elif self._legal is not None:
                front = lower_chunk_plan(
                    self.mod,
                    ChunkPlan(key),
                    self.target,
                    cache=self._regions,
                    legalized=self._legal,
                )
            else:
                chunked = lower_chunk_plan(
                    self.mod, ChunkPlan(key), self.target, cache=self._regions
                )
                front = tvm.transform.Sequential(self._front)(chunked)
            fused = tvm.transform.Sequential(self._back_fused)(front)
            named = self._name_by_position(fused, front)
            back = self._back
            if key and self._legal is not None and self._after_reshapes is not None:
                if not self._new_reshape_kernel(front):
                    back = self._after_reshapes
            lowered = tvm.transform.Sequential(back)(named)
        allocation = allocation_of_planned(lowered, self.target, self.func_name, self.bounds)
        estimate = PlanEstimate(
            key, allocation, self._positions(allocation.bindings), len(self.bindings)
        )
        self._estimates[key] = estimate
        return estimate

    def lower(self, steps: tuple[ChunkStep, ...]) -> tvm.IRModule:
        """The high-level module with ``steps`` applied (reusing the lowered regions)."""
        if not steps:
            return self.mod
        key = ordered_steps(steps)
        return lower_chunk_plan(self.mod, ChunkPlan(key), self.target, cache=self._regions)

    def _name_by_position(self, fused: tvm.IRModule, front: tvm.IRModule) -> tvm.IRModule:
        """``fused`` (``front`` after the passes up to fusion) with every binding of the
        function named for the high-level binding it computes, or ``"_"`` when it computes
        none by itself.

        NOTE [names after fusion]: the footprint is read back per high-level binding by name
        (:meth:`_positions`). ``FuseOps`` names each fused call afresh (``lv``, ``lv1``, ...)
        and its inner function's result ``gv``; legalization adds helper bindings under names
        already taken. The names of a fused module thus collide with the high-level ones: on
        CUDA the transformers GPT-2's attention scores read back as its position ids, and
        selection searched there. Here a binding keeps its name only if it is the high-level
        variable itself; a fused call is named for the binding its inner function returns,
        found in ``front`` by its callee and the names of its arguments.
        """
        func = fused[self.func_name]
        if not isinstance(func.body, relax.SeqExpr):
            return fused
        if not self._back_fused and not self._helper_names_collide(func):
            return fused
        anchors = {b.var for b in self.bindings}
        made_by = {}  # (callee, argument names) -> the high-level binding that call computes
        for binding in flat_bindings(front[self.func_name]):
            if binding.var in anchors and isinstance(binding.value, relax.Call):
                made_by.setdefault(_call_key(binding.value, {}), binding.var.name)
        outputs: dict[relax.Var, list[str | None]] = {}  # fused call -> its outputs' names
        env: dict[relax.Expr, relax.Expr] = {}
        blocks = []
        for block in func.body.blocks:
            bindings = []
            for binding in block.bindings[:]:
                if not isinstance(binding, relax.VarBinding):
                    return fused  # a match-cast: leave the names as they are
                var, value = binding.var, binding.value
                name = var.name if var in anchors else None
                if name is None and isinstance(value, relax.Call):
                    if isinstance(value.op, relax.GlobalVar):
                        inner = fused[value.op]
                        if isinstance(inner, relax.Function):
                            args = {p: env.get(a, a) for p, a in zip(inner.params, value.args)}
                            fields = [made_by.get(k) for k in _returned_calls(inner, args)]
                            outputs[var] = fields
                            name = next((f for f in reversed(fields) if f), None)
                        if name is None:
                            name = made_by.get(_call_key(substitute(value, env), {}))
                elif name is None and isinstance(value, relax.TupleGetItem):
                    fields = outputs.get(value.tuple_value, [])
                    name = fields[value.index] if value.index < len(fields) else None
                name = name or "_"
                kind = relax.DataflowVar if isinstance(var, relax.DataflowVar) else relax.Var
                new_var = var if name == var.name else kind(name, var.ty)
                env[var] = new_var
                bindings.append(relax.VarBinding(new_var, substitute(value, env)))
            dataflow = isinstance(block, relax.DataflowBlock)
            blocks.append((relax.DataflowBlock if dataflow else relax.BindingBlock)(bindings))
        body = relax.SeqExpr(blocks, substitute(func.body.body, env))
        renamed = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
        out = tvm.IRModule(dict(fused.functions.items()), attrs=fused.attrs)
        out[self.func_name] = renamed
        return relax.transform.Normalize()(out)

    def _helper_names_collide(self, func: relax.Function) -> bool:
        """Whether a binding of ``func`` that is not a high-level variable has the name of
        one.

        Without fusion (the CPU pipeline) every binding is a high-level variable or a helper
        that legalization or a chunked region added, and a helper is read back as the next
        high-level binding unless its name is one of theirs. Only then must the function be
        renamed: renaming the 17k bindings of a 48-block Evoformer per plan was a seventh of
        its selection, and on CPU no helper name has been seen to collide.
        """
        return any(
            b.var.name in self.index
            for b in flat_bindings(func)
            if handle(b.var) not in self._anchors
        )

    def _positions(self, names: tuple[str, ...]) -> tuple[int, ...]:
        last = len(self.bindings)  # past the end: the function's return
        out = [last] * len(names)
        following = last
        for j in range(len(names) - 1, -1, -1):
            following = self.index.get(names[j], following)
            out[j] = following
        return tuple(out)


def _call_key(call: relax.Call, params: dict) -> tuple:
    """A call by what it calls and the names of what it reads (``params`` maps a fused
    function's parameters to the caller's arguments)."""
    op = call.op.name_hint if isinstance(call.op, relax.GlobalVar) else str(call.op)
    return (op, tuple(_arg_name(a, params) for a in call.args))


def _arg_name(arg: relax.Expr, params: dict):
    arg = params.get(arg, arg)
    if isinstance(arg, relax.Var):
        return arg.name
    if isinstance(arg, relax.Tuple):
        return tuple(_arg_name(f, params) for f in arg.fields)
    return type(arg).__name__


def _returned_calls(func: relax.Function, params: dict) -> list[tuple]:
    """Per value a fused function returns, the key (:func:`_call_key`) of the call that
    computes it, its inner variables read by their original names."""
    if not isinstance(func.body, relax.SeqExpr):
        return []
    values = {b.var: b.value for b in flat_bindings(func)}
    result = func.body.body
    fields = result.fields if isinstance(result, relax.Tuple) else [result]
    keys = []
    for field in fields:
        value = values.get(field)
        while isinstance(value, relax.Var) and value in values:
            value = values[value]
        keys.append(_call_key(value, params) if isinstance(value, relax.Call) else None)
    return keys
