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

import dataclasses
from typing import Any

import tvm
from tvm import relax

from .. import console
from ..analysis.memo import StructuralMemo
from ..analysis.memory import binding_op, handle
from ..analysis.planned import as_target
from ..analysis.sources import (
    TorchSource,
    add_sources,
    binding_sources,
    region_source,
    sources_table,
)
from ..search.candidate import WHOLE, CantChunk, ChunkCandidate
from ..search.flow import flat_bindings, trace_region
from ..search.rewrite import substitute
from .composite import CompositeBuilder, Variant
from .plan import ChunkPlan, ChunkPlanError, ChunkStep, ordered_steps
from .recompute import recompute_at_readers
from .region import LoweringError, RegionFunction, region_function
from .stages import legalize_region, walk_stages

COMPOSITE_ATTR = "autochunk.composite"


@dataclasses.dataclass
class LoweringCache:
    """What :func:`lower_chunk_plan` keeps between calls on one module and target: selection
    lowers many plans that share steps. A cache, so mutable; one per module and target.

    Attributes
    ----------
    steps
        The lowered composite and region record of each step, by step and target.
    shapes
        The same, by the region function at chunk shape compared structurally (with the
        extent, chunk length and target): NOTE [alike regions].
    global_vars
        The typed GlobalVar of each composite under each name.
    traced
        Candidates whose chunk flow was checked on this module.
    layouts
        What rewriting a function needs before any plan, by the handles of the function and
        its high-level source (:class:`_Layout`).
    functions
        The bindings of each function plans were checked against and lowered in, by its
        handle (with the function, which keeps the handle its own): read from the FFI once,
        not twice per plan (a tenth of a 4-block Evoformer's estimate).
    """

    steps: dict[tuple[ChunkStep, str], tuple[tvm.tirx.PrimFunc, _Lowered]] = dataclasses.field(
        default_factory=dict
    )
    shapes: StructuralMemo = dataclasses.field(default_factory=StructuralMemo)
    global_vars: dict[tuple[str, tvm.tirx.PrimFunc], relax.GlobalVar] = dataclasses.field(
        default_factory=dict
    )
    traced: set[ChunkCandidate] = dataclasses.field(default_factory=set)
    layouts: dict[tuple[int, int | None], _Layout] = dataclasses.field(default_factory=dict)
    functions: dict[int, tuple[relax.Function, list[relax.Binding]]] = dataclasses.field(
        default_factory=dict
    )

    def bindings_of(self, func: relax.Function) -> list[relax.Binding]:
        key = handle(func)
        if key not in self.functions:
            self.functions[key] = (func, flat_bindings(func))
        return self.functions[key][1]


def _bindings_of(func: relax.Function, cache: LoweringCache | None) -> list[relax.Binding]:
    return flat_bindings(func) if cache is None else cache.bindings_of(func)


def validate_plan(mod: tvm.IRModule, plan: ChunkPlan, cache: LoweringCache | None = None) -> None:
    """Raise :class:`ChunkPlanError` unless every step of ``plan`` applies to ``mod``.

    ``cache``: the caller's :class:`LoweringCache` for ``mod``; a candidate whose chunk flow
    it records as checked is not traced again (those checked here are added). Positions,
    names and overlaps are always checked.
    """
    if not isinstance(plan, ChunkPlan):
        raise ChunkPlanError(f"expected a ChunkPlan, got {type(plan).__name__}")
    taken: dict[str, list[tuple[int, int]]] = {}
    names = {gv.name_hint for gv in mod.get_global_vars()}
    bindings_of: dict[str, list] = {}
    for number, step in enumerate(plan.steps):
        cand = step.candidate
        where = f"plan step {number} ({cand.function}[{cand.start}:{cand.end}])"
        if cand.function not in names or not isinstance(mod[cand.function], relax.Function):
            raise ChunkPlanError(f"{where}: the module has no Relax function {cand.function!r}")
        func = mod[cand.function]
        if cand.function not in bindings_of:
            bindings_of[cand.function] = _bindings_of(func, cache)
        bindings = bindings_of[cand.function]
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
        if cache is None or cand not in cache.traced:
            _check_flow(func, cand, where)
            if cache is not None:
                cache.traced.add(cand)
        extent = cand.extent
        if isinstance(extent, int) and not 1 <= step.chunk_len <= extent:
            raise ChunkPlanError(f"{where}: chunk_len {step.chunk_len} outside [1, {extent}]")
        if step.chunk_len < 1:
            raise ChunkPlanError(f"{where}: chunk_len {step.chunk_len} must be at least 1")
        for lo, hi in taken.get(cand.function, []):
            if cand.start <= hi and lo <= cand.end:
                raise ChunkPlanError(f"{where}: overlaps the region [{lo}, {hi}] of another step")
        taken.setdefault(cand.function, []).append((cand.start, cand.end))


