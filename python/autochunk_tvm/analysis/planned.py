"""What TVM will allocate: the static memory number of a build, before running it.

The high-level profile counts every tensor the graph names. A build allocates something else:
legalized ops and fused PrimFuncs allocate workspace of their own (a softmax keeps its
exponentials; docs/architecture.md §4), fusion removes intermediates,
``StaticPlanBlockMemory`` packs tensors into reusable storages, and the VM's allocators keep
what they freed.
:func:`static_allocation` lowers the module exactly as ``relax.build`` does for the target, up to
memory planning, and replays the plan through models of the two runtime allocators:

* the VM's **pooled allocator** (``memory/pooled_allocator.h``): sizes rounded up to 4 KiB
  pages; a freed buffer goes back to a pool keyed by its exact rounded size and is reused only
  for that size; nothing is returned to the system during a call. A buffer is freed when the
  last VM register naming it is cleared: ``KillAfterLastUse`` clears each storage and tensor
  after its last use, so a dead storage, planned or left to run time
  (``R.builtin.alloc_tensor``), serves a later allocation of its size. A storage some
  never-cleared register still reaches (a tuple nothing reads any more, see
  :func:`pinned_storages`) stays held until the call returns;
* the device's **workspace pool** (``workspace_pool.cc``), which serves TIR-internal
  allocations: a request larger than the cached buffer frees it and allocates the larger one.

The simulated footprint is what a fresh process's peak RSS (CPU) or device memory (CUDA) grows
by during one call, which :func:`autochunk_tvm.measure_peak_memory` measures.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax, tirx
from tvm.ir.expr import GenericConst

from .. import console
from .legalize import legalize_ops_reusing_kernels
from .memo import StructuralMemo
from .memory import (
    handle,
    Liveness,
    MemoryProfile,
    StorageKind,
    analyse_liveness,
    check_module,
    flat_bindings,
    profile_from_liveness,
)
from .sizes import type_bytes
from .tir_workspace import lowered_workspace_allocations
from .views import op_name

PAGE_BYTES = 4096  # PooledAllocator::kDefaultPageSize and kWorkspacePageSize


@dataclasses.dataclass(frozen=True)
class StaticAllocation:
    """Memory a built module allocates during one call of a function (integer bytes).

    Attributes
    ----------
    peak_bytes
        Peak of pooled storage plus TIR workspace during the call: the predicted growth of the
        process's (CPU) or device's (CUDA) memory. Inputs, created before the call, excluded.
    pool_bytes
        Bytes the VM's pooled allocator holds at the end of the call (storages and outputs).
    workspace_bytes
        Largest TIR-internal workspace of one kernel call.
    output_bytes
        Bytes of the call's outputs (inside ``pool_bytes``).
    planned_bytes
        Sum of the storages ``StaticPlanBlockMemory`` planned (before allocator rounding/reuse).
    peak_binding
        Binding of the lowered function at which ``peak_bytes`` is reached.
    target
        The target it was lowered for.
    bindings
        Var names of the lowered function's bindings, in order.
    footprint
        Per binding of the lowered function: the bytes held at its high point (pooled storage
        plus the workspace of the kernel it calls). ``peak_bytes`` is its maximum. The pooled
        part never shrinks during a call, so this is a high-water mark: selection reads in it
        where a budget is first exceeded.
    liveness
        The storages and live intervals the prediction was replayed from; ``profile`` (the
        Relax-level view of them) is made from it when first read.
    function
        The function predicted.
    dead_at_peak
        The storages (indices into ``liveness.storages``) whose tensors are all dead at the
        peak but whose bytes are still held there: freed buffers the pooled allocator keeps
        unused (no later request had their size), and storages a never-cleared variable pins
        (NOTE [pinned storages]).
    """

    peak_bytes: int
    pool_bytes: int
    workspace_bytes: int
    output_bytes: int
    planned_bytes: int
    peak_binding: str
    target: str
    bindings: tuple[str, ...] = ()
    footprint: tuple[int, ...] = ()
    liveness: Liveness | None = dataclasses.field(default=None, repr=False, compare=False)
    function: str = "main"
    dead_at_peak: tuple[int, ...] = ()

    @functools.cached_property
    def profile(self) -> MemoryProfile:
        """Liveness profile of the lowered function (its storages are the planned ones).
        Made when first read: selection estimates hundreds of plans and reads it of few."""
        return profile_from_liveness(self.function, self.liveness)

    @functools.cached_property
    def storage_tensors(self) -> Mapping[int, tuple[tuple[int, int], ...]]:
        """Per planned storage (by the index of its binding): the tensors placed in it, as
        (binding index, bytes). Made when first read, as ``profile`` is: selection reads it
        only of the plans it goes on from."""
        if self.liveness is None:
            return {}
        return _storage_tensors(self.liveness.bindings)

    @property
    def unsized(self) -> tuple[str, ...]:
        """Tensors of the lowered function whose size is not known (counted as 0 bytes)."""
        return tuple(self.liveness.unsized) if self.liveness is not None else ()


def memory_plan_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The passes ``relax.build(mod, target)`` runs, up to and including memory planning.

    NOTE [which pipeline relax.build runs]: in TVM 0.27 ``relax.build`` uses the backend pipeline
    (fusion, dlight schedules) only for GPU targets. For CPU targets it runs the generic
    ``default_build_pipeline``, which legalizes but does not fuse (fusion can drop
    side-effecting packed calls, says its comment). A prediction made on the fused CPU pipeline
    describes a different program from the one that runs; we mirror relax.build exactly.
    """
    if "gpu" in target.keys:
        pipeline = _backend_pipeline_module(target)
        passes = (
            pipeline.library_dispatch_passes(target)
            + pipeline.legalize_passes(target)
            + pipeline.dataflow_lower_passes(target)
            + [relax.transform.StaticPlanBlockMemory()]
        )
    else:
        passes = [
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(),
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
        ]
    # The same module, each distinct kernel made once (NOTE [kernels made once]).
    return [legalize_ops_reusing_kernels if p.info.name == "LegalizeOps" else p for p in passes]


