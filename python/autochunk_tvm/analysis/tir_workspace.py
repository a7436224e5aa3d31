"""TIR-internal allocations of a PrimFunc: the workspace a kernel allocates while it runs.

Relax's memory planner sees only the buffers passed to a PrimFunc. A fused PrimFunc that keeps
full-size intermediates (FuseTIR on CPU, where nothing inlines them) allocates them itself, at
run time, through the device's workspace pool. Those bytes are live only during the call, but
they can dominate the peak (docs/architecture.md §4), so the memory analysis adds them at the
call.
"""

from __future__ import annotations

from collections.abc import Iterator

from tvm import tirx

from .memo import StructuralMemo
from .sizes import SizeExpr, dtype_bytes, is_zero

# NOTE [device memory scopes]: only these scopes live in the device's main memory. "shared",
# "local", "warp", "wmma.*" and the like are on-chip on GPUs (registers, SMEM) and bounded by
# hardware, not by sequence length.
GLOBAL_SCOPES = frozenset({"", "global"})

# Attributes of TIR statements that hold child statements.
_CHILD_FIELDS = ("body", "block", "then_case", "else_case", "init")


def _children(stmt) -> Iterator:
    seq = getattr(stmt, "seq", None)
    if seq is not None:
        yield from seq
    for field in _CHILD_FIELDS:
        child = getattr(stmt, field, None)
        if child is not None and not isinstance(child, tirx.Expr):
            yield child


def _allocated_buffers(stmt) -> Iterator[tirx.Buffer]:
    stack = [stmt]
    while stack:
        node = stack.pop()
        yield from getattr(node, "alloc_buffers", ()) or ()
        if isinstance(node, tirx.AllocBuffer):
            yield node.buffer
        stack.extend(reversed(list(_children(node))))


def buffer_scope(buf: tirx.Buffer) -> str:
    return str(buf.scope())


def workspace_bytes(func: tirx.PrimFunc) -> SizeExpr:
    """Bytes of global-scope buffers that ``func`` allocates internally.

    Parameters
    ----------
    func
        A PrimFunc at any stage from legalization up to (not including) TIR lowering.

    Returns
    -------
    int or PrimExpr
        The sum over the function's own ``alloc_buffer`` allocations in global scope. It is an upper
        bound of what the TIR lowering keeps: ``StorageRewrite`` may later merge buffers whose
        lifetimes do not overlap. A symbolic expression when buffer shapes are symbolic.
    """
    total: SizeExpr = 0
    for buf in _global_buffers(func.body):
        total = total + _buffer_bytes(buf)
    return total


def _global_buffers(body) -> list[tirx.Buffer]:
    # Program order (pre-order walk), so a replay allocates in the order the kernel does.
    return [b for b in _allocated_buffers(body) if buffer_scope(b) in GLOBAL_SCOPES]


def _buffer_bytes(buf: tirx.Buffer) -> SizeExpr:
    size: SizeExpr = dtype_bytes(str(buf.dtype))
    for dim in buf.shape:
        size = size * dim
    return size