def _check_flow(func, cand: ChunkCandidate, where: str) -> None:
    try:
        traced = trace_region(
            func,
            cand.start,
            cand.end,
            {name: axis.axis for name, axis in cand.outputs},
            function_name=cand.function,
        )
    except CantChunk as err:
        raise ChunkPlanError(f"{where}: the chunk flow does not allow these axes: {err}")
    if _flow(traced) != _flow(cand):
        raise ChunkPlanError(
            f"{where}: the chunk flow does not allow the axes given; the legal flow for "
            f"these outputs is {dict(traced.bindings)}"
        )


def _flow(cand: ChunkCandidate):
    return (cand.bindings, tuple(sorted(cand.inputs)), tuple(sorted(cand.outputs)), cand.extent)


@console.holds_back_native_noise
def lower_chunk_plan(
    mod: tvm.IRModule,
    plan: ChunkPlan,
    target: Any,
    *,
    cache: LoweringCache | None = None,
    legalized: tvm.IRModule | None = None,
) -> tvm.IRModule:
    """A new module with every region of ``plan`` replaced by one chunk-loop composite.

    ``cache`` (a :class:`LoweringCache` the caller keeps) reuses lowered regions, and the
    check of each region's chunk flow, across calls on the same module and target; selection
    lowers many plans that share steps.

    ``legalized``: ``mod`` after ``LegalizeOps`` for ``target``, with every binding's
    variable kept, in order (helper bindings may come between). The composites are then
    spliced into its functions, and the result is the legalized form of the chunked module,
    without legalizing the whole module again (what selection's memory estimates need, many
    times over).

    The plan's recomputed values (``plan.recompute``) are rewritten first
    (:func:`planned_module`); the steps apply to the result.
    """
    tgt = as_target(target)
    if isinstance(plan, ChunkPlan) and plan.recompute and legalized is not None:
        raise ChunkPlanError(
            "legalized= is the legalized form of the module the steps apply to: give the "
            "planned module (planned_module(mod, plan)) and a plan without recompute"
        )
    mod = planned_module(mod, plan)
    validate_plan(mod, plan, cache)
    base = mod if legalized is None else legalized
    functions = dict(base.functions.items())
    taken = {gv.name_hint for gv in functions}
    by_function: dict[str, list[ChunkStep]] = {}
    for step in plan.steps:
        by_function.setdefault(step.candidate.function, []).append(step)
    rewritten = {}
    tag = str(tgt)  # printed once: a target prints through the FFI
    for name, steps in by_function.items():
        func = mod[name]
        bindings = _bindings_of(func, cache)
        lowered = []
        for step in ordered_steps(steps):
            if cache is None:
                composite, region = _lower_region(func, step, tgt, bindings=bindings)
            else:
                key = (step, tag)
                if key not in cache.steps:
                    cache.steps[key] = _lower_region(func, step, tgt, cache, bindings)
                composite, region = cache.steps[key]
            gv = _global_var(composite, f"chunked_{region.outputs[0].var.name}", taken, cache)
            functions[gv] = composite
            taken.add(gv.name_hint)
            lowered.append((step, region, gv))
        if legalized is None:
            rewritten[name] = _rewrite(func, lowered, cache=cache)
        else:
            rewritten[name] = _rewrite(legalized[name], lowered, func, cache)
    out = tvm.IRModule(functions, attrs=base.attrs)
    for name, func in rewritten.items():
        out[name] = func
    out = relax.transform.Normalize()(out)
    if legalized is None:  # a module users see (the estimator's are read by position)
        for name, steps in by_function.items():
            out = _label_composites(mod, out, name, steps)
    return out


def planned_module(mod: tvm.IRModule, plan: ChunkPlan) -> tvm.IRModule:
    """The module whose bindings the positions of ``plan``'s steps refer to: ``mod`` with the
    plan's values recomputed before their readers (``mod`` itself when it has none)."""
    if not isinstance(plan, ChunkPlan):
        raise ChunkPlanError(f"expected a ChunkPlan, got {type(plan).__name__}")
    return recompute_at_readers(mod, plan.recompute) if plan.recompute else mod