def _backend_pipeline_module(target: tvm.target.Target):
    # docs/architecture.md §6: relax.pipeline.dataflow_lower_passes fails in 0.27; the
    # backend modules work.
    kind = target.kind.name
    if kind == "cuda":
        from tvm.relax.backend.cuda import pipeline
    elif kind == "rocm":
        from tvm.relax.backend.rocm import pipeline
    else:
        from tvm.relax.backend.gpu_generic import pipeline
    return pipeline


def as_target(target: Any) -> tvm.target.Target:
    """Accept a Target, a kind string (``"llvm"``, ``"cuda"``) or a JSON-style dict."""
    if isinstance(target, tvm.target.Target):
        return target
    if target == "cuda":
        # NOTE [cuda arch]: Target("cuda") wants an arch; sm_80 is the oldest we build for.
        return tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    return tvm.target.Target(target)


def split_at_legalize(
    passes: list[tvm.transform.Pass],
) -> tuple[list[tvm.transform.Pass], list[tvm.transform.Pass]]:
    """``passes`` cut after ``LegalizeOps``: what rewrites high-level ops, and the rest."""
    names = [p.info.name for p in passes]
    cut = names.index("LegalizeOps") + 1
    return passes[:cut], passes[cut:]


# Passes right after LegalizeOps that act on a binding the same way whatever the rest of the
# module holds: what they do outside a plan's chunked regions is the same for every plan.
PLAN_INDEPENDENT_PASSES = ("AnnotateTIROpPattern", "FoldConstant")


