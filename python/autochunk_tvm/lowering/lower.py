"""Stage 4 of AutoChunk: apply a chunk plan. The only stage that rewrites IR.

Each planned region is replaced, in its Relax function, by::

    <hoisted bindings, computed once>
    res = R.call_tir(composite, (inputs...), out_ty=[outputs..., storages...])
    out_i = res[i]

where ``composite`` is the PrimFunc of :mod:`.composite`. The plan is validated in full
before anything is built; on any error the caller's module is untouched (a new module is
returned on success).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import tvm
from tvm import relax

from ..analysis.planned import as_target
from ..search.candidate import WHOLE, CantChunk, ChunkCandidate
from ..search.flow import flat_bindings, trace_region
from ..search.reference import substitute
from .composite import CompositeBuilder, Variant
from .plan import ChunkPlan, ChunkPlanError, ChunkStep, ordered_steps
from .region import LoweringError, RegionFunction, region_function
from .stages import legalize_region, walk_stages

COMPOSITE_ATTR = "autochunk.composite"


def validate_plan(mod: tvm.IRModule, plan: ChunkPlan) -> None:
    """Raise :class:`ChunkPlanError` unless every step of ``plan`` applies to ``mod``."""
    if not isinstance(plan, ChunkPlan):
        raise ChunkPlanError(f"expected a ChunkPlan, got {type(plan).__name__}")
    taken: dict[str, list[tuple[int, int]]] = {}
    names = {gv.name_hint for gv in mod.get_global_vars()}
    for number, step in enumerate(plan.steps):
        cand = step.candidate
        where = f"plan step {number} ({cand.function}[{cand.start}:{cand.end}])"
        if cand.function not in names or not isinstance(mod[cand.function], relax.Function):
            raise ChunkPlanError(f"{where}: the module has no Relax function {cand.function!r}")
        func = mod[cand.function]
        bindings = flat_bindings(func)
        if cand.end >= len(bindings):
            raise ChunkPlanError(
                f"{where}: the function has {len(bindings)} bindings; the plan was made for "
                "another module (search again on this one)"
            )
        actual = [b.var.name for b in bindings[cand.start : cand.end + 1]]
        planned = [name for name, _ in cand.bindings]
        if actual != planned:
            bad = next(p for p, a in zip(planned, actual) if p != a)
            raise ChunkPlanError(
                f"{where}: names binding {bad!r}, which is not at that place in the function; "
                "the plan was made for another module (search again on this one)"
            )
        try:
            traced = trace_region(
                func,
                cand.start,
                cand.end,
                {name: axis.axis for name, axis in cand.outputs},
                function_name=cand.function,
                bindings=bindings,
            )
        except CantChunk as err:
            raise ChunkPlanError(f"{where}: the chunk flow does not allow these axes: {err}")
        if _flow(traced) != _flow(cand):
            raise ChunkPlanError(
                f"{where}: the chunk flow does not allow the axes given; the legal flow for "
                f"these outputs is {dict(traced.bindings)}"
            )
        extent = cand.extent
        if isinstance(extent, int) and not 1 <= step.chunk_len <= extent:
            raise ChunkPlanError(f"{where}: chunk_len {step.chunk_len} outside [1, {extent}]")
        if step.chunk_len < 1:
            raise ChunkPlanError(f"{where}: chunk_len {step.chunk_len} must be at least 1")
        for lo, hi in taken.get(cand.function, []):
            if cand.start <= hi and lo <= cand.end:
                raise ChunkPlanError(f"{where}: overlaps the region [{lo}, {hi}] of another step")
        taken.setdefault(cand.function, []).append((cand.start, cand.end))


def _flow(cand: ChunkCandidate):
    return (cand.bindings, tuple(sorted(cand.inputs)), tuple(sorted(cand.outputs)), cand.extent)


def lower_chunk_plan(
    mod: tvm.IRModule,
    plan: ChunkPlan,
    target: Any,
    *,
    cache: dict | None = None,
    legalized: tvm.IRModule | None = None,
) -> tvm.IRModule:
    """A new module with every region of ``plan`` replaced by one chunk-loop composite.

    ``cache`` (a dict the caller keeps) reuses lowered regions across calls on the same
    module and target; selection lowers many plans that share steps.

    ``legalized``: ``mod`` after ``LegalizeOps`` for ``target``, with the same bindings by
    position and name. The composites are then spliced into its functions, and the result is
    the legalized form of the chunked module, without legalizing the whole module again (what
    selection's memory estimates need, many times over).
    """
    tgt = as_target(target)
    validate_plan(mod, plan)
    # The BlockBuilder hands out GlobalVars typed with their callee's signature, which
    # call_tir requires; it also picks unused names.
    adder = relax.BlockBuilder(tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs))
    by_function: dict[str, list[ChunkStep]] = {}
    for step in plan.steps:
        by_function.setdefault(step.candidate.function, []).append(step)
    if legalized is not None:
        adder = relax.BlockBuilder(
            tvm.IRModule(dict(legalized.functions.items()), attrs=legalized.attrs)
        )
    rewritten = {}
    for name, steps in by_function.items():
        func = mod[name]
        lowered = []
        for step in ordered_steps(steps):
            if cache is None:
                composite, region = _lower_region(func, step, tgt)
            else:
                key = (name, step, str(tgt))
                if key not in cache:
                    cache[key] = _lower_region(func, step, tgt)
                composite, region = cache[key]
            gv = adder.add_func(composite, f"chunked_{region.outputs[0].var.name}")
            lowered.append((step, region, gv))
        if legalized is None:
            rewritten[name] = _rewrite(name, func, lowered)
        else:
            rewritten[name] = _rewrite(name, legalized[name], lowered, source=func)
    out = adder.get()
    for name, func in rewritten.items():
        out[name] = func
    return relax.transform.Normalize()(out)


def _lower_region(func: relax.Function, step: ChunkStep, target) -> tuple:
    cand = step.candidate
    full = region_function(func, cand, step.chunk_len)
    extent = cand.extent
    tail_len = None
    if isinstance(extent, int):
        if extent % step.chunk_len:
            tail_len = extent % step.chunk_len
    else:
        tail_len = tvm.tirx.Var("tail_len", "int64")
    n_inputs = len(full.inputs)
    full_program = walk_stages(legalize_region(full.func, target), n_inputs, target)
    tail_variant = None
    tail_consts: tuple = ()
    if tail_len is not None:
        tail = region_function(func, cand, tail_len)
        program = walk_stages(legalize_region(tail.func, target), n_inputs, target)
        tail_variant = Variant(program, tail_len if not isinstance(tail_len, int) else None)
        tail_consts = program.constants
    # Constants the legalization kept as kernel arguments are extra inputs; both variants
    # number them after the function parameters, so they must agree.
    if tail_variant is not None and not _same_constants(full_program.constants, tail_consts):
        raise LoweringError("the full and last chunks legalized to different constants")
    inputs = [(p.name, i.ty, i.axis) for p, i in zip(full.func.params, full.inputs)]
    inputs += [(f"const{k}", c.ty, WHOLE) for k, c in enumerate(full_program.constants)]
    outputs = [(o.var.name, o.ty, o.axis) for o in full.outputs]
    builder = CompositeBuilder(inputs, outputs, step.chunk_len)
    composite, storages = builder.build(Variant(full_program), tail_variant)
    composite = composite.with_attr(COMPOSITE_ATTR, cand.outputs[0][0])
    region = _Lowered(full, full_program.constants, storages)
    return composite, region


@dataclasses.dataclass(frozen=True)
class _Lowered:
    """What the Relax rewrite needs of a lowered region."""

    region: RegionFunction
    constants: tuple  # extra composite inputs, after the region function's parameters
    storages: list  # (dtype, elements) of each temporary storage, extra composite outputs

    @property
    def outputs(self):
        return self.region.outputs


def _same_constants(a, b) -> bool:
    return len(a) == len(b) and all(x.same_as(y) for x, y in zip(a, b))


def _rewrite(
    name: str, func: relax.Function, lowered: list, source: relax.Function | None = None
) -> relax.Function:
    """``func`` rebuilt with each lowered region replaced by its composite call.

    ``source``: the high-level function the regions were lowered from, when ``func`` is its
    legalized form (the same bindings, by position and name, with legalized values). The
    regions' inputs and hoisted bindings name ``source``'s variables; they are matched to
    ``func``'s by name.
    """
    at_start = {step.candidate.start: (step, low, gv) for step, low, gv in lowered}
    bb = relax.BlockBuilder()
    env: dict[relax.Expr, relax.Expr] = {}
    same: dict[str, relax.Var] = {}  # name -> source variable, when func is not the source
    if source is not None:
        same = {p.name: p for p in source.params}
        same.update({b.var.name: b.var for b in flat_bindings(source)})
        for param in func.params:
            if param.name in same:
                env[same[param.name]] = param
    own = {b.var.name: b for b in flat_bindings(func)}
    attrs = dict(func.attrs) if func.attrs is not None else None
    private = not (func.attrs and "global_symbol" in func.attrs)
    position = 0
    in_region = set()
    for step, _, _ in lowered:
        in_region.update(range(step.candidate.start, step.candidate.end + 1))

    def emit(var: relax.Var, value: relax.Expr, dataflow: bool) -> None:
        _emit(bb, env, var, substitute(value, env), dataflow)
        if var.name in same:
            env[same[var.name]] = env[var]

    with bb.function(name, list(func.params), attrs=attrs, pure=func.is_pure, private=private):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            with bb.dataflow() if dataflow else contextlib.nullcontext():
                for binding in block.bindings:
                    index = position
                    position += 1
                    if index in at_start:
                        step, low, gv = at_start[index]
                        for hoisted in low.region.hoisted:
                            mine = own[hoisted.var.name]
                            emit(mine.var, mine.value, dataflow)
                        _emit_composite(bb, env, low, gv, dataflow, own, same)
                    if index not in in_region:
                        emit(binding.var, binding.value, dataflow)
        bb.emit_func_output(substitute(func.body.body, env))
    return bb.get()[name]


def _emit(bb, env, var: relax.Var, value: relax.Expr, dataflow: bool) -> None:
    if dataflow and not isinstance(var, relax.DataflowVar):
        env[var] = bb.emit_output(value, var.name)
    else:
        env[var] = bb.emit(value, var.name)


def _emit_composite(bb, env, low: _Lowered, gv, dataflow: bool, own, same) -> None:
    args = [substitute(i.value, env) for i in low.region.inputs] + list(low.constants)
    out_ty = [o.ty for o in low.outputs] + [
        relax.TensorType([size], dtype) for dtype, size in low.storages
    ]
    call = relax.call_tir(gv, args, out_ty)
    result = bb.emit(call, f"chunked_{low.outputs[0].var.name}")
    by_var: dict[relax.Var, dict[int | None, relax.Expr]] = {}
    # call_tir with a single output returns that tensor, not a 1-tuple
    single = len(out_ty) == 1
    for k, out in enumerate(low.outputs):
        value = result if single else relax.TupleGetItem(result, k)
        by_var.setdefault(out.var, {})[out.field] = value
    for var, fields in by_var.items():
        if None in fields:
            value = fields[None]
        else:
            value = relax.Tuple([fields[i] for i in range(len(fields))])
        mine = own[var.name].var
        _emit(bb, env, mine, value, dataflow)
        if var.name in same:
            env[same[var.name]] = env[mine]