def _label_composites(
    mod: tvm.IRModule, out: tvm.IRModule, name: str, steps: list[ChunkStep]
) -> tvm.IRModule:
    """``out`` with a recorded source for each composite call of function ``name``
    (``chunked matmul..add in blocks.0``), when ``mod`` has a table of sources
    (analysis/sources.py, NOTE [sources by name]); ``out`` itself otherwise.

    A call is matched to its step through the bindings that read its results: they bind the
    region's output variables.
    """
    table = sources_table(mod, name)
    if not table:
        return out
    bindings = flat_bindings(mod[name])
    sources = binding_sources(bindings, [binding_op(b.value) for b in bindings], table)
    by_output: dict[str, TorchSource] = {}
    for step in steps:
        cand = step.candidate
        span = slice(cand.start, cand.end + 1)
        found = region_source(bindings[span], sources[span])
        if found is not None:
            for output, _ in cand.outputs:
                by_output[output] = dataclasses.replace(found, op=f"chunked {found.op}")
    added: dict[str, TorchSource] = {}
    composite = tvm.ir.Op.get("relax.call_tir")
    chunked = flat_bindings(out[name])
    for k, binding in enumerate(chunked):
        value = binding.value
        if not (isinstance(value, relax.Call) and value.op.same_as(composite)):
            continue
        callee = out[value.args[0]] if value.args[0] in out.functions else None
        if callee is None or callee.attrs is None or COMPOSITE_ATTR not in callee.attrs:
            continue
        for after in chunked[k + 1 :]:
            reads = any(v.same_as(binding.var) for v in relax.analysis.free_vars(after.value))
            if reads and after.var.name in by_output:
                added[binding.var.name] = dataclasses.replace(
                    by_output[after.var.name], relax_op=binding_op(value)
                )
                break
    return add_sources(out, name, added) if added else out


def _global_var(composite: tvm.tirx.PrimFunc, name: str, taken: set, cache: LoweringCache | None):
    """A GlobalVar for ``composite`` under an unused name, typed with its signature (which
    call_tir requires), reused from ``cache`` for the same function and name."""
    unique, k = name, 0
    while unique in taken:
        k += 1
        unique = f"{name}_{k}"
    key = (unique, composite)
    if cache is not None and key in cache.global_vars:
        return cache.global_vars[key]
    # A builder over an empty module types the GlobalVar; one over the whole module would
    # also hash every function in it to find duplicates, at every call.
    gv = relax.BlockBuilder().add_func(composite, unique)
    if cache is not None:
        cache.global_vars[key] = gv
    return gv