def fold_keeping_bindings(
    legal: tvm.IRModule, passes: list[tvm.transform.Pass], func_name: str
) -> tvm.IRModule | None:
    """``legal`` after ``passes`` (those of :data:`PLAN_INDEPENDENT_PASSES` that follow
    ``LegalizeOps``), with every binding of ``func_name`` kept, by position and variable: a binding
    the folding removed is bound to the constant it folded to. ``None`` when that cannot be
    done exactly (a folded value no remaining binding reveals, variables the passes re-made).

    NOTE [fold once]: on GPU targets ``FoldConstant`` builds and runs every kernel whose
    inputs are all constants (the transposes of weights): 2.4 s of a 3 s estimate of a
    12-layer GPT. Outside the chunked regions a plan's module is the unchunked one, so that
    work is the same for every plan and is done once here. ``FoldConstant`` drops the bindings
    it folds and writes their constants into the uses; a plan's regions are spliced by
    binding variable, so the bindings are put back, bound to those constants. The
    passes run again after the splice: they propagate the constants (as the build's own fold
    would have) and fold what the composites add.
    """
    wanted = [p for p in passes if p.info.name in PLAN_INDEPENDENT_PASSES]
    if not wanted:
        return legal
    folded = tvm.transform.Sequential(wanted)(legal)
    before, after = legal[func_name], folded[func_name]
    # By variable, not name: legalization's helper bindings may reuse names.
    kept = {b.var: b for b in flat_bindings(after)}
    if not set(kept) <= {b.var for b in flat_bindings(before)}:
        return None  # the passes made variables of their own
    constants: dict[relax.Var, GenericConst] = {}
    for binding in flat_bindings(before):
        if binding.var in kept:
            _reveal(binding.value, kept[binding.var].value, constants)
    _reveal(before.body.body, after.body.body, constants)
    blocks = []
    for block in before.body.blocks:
        bindings = []
        for binding in block.bindings:
            var = binding.var
            if var in kept:
                bindings.append(kept[var])
            elif var in constants:
                bindings.append(relax.VarBinding(var, constants[var]))
            else:  # folded, but nothing left reads it: it stays as it was
                bindings.append(binding)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    func = relax.Function(
        before.params,
        relax.SeqExpr(blocks, after.body.body),
        before.ret_ty,
        before.is_pure,
        before.attrs,
    )
    out = tvm.IRModule(dict(legal.functions.items()), attrs=legal.attrs)
    for gv, value in folded.functions.items():
        if gv.name_hint != func_name:
            out[gv.name_hint] = value
    out[func_name] = func
    return relax.transform.Normalize()(out)


# Passes that rewrite each PrimFunc on its own, whatever else the module holds.
PER_FUNCTION_PASSES = ("ApplyDefaultSchedule",)