def _storage_passes() -> list:
    """The default s_tir pipeline (``tvm/s_tir/pipeline.py``) up to ``StorageRewrite``.

    NOTE [exact workspace]: the sum of ``alloc_buffer`` allocations over-counts: ``StorageRewrite``
    shares memory between buffers whose lifetimes do not overlap (it halves the workspace of a
    fused ``multiply -> where`` chain, for example). Running TVM's own passes up to that point
    gives the allocations the built kernel will really make. The list is the 0.27 pipeline,
    pass for pass; passes after ``StorageRewrite`` do not change global allocations. Leaving
    out the ones between (VectorizeLoop among them) once broke on a dlight-scheduled CUDA
    kernel: StorageRewrite refuses a loop still marked vectorized.
    """
    from tvm import s_tir

    return [
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.LiftThreadBinding(),
        s_tir.transform.ManifestSharedMemoryLocalStage(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerAutoCopy(),
        s_tir.transform.UnifyThreadBinding(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.InjectPermutedLayout(),
        s_tir.transform.AnnotateIrregularLoop(),
        s_tir.transform.InjectSoftwarePipeline(),
        s_tir.transform.TransformMmaBufferLayout(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        tirx.transform.BF16ComputeLegalize(),
        tirx.transform.NarrowDataType(32),
        s_tir.transform.LoopPartition(),
        tirx.transform.VectorizeLoop(True),
        s_tir.transform.InjectVirtualThread(),
        s_tir.transform.InjectDoubleBuffer(),
        tirx.transform.StorageRewrite(),
    ]


# NOTE [workspace cache]: selection estimates hundreds of plans of one module; each differs from
# the unchunked module in a few composites, so almost every PrimFunc recurs unchanged. Results
# are kept per (target, function) under the function's structural hash, confirmed by structural
# equality, which makes a repeat cost one hash instead of a TIR lowering.
_cache = StructuralMemo(limit=20000)  # (function, target) -> allocation sizes


def lowered_workspace_allocations(mod, target) -> dict[str, tuple[SizeExpr, ...]]:
    """Global-scope allocations (bytes, in program order) each PrimFunc of ``mod`` makes once
    lowered for ``target``.

    Every PrimFunc has an entry (empty when it allocates nothing); only functions with
    internal allocations are lowered.
    """
    import tvm

    found: dict[str, tuple[SizeExpr, ...]] = {}
    todo: dict = {}
    # Alike regions share one composite under one GlobalVar each (NOTE [alike regions] in
    # lowering/lower.py): a composite new to the cache is lowered once, not once per layer.
    twins: dict[str, str] = {}  # name -> the name of the equal function lowered for it
    pending = StructuralMemo()
    printed = str(target)
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        tag = _tag(func, printed)
        hit = _cache.get(func, tag)
        if hit is not None:
            found[gv.name_hint] = hit
            continue
        first = pending.get(func)
        if first is not None:
            twins[gv.name_hint] = first
        elif is_zero(workspace_bytes(func)):
            _cache.put(func, (), tag)
            found[gv.name_hint] = ()
        else:
            todo[gv] = func
            pending.put(func, gv.name_hint)
    if todo:
        with target:
            lowered = tvm.transform.Sequential(_storage_passes())(
                tirx.transform.BindTarget(target)(tvm.IRModule(todo))
            )
        for gv, func in lowered.functions.items():
            sizes = tuple(_buffer_bytes(b) for b in _global_buffers(func.body))
            source = todo[mod.get_global_var(gv.name_hint)]
            _cache.put(source, sizes, _tag(source, printed))
            found[gv.name_hint] = sizes
    for name, first in twins.items():
        found[name] = found[first]
    return found


def _tag(func: tirx.PrimFunc, target: str) -> tuple:
    """The cache key parts besides the function: the target (printed), and the names of the
    shape variables of its parameters.

    NOTE [variable names in the cache]: structural equality maps a function's own variables
    one to one, so two kernels that differ only in the name of a length (``seq``, ``s75``) are
    equal; but the sizes cached are written in the first one's variables, and a call binds
    them by name. The names are part of the key.
    """
    key = func.__chandle__()
    known = _shape_names.get(key)
    if known is None:
        if len(_shape_names) >= _NAMES_LIMIT:
            _shape_names.clear()
        names = []
        for param in func.params:
            try:
                shape = param.shape  # a buffer parameter (TVM 0.27: a Var of BufferType)
            except AttributeError:
                names.append(param.name)  # a scalar parameter
                continue
            names += [dim.name for dim in shape if isinstance(dim, tirx.Var)]
        known = _shape_names[key] = (func, tuple(names))
    return (target, known[1])


# The names of _tag by the function's handle, with the function (which keeps the handle its
# own). Every plan's module holds the same kernels: reading their parameters through the FFI
# for each plan was a tenth of a CPU estimate, the workspace it looked up a twentieth.
_shape_names: dict[int, tuple[tirx.PrimFunc, tuple[str, ...]]] = {}
_NAMES_LIMIT = 20000