def _lower_region(
    func: relax.Function,
    step: ChunkStep,
    target,
    cache: LoweringCache | None = None,
    bindings: list[relax.Binding] | None = None,
) -> tuple:
    """The composite of ``step`` and what the Relax rewrite needs of it.

    NOTE [alike regions]: the regions of one class (search/classes.py), the attention of
    each of twelve layers, re-emitted at chunk shape are structurally equal functions: their
    weights are parameters, not embedded. Their composite is the same PrimFunc, so it is
    legalized, scheduled and composed once; each region keeps its own record (inputs,
    outputs, hoisted bindings), which is what its call passes.
    """
    cand = step.candidate
    full = region_function(func, cand, step.chunk_len, step.hoist, bindings)
    alike = (cand.extent, step.chunk_len, str(target))
    if cache is not None:
        hit = cache.shapes.get(full.func, *alike)
        if hit is not None:
            composite, low = hit
            return composite, _Lowered(full, low.constants, low.storages)
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
        tail = region_function(func, cand, tail_len, step.hoist, bindings)
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
    # A mark, not a name: alike regions share the composite (the GlobalVar names the region).
    composite = composite.with_attr(COMPOSITE_ATTR, True)
    region = _Lowered(full, full_program.constants, storages)
    if cache is not None:
        cache.shapes.put(full.func, (composite, region), *alike)
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


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What :func:`_rewrite` needs of a function before any plan: its blocks and bindings,
    which high-level binding each belongs to (``owner``, by position in ``func``), each
    high-level binding's group of bindings by its variable's name (``own``), and the map from
    ``source``'s variables to ``func``'s (``env``). The same for every plan, so selection
    keeps it (:class:`LoweringCache`)."""

    func: relax.Function
    source: relax.Function | None
    blocks: tuple[tuple[bool, tuple[relax.Binding, ...]], ...]  # (dataflow?, bindings)
    owner: tuple[int, ...]
    own: dict[str, list[relax.Binding]]
    env: dict[relax.Expr, relax.Expr]

    @classmethod
    def of(cls, func: relax.Function, source: relax.Function | None) -> _Layout:
        blocks = tuple(
            (isinstance(block, relax.DataflowBlock), tuple(block.bindings[:]))
            for block in func.body.blocks[:]
        )
        all_bindings = [b for _, bindings in blocks for b in bindings]
        # NOTE [helper bindings]: legalization may emit helper bindings before the one they
        # serve (under names already taken); each binding of ``func`` belongs to the next
        # binding that is ``source``'s own variable. Without ``source`` every binding is its
        # own.
        if source is None:
            owner = tuple(range(len(all_bindings)))
            return cls(func, None, blocks, owner, {b.var.name: [b] for b in all_bindings}, {})
        # Keyed by handle: a variable read afresh from the FFI is a new Python object, and a
        # dict keyed by variables compares such objects through the FFI (NOTE [keys by
        # handle], analysis/memory.py).
        source_bindings = flat_bindings(source)
        source_vars = {handle(b.var): i for i, b in enumerate(source_bindings)}
        owner = [len(source_vars)] * len(all_bindings)  # trailing helpers: past the end
        following = len(source_vars)
        for j in range(len(all_bindings) - 1, -1, -1):
            following = source_vars.get(handle(all_bindings[j].var), following)
            owner[j] = following
        groups: dict[int, list] = {}
        for binding, index in zip(all_bindings, owner):
            groups.setdefault(index, []).append(binding)
        own = {g[-1].var.name: g for g in groups.values() if handle(g[-1].var) in source_vars}
        params = {p.name: p for p in func.params}
        env = {p: params[p.name] for p in source.params if p.name in params}
        env.update({b.var: own[b.var.name][-1].var for b in source_bindings})
        return cls(func, source, blocks, tuple(owner), own, env)


def _rewrite(
    func: relax.Function,
    lowered: list,
    source: relax.Function | None = None,
    cache: LoweringCache | None = None,
) -> relax.Function:
    """``func`` rebuilt with each lowered region replaced by its composite call; the caller
    normalizes the module it goes into.

    ``source``: the high-level function the regions were lowered from, when ``func`` is its
    legalized form (the same variables, in order, with legalized values and possibly helper
    bindings before them). The regions' inputs and hoisted bindings name ``source``'s
    variables; they are matched to ``func``'s bindings of the same variable.

    NOTE [keep the variables]: every binding outside the regions is kept as it is, with its
    own variable, and each region output keeps its variable too (bound to the composite's
    result, which has the same type). Nothing after a region needs rewriting, so the cost is
    one append per binding, not a substitution of every expression (selection rewrites the
    whole function once per estimated plan). The blocks are made of the bindings directly,
    and only the composite calls are normalized here: re-emitting every binding through a
    BlockBuilder, which also hashed the finished function, was a fifth of an estimate.
    """
    key = (handle(func), None if source is None else handle(source))
    layout = None if cache is None else cache.layouts.get(key)
    if layout is None:
        layout = _Layout.of(func, source)
        if cache is not None:
            cache.layouts[key] = layout  # it holds func and source: the handles stay theirs
    at_start = {step.candidate.start: (low, gv) for step, low, gv in lowered}
    in_region = set()
    for step, _, _ in lowered:
        in_region.update(range(step.candidate.start, step.candidate.end + 1))
    builder = relax.BlockBuilder()
    owner, own = layout.owner, layout.own
    position = 0
    blocks = []
    for dataflow, bindings in layout.blocks:
        kept: list[relax.Binding] = []
        for binding in bindings:
            index = owner[position]
            position += 1
            if index in at_start:
                low, gv = at_start.pop(index)  # before the first binding of the region
                for hoisted in low.region.hoisted:
                    kept += own[hoisted.var.name]
                kept += _composite_bindings(builder, layout.env, low, gv, own, dataflow)
            if index not in in_region:
                kept.append(binding)
        blocks.append(relax.DataflowBlock(kept) if dataflow else relax.BindingBlock(kept))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)


def _composite_bindings(
    builder: relax.BlockBuilder, env, low: _Lowered, gv, own, dataflow: bool
) -> list[relax.Binding]:
    """The bindings that call ``gv``, the composite of region ``low``, and bind the region's
    output variables to its results. Emitted in a block of their own on ``builder``, which
    binds what normalizing them needs bound (an input read as a tuple's field)."""
    if dataflow:
        builder._begin_dataflow_block()
    else:
        builder._begin_binding_block()
    args = [substitute(i.value, env) for i in low.region.inputs] + list(low.constants)
    out_ty = [o.ty for o in low.outputs] + [
        relax.TensorType([size], dtype) for dtype, size in low.storages
    ]
    result = builder.emit(relax.call_tir(gv, args, out_ty), f"chunked_{low.outputs[0].var.name}")
    by_var: dict[relax.Var, dict[int | None, relax.Expr]] = {}
    # call_tir with a single output returns that tensor, not a 1-tuple
    single = len(out_ty) == 1
    for k, output in enumerate(low.outputs):
        value = result if single else relax.TupleGetItem(result, k)
        by_var.setdefault(output.var, {})[output.field] = value
    for var, fields in by_var.items():
        if None in fields:
            value = fields[None]
        else:
            value = relax.Tuple([fields[i] for i in range(len(fields))])
        builder.emit_normalized(relax.VarBinding(own[var.name][-1].var, builder.normalize(value)))
    return list(builder._end_block().bindings)