def cached_per_function(inner: tvm.transform.Pass) -> tvm.transform.Pass:
    """``inner``, a pass that rewrites each PrimFunc on its own (dlight's
    ``ApplyDefaultSchedule``), run only on PrimFuncs it has not seen: the result for a
    function seen before (structurally equal, same target) is reused.

    NOTE [schedule cache]: a plan's module differs from the unchunked one in a few composites,
    so almost every fused kernel recurs from plan to plan; scheduling them all again was a
    fifth of a CUDA estimate. The cache belongs to the returned pass (one per estimator).
    """
    cache = StructuralMemo()  # (function, target) -> the function scheduled

    @tvm.transform.module_pass(opt_level=0, name=inner.info.name)
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = tvm.target.Target.current()
        tag = str(target) if target is not None else ""
        todo, done = {}, {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            hit = cache.get(func, tag)
            if hit is None:
                todo[gv] = func
            else:
                done[gv.name_hint] = hit
        if todo:
            scheduled = inner(tvm.IRModule(todo))
            for gv, func in todo.items():
                out = scheduled[gv.name_hint]
                cache.put(func, out, tag)
                done[gv.name_hint] = out
        if not done:
            return mod
        out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        for name, func in done.items():
            out[name] = func
        return out

    return run


def _reveal(old: relax.Expr, new: relax.Expr, constants: dict) -> None:
    """Where ``old`` reads a variable and its folded form ``new`` a constant at the same
    place, that constant is the variable's folded value."""
    if isinstance(old, relax.Var) and isinstance(new, GenericConst):
        constants.setdefault(old, new)
    elif isinstance(old, relax.Call) and isinstance(new, relax.Call):
        _reveal_all(old.args, new.args, constants)
    elif isinstance(old, relax.Tuple) and isinstance(new, relax.Tuple):
        _reveal_all(old.fields, new.fields, constants)


def _reveal_all(old, new, constants: dict) -> None:
    if len(old) == len(new):
        for a, b in zip(old, new):
            _reveal(a, b, constants)


def lower_to_memory_plan(mod: tvm.IRModule, target: Any = "llvm") -> tvm.IRModule:
    """Run what ``relax.build`` runs for ``target``, through ``StaticPlanBlockMemory``."""
    tgt = as_target(target)
    if tgt.kind.name not in ("llvm", "c") and "gpu" not in tgt.keys:
        raise ValueError(
            f"cannot predict memory for target kind {tgt.kind.name!r}; use 'llvm' or 'cuda'"
        )
    with tgt:
        return tvm.transform.Sequential(memory_plan_passes(tgt))(mod)


def _round_page(nbytes: int) -> int:
    return -(-nbytes // PAGE_BYTES) * PAGE_BYTES


class WorkspacePoolModel:
    """Replays the device workspace pool (``src/runtime/workspace_pool.cc``) on sizes only.

    The pool keeps freed buffers in a list sorted by size. A request takes the smallest cached
    buffer that fits; if none fits, it frees the *largest* cached buffer and allocates a new
    one of the requested size. Memory held = cached + in use, which is what RSS or device
    memory sees.
    """

    def __init__(self) -> None:
        self.free: list[int] = []  # cached buffer sizes, ascending
        self.held = 0  # bytes currently obtained from the device

    def _alloc(self, nbytes: int) -> int:
        size = _round_page(nbytes) or PAGE_BYTES
        fits = [i for i, cached in enumerate(self.free) if cached >= size]
        if fits:
            return self.free.pop(fits[0])
        if self.free:
            self.held -= self.free.pop()  # the largest cached buffer is released
        self.held += size
        return size

    def _release(self, size: int) -> None:
        self.free.append(size)
        self.free.sort()

    def run_kernel(self, allocations: tuple[int, ...]) -> int:
        """Allocate ``allocations`` in order, free them in reverse; return the bytes held
        at the kernel's high point."""
        taken = [self._alloc(nbytes) for nbytes in allocations if nbytes > 0]
        high = self.held
        for size in reversed(taken):
            self._release(size)
        return high


@console.holds_back_native_noise
def static_allocation(
    mod: tvm.IRModule,
    target: Any = "llvm",
    *,
    func_name: str = "main",
    bounds: Mapping[str, int] | None = None,
) -> StaticAllocation:
    """Predict the memory a build of ``mod`` for ``target`` allocates during one call.

    Parameters
    ----------
    mod
        A high-level Relax module (as imported, or after AutoChunk).
    target
        ``"llvm"``, ``"cuda"``, a dict or a ``tvm.target.Target``.
    func_name
        Entry function.
    bounds
        Values for symbolic shape variables (default: the function's upper bounds).

    Returns
    -------
    StaticAllocation

    Notes
    -----
    With symbolic shapes, ``StaticPlanBlockMemory`` sizes its storages for the upper bounds, so
    they are allocated at that size whatever the input; only tensors left to run-time
    allocation shrink with ``bounds``. A GPU pays for the whole allocation. CPU RSS counts only
    the pages a smaller input touches, so a CPU measurement below the bound is lower than this
    prediction; at the bound the two agree.
    """
    check_module(mod, func_name, "static_allocation")
    tgt = as_target(target)
    return allocation_of_planned(lower_to_memory_plan(mod, tgt), tgt, func_name, bounds)


def allocation_of_planned(
    lowered: tvm.IRModule,
    target: tvm.target.Target,
    func_name: str = "main",
    bounds: Mapping[str, int] | None = None,
) -> StaticAllocation:
    """:func:`static_allocation` of a module already lowered through memory planning."""
    tgt = target
    func = lowered[func_name]
    workspace = lowered_workspace_allocations(lowered, tgt)
    live = analyse_liveness(lowered, func, bounds, workspace)
    n = len(live.bindings)
    allocs_at: dict[int, list[int]] = {}
    frees_at: dict[int, list[int]] = {}
    held = pinned_storages(lowered, func_name, live)
    for s, st in enumerate(live.storages):
        if st.kind is StorageKind.INPUT:
            continue
        allocs_at.setdefault(st.start, []).append(s)
        if st.end < n and s not in held:
            frees_at.setdefault(st.end, []).append(s)

    workspace_pool = WorkspacePoolModel()
    peak, peak_index = 0, -1
    footprint = []
    pool_total = 0  # bytes the pooled allocator got from the device, never given back
    for i, pool_total, _ in _pooled(live, allocs_at, frees_at):
        ws_peak = workspace_pool.run_kernel(live.workspace_allocs[i])
        footprint.append(pool_total + ws_peak)
        if pool_total + ws_peak > peak:
            peak, peak_index = pool_total + ws_peak, i
    dead_at_peak: tuple[int, ...] = ()
    for i, _, cached in _pooled(live, allocs_at, frees_at):
        if i == peak_index:  # replayed once more up to the peak: what the pool caches there
            dead_at_peak = tuple(s for free in cached.values() for s in free) + tuple(
                s for s in held if live.storages[s].start <= i and live.storages[s].end < i
            )
            break
    planned = sum(
        live.sizes[s]
        for s, st in enumerate(live.storages)
        if st.kind is not StorageKind.INPUT
        and live.ops[st.start].startswith("relax.memory.alloc_storage")
    )
    return StaticAllocation(
        peak_bytes=peak,
        pool_bytes=pool_total,
        workspace_bytes=max(live.workspaces, default=0),
        output_bytes=sum(
            live.sizes[s] for s, st in enumerate(live.storages) if st.kind is StorageKind.OUTPUT
        ),
        planned_bytes=planned,
        peak_binding=live.bindings[peak_index].var.name if peak_index >= 0 else "",
        target=str(tgt.kind.name),
        bindings=tuple(b.var.name for b in live.bindings),
        footprint=tuple(footprint),
        liveness=live,
        function=func_name,
        dead_at_peak=dead_at_peak,
    )


def _pooled(live: Liveness, allocs_at: dict, frees_at: dict):
    """The VM's pooled allocator replayed over ``live``'s bindings: per binding, after the
    storages it allocates and before those freed after it, ``(index, bytes got from the
    device so far, the freed storages the pool caches by rounded size)``. The cache is one
    dict, updated as the replay goes on: read it before the next step."""
    pool_total = 0
    free_pool: dict[int, list[int]] = {}  # rounded size -> the storages whose buffers it caches
    for i in range(len(live.bindings)):
        for s in allocs_at.get(i, ()):
            size = _round_page(live.sizes[s])
            if free_pool.get(size):
                free_pool[size].pop()
            else:
                pool_total += size
        yield i, pool_total, free_pool
        for s in frees_at.get(i, ()):
            free_pool.setdefault(_round_page(live.sizes[s]), []).append(s)


def pinned_storages(lowered: tvm.IRModule, func_name: str, live: Liveness) -> frozenset[int]:
    """Storages (indices into ``live.storages``) held until the call returns although dead.

    NOTE [pinned storages]: the VM frees a buffer when no register refers to it any more.
    ``relax.build`` runs ``LowerAllocTensor`` and ``KillAfterLastUse`` after memory planning;
    the second clears the register of every storage and tensor after its last use, but not
    that of a variable nothing uses (it has no last use). Such a variable keeps what it
    reaches alive to the end. The case that matters: a chunked region's multi-output composite
    binds ``chunked = (alloc_a, alloc_b)`` and, once ``CanonicalizeBindings`` has folded the
    field reads into ``alloc_a`` and ``alloc_b`` themselves, no binding reads ``chunked``: both
    storages stay held. Predicting them freed gave 41 MiB for a chunked attention + GELU
    measured at 49 MiB; holding every planned storage instead over-predicted unchunked
    triangle updates by one pair tensor (9%). We hold exactly what a never-cleared variable
    reaches.

    Running the two passes to find those variables cost a quarter of a selection estimate
    (70 ms of 270 on a 4-block Evoformer), so :func:`never_cleared` reads them off the
    bindings the liveness walk already has, as the passes decide them; the passes remain the
    reference (:func:`never_cleared_by_passes`), used where the function has a value the rule
    does not cover; a test checks that both hold the same storages on plans of two models.
    """
    held = never_cleared(live)
    if held is None:
        held = never_cleared_by_passes(lowered, func_name)
    return frozenset(
        s
        for binding in live.bindings
        if handle(binding.var) in held
        for s in live.storages_of(binding.var)
    )


_KILL_OPS = frozenset(
    {"relax.memory.kill_tensor", "relax.memory.kill_storage", "relax.vm.kill_object"}
)
_ALLOC_STORAGE_OPS = frozenset({"relax.memory.alloc_storage", "relax.vm.alloc_storage"})
# Values with scopes of their own, which the rule of never_cleared does not cover (there are
# none after memory planning, bar control flow the function had from the start).
_SCOPED = frozenset({"If", "Function", "SeqExpr"})


def never_cleared(live: Liveness) -> set[int] | None:
    """Handles of the variables of ``live.func`` (planned, not yet through
    ``LowerAllocTensor`` and ``KillAfterLastUse``) whose registers the VM never clears; None
    when a value has a scope of its own (a branch, a nested function).

    The rule is what ``KillAfterLastUse`` does to a function without branches or dataflow
    blocks (those are gone after memory planning). It first canonicalizes the bindings: a
    trivial binding (``y = x``, a ``match_cast`` that keeps the type, or a field read of a
    tuple built in the function, followed back through such bindings) is removed and its
    uses read the value it names. Then every remaining variable with a last use, other than
    the function's result, gets a kill after it. The variables not killed: those nothing
    reads after canonicalization, the result's, and those the function already kills. It
    reads the facts the liveness walk collected (``ops``, ``reads``), and a value only where
    a binding reads a tuple's field or names another variable.
    """
    known: dict[int, relax.Expr] = {}  # alias, tuple and field bindings: the value, resolved
    root: dict[int, int] = {}  # a trivially bound variable -> the one it names
    bound: list[int] = []  # the variables whose bindings remain, in order
    used: set[int] = set()
    killed: set[int] = set()

    def named(key: int) -> int:
        return root.get(key, key)

    for index, binding in enumerate(live.bindings):
        op = live.ops[index]
        if op in _SCOPED:
            return None
        key = handle(binding.var)
        reads = live.reads[index]
        if op in ("alias", "tuple", "tuple_get_item"):
            value = binding.value
            if op == "tuple_get_item":
                tup = value.tuple_value
                while isinstance(tup, relax.Var) and handle(tup) in known:
                    tup = known[handle(tup)]
                if isinstance(tup, relax.Tuple):
                    value = tup.fields[value.index]
            known[key] = value
            if isinstance(value, relax.Var) and (
                not isinstance(binding, relax.MatchCast)
                or tvm.ir.structural_equal(binding.var.ty, value.ty)
            ):
                root[key] = named(handle(value))
                continue  # removed; its uses read the root
        bound.append(key)
        if op in _KILL_OPS:
            killed.update(named(h) for h in reads)
        elif op not in _ALLOC_STORAGE_OPS:  # its arguments are sizes and scopes, not visited
            used.update(named(h) for h in reads)
    func = live.func
    result = func.body.body if isinstance(func.body, relax.SeqExpr) else func.body
    outputs = {named(handle(v)) for v in relax.analysis.free_vars(result)}
    return {key for key in bound if key not in used or key in outputs} - (killed - outputs)


def never_cleared_by_passes(lowered: tvm.IRModule, func_name: str) -> set[int]:
    """:func:`never_cleared` by running ``LowerAllocTensor`` and ``KillAfterLastUse`` and
    reading which variables remain bound and are never killed."""
    cleared_mod = tvm.transform.Sequential(
        [relax.transform.LowerAllocTensor(), relax.transform.KillAfterLastUse()]
    )(lowered)
    # By handle (NOTE [keys by handle], analysis/memory.py): the passes keep the variables.
    remaining: set[int] = set()
    cleared: set[int] = set()
    for binding in flat_bindings(cleared_mod[func_name]):
        remaining.add(handle(binding.var))
        value = binding.value
        if op_name(value) in _KILL_OPS and isinstance(value.args[0], relax.Var):
            cleared.add(handle(value.args[0]))
    return remaining - cleared


def _storage_tensors(bindings) -> dict[int, tuple[tuple[int, int], ...]]:
    alloc_storage = tvm.ir.Op.get("relax.memory.alloc_storage")
    alloc_tensor = tvm.ir.Op.get("relax.memory.alloc_tensor")
    storage_at: dict[int, int] = {}  # by the storage variable's handle
    tensors: dict[int, list[tuple[int, int]]] = {}
    for j, binding in enumerate(bindings):
        value = binding.value
        if not isinstance(value, relax.Call):
            continue
        if value.op.same_as(alloc_storage):
            storage_at[handle(binding.var)] = j
            tensors[j] = []
        elif value.op.same_as(alloc_tensor) and handle(value.args[0]) in storage_at:
            nbytes = type_bytes(binding.var.ty)
            if isinstance(nbytes, tvm.tirx.IntImm):
                nbytes = int(nbytes)
            if isinstance(nbytes, int):
                tensors[storage_at[handle(value.args[0])]].append((j, nbytes))
    return {j: tuple(ts) for j, ts in tensors.items()}
