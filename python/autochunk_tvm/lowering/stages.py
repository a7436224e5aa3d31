"""Step 2 of lowering: the region function legalized and scheduled as the target's build would.

The passes are the ones ``relax.build`` runs for the target up to (not including) dataflow
lowering: on CPU ``LegalizeOps`` (TVM 0.27's CPU build does not fuse), on GPUs the backend's
library dispatch and legalization passes, i.e. LegalizeOps, FuseOps, FuseTIR and the same dlight
rules. Every per-chunk kernel is therefore the kernel the unchunked build would make for a
tensor of chunk shape; on CPU, each elementwise kernel's loop nest is then fused into one loop
(NOTE [small constant loop nests]: LLVM otherwise unrolls small nests completely).

The result is walked into *stages*: one per ``call_tir``, with each tensor it touches classified
as a region input, a region output or a chunk-sized temporary. Reshapes of temporaries become
aliases (no kernel, as ``RewriteDataflowReshape`` makes them views in the normal build).
"""

from __future__ import annotations

import dataclasses

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx

from ..analysis.planned import memory_plan_passes
from .region import LoweringError


def stage_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The passes ``relax.build`` runs for ``target`` before lowering dataflow: legalization,
    and on GPUs fusion and dlight scheduling."""
    passes = memory_plan_passes(target)
    cut = next(
        i
        for i, p in enumerate(passes)
        if p.info.name in ("RewriteDataflowReshape", "ToNonDataflow")
    )
    return passes[:cut]


def fuse_elementwise_nests(prim: tirx.PrimFunc) -> tirx.PrimFunc:
    """``prim`` with the perfectly nested loops of each all-spatial block fused into one loop.

    NOTE [small constant loop nests]: at chunk shape a CPU kernel's loop nest has small
    constant extents (e.g. 21 x 512 instead of 256 x 512). LLVM's O3 pipeline then fully
    unrolls the vectorized inner loop and the outer one into straight-line code; on an x86
    target without native fp16 (plain ``llvm`` is generic x86-64, no F16C) every
    ``<8 x half>`` op becomes eight promote/truncate libcalls, and instruction selection and
    register allocation grow about quadratically with that code: one chunk composite of a
    small fp16 GPT took 200 s to JIT against 1 s for the whole unchunked model. One loop of
    21 * 512 iterations is vectorized but not fully unrolled. Fusing only spatial blocks
    (elementwise, broadcast, transpose) is always legal and leaves reductions as they are.

    NOTE [symbolic nests are not fused]: a nest with a symbolic extent (the key length of a
    chunk of attention scores, under a dynamic sequence length) is left as it is. LLVM cannot
    unroll it anyway, and a fused loop recovers each index by dividing by the run-time extent,
    at every element, where a constant divisor becomes a multiply: the zoo GPT's chunk loops
    ran 7-9% slower than the same plan on static shapes (2048 tokens, 2 cores); left unfused,
    as fast as the unchunked build.
    """
    sch = s_tir.Schedule(tvm.IRModule({"main": prim}))
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except (s_tir.ScheduleError, ValueError):  # no root block: nothing to fuse
        return prim
    for rv in blocks:
        block = sch.get(rv)
        if not block.iter_vars or any(
            iv.iter_type != tirx.IterVar.DataPar for iv in block.iter_vars
        ):
            continue
        loops = sch.get_loops(rv)
        if len(loops) < 2:
            continue
        # A nest with a symbolic extent is not unrolled; fused, its indices would be divided
        # by that run-time extent at every element (NOTE [symbolic nests are not fused]).
        if any(not isinstance(sch.get(loop).extent, tirx.IntImm) for loop in loops):
            continue
        try:
            sch.fuse(*loops)
        except s_tir.ScheduleError:  # not a perfect nest: left as it is
            pass
    return sch.mod["main"]


def legalize_region(func: relax.Function, target: tvm.target.Target) -> tvm.IRModule:
    """``func`` (the region at chunk shape) legalized and scheduled for ``target``; on CPU
    each kernel's spatial loop nests fused (NOTE [small constant loop nests])."""
    mod = tvm.IRModule({"region": func})
    try:
        with target:
            mod = tvm.transform.Sequential(stage_passes(target))(mod)
    except RuntimeError as err:  # TVM's errors (tvm.error.InternalError is one)
        raise LoweringError(f"legalizing the chunk region for {target.kind.name} failed: {err}")
    if "gpu" not in target.keys:
        for gv, prim in list(mod.functions.items()):
            if isinstance(prim, tirx.PrimFunc):
                mod[gv] = fuse_elementwise_nests(prim)
    return mod


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor the stages touch: region input/output ``index``, or temporary ``index``."""

    kind: str  # "input" | "output" | "temp"
    index: int


@dataclasses.dataclass(frozen=True)
class Stage:
    """One kernel call: the scheduled PrimFunc, its buffer arguments (inputs then outputs, in
    parameter order) and the values of its scalar parameters."""

    name: str
    prim: tirx.PrimFunc
    args: tuple[Tensor, ...]
    scalars: tuple[tvm.ir.PrimExpr, ...]


@dataclasses.dataclass(frozen=True)
class StageProgram:
    """The stages of one region function, and its temporaries.

    ``temps[i]`` is the type of temporary ``i``; ``owner[i]`` the temporary whose storage it
    uses (itself, or the source of a reshape it aliases). ``constants`` are extra region inputs
    (constants the legalization left as kernel arguments), numbered after the function's
    parameters.
    """

    stages: tuple[Stage, ...]
    temps: tuple[relax.TensorType, ...]
    owner: tuple[int, ...]
    constants: tuple[relax.Expr, ...]

    def live_ranges(self) -> dict[int, tuple[int, int]]:
        """First and last stage touching each storage owner's memory (through any alias)."""
        ranges: dict[int, tuple[int, int]] = {}
        for index, stage in enumerate(self.stages):
            for tensor in stage.args:
                if tensor.kind != "temp":
                    continue
                root = self.owner[tensor.index]
                lo, _ = ranges.get(root, (index, index))
                ranges[root] = (lo, index)
        return ranges


def _result_fields(func: relax.Function, values: dict) -> list[relax.Expr]:
    result = func.body.body
    if isinstance(result, relax.Var) and isinstance(values.get(result), relax.Tuple):
        result = values[result]
    if not isinstance(result, relax.Tuple):
        raise LoweringError(f"unexpected region result {result}")
    return list(result.fields)


def walk_stages(mod: tvm.IRModule, n_inputs: int, target: tvm.target.Target) -> StageProgram:
    """Classify the legalized region function of ``mod`` into stages."""
    func = mod["region"]
    bindings = [b for block in func.body.blocks for b in block.bindings]
    values = {b.var: b.value for b in bindings}
    outputs: dict[tuple[relax.Var, int | None], int] = {}
    for index, field in enumerate(_result_fields(func, values)):
        key = (field, None)
        value = values.get(field)
        if isinstance(value, relax.TupleGetItem):  # a field of a multi-output kernel
            key = (value.tuple_value, value.index)
        if not isinstance(field, relax.Var) or key in outputs or field in list(func.params):
            raise LoweringError(
                "a region output is a region input or another output after legalization; "
                "end the region before it"
            )
        outputs[key] = index

    env: dict[relax.Var, object] = {p: Tensor("input", i) for i, p in enumerate(func.params)}
    temps: list[relax.TensorType] = []
    owner: list[int] = []
    constants: list[relax.Expr] = []
    stages: list[Stage] = []
    written: set[int] = set()
    gpu = "gpu" in target.keys

    def new_temp(ty: relax.TensorType, root: int | None = None) -> Tensor:
        temps.append(ty)
        owner.append(len(temps) - 1 if root is None else root)
        return Tensor("temp", len(temps) - 1)

    def operand(arg: relax.Expr) -> Tensor:
        if isinstance(arg, relax.Var):
            tensor = env[arg]
            if not isinstance(tensor, Tensor):
                raise LoweringError(f"kernel argument {arg.name} is a tuple")
            return tensor
        if isinstance(arg, tvm.ir.expr.GenericConst):
            for k, const in enumerate(constants):
                if const.same_as(arg):
                    return Tensor("input", n_inputs + k)
            constants.append(arg)
            return Tensor("input", n_inputs + len(constants) - 1)
        raise LoweringError(f"unsupported kernel argument {arg}")

    def result(var: relax.Var, field: int | None, ty) -> Tensor:
        key = (var, field)
        if key in outputs:
            written.add(outputs[key])
            return Tensor("output", outputs[key])
        return new_temp(ty)

    for binding in bindings:
        var, value = binding.var, binding.value
        if isinstance(value, relax.Var):
            env[var] = env[value]
        elif isinstance(value, relax.TupleGetItem):
            env[var] = env[value.tuple_value][value.index]
        elif isinstance(value, relax.Tuple):
            env[var] = tuple(env[f] for f in value.fields)
        elif isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            prim = mod[value.args[0]]
            args = [operand(a) for a in value.args[1].fields]
            scalars = tuple(value.args[2].values) if len(value.args) > 2 else ()
            if (
                len(args) == 1
                and args[0].kind == "temp"
                and (var, None) not in outputs
                and isinstance(var.ty, relax.TensorType)
                and relax.analysis.has_reshape_pattern(prim)
            ):  # a view of a temporary: no kernel, as in the normal build
                env[var] = new_temp(var.ty, root=owner[args[0].index])
                continue
            if isinstance(var.ty, relax.TupleType):
                outs = tuple(result(var, i, ty) for i, ty in enumerate(var.ty.fields))
                env[var] = outs
            else:
                outs = (result(var, None, var.ty),)
                env[var] = outs[0]
            if gpu and not _has_thread_binding(prim):
                raise LoweringError(
                    f"kernel {value.args[0].name_hint} of the chunk region has no GPU schedule: "
                    "it would build as a host-only function; end the region before it"
                )
            stages.append(Stage(value.args[0].name_hint, prim, tuple(args) + outs, scalars))
        else:
            op = (
                value.op.name
                if isinstance(value, relax.Call) and hasattr(value.op, "name")
                else value
            )
            raise LoweringError(
                f"{var.name} = {op} has no TIR kernel after legalization for "
                f"{target.kind.name}; it cannot run inside a chunk loop: end the region before it"
            )
    missing = sorted(set(outputs.values()) - written)
    if missing:
        raise LoweringError(f"region outputs {missing} are not written by any kernel")
    return StageProgram(tuple(stages), tuple(temps), tuple(owner), tuple(constants))


def _has_thread_binding(prim: tirx.PrimFunc) -> bool:
    found = []

    def visit(node) -> None:
        if (
            isinstance(node, tirx.For)
            and node.thread_binding is not None
            or isinstance(node, tirx.AttrStmt)
            and node.attr_key == "thread_extent"
        ):
            found.append(node)

    tvm_ffi.structural_walk(prim.body, ((tirx.For, tirx.AttrStmt), visit))
    return bool(found)
