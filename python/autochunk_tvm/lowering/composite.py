"""Step 3 of lowering: one composite PrimFunc, a serial loop over chunk indices.

Signature: ``(region inputs..., region outputs..., temporary storages...)``. The inputs and
outputs are the full-size tensors; each stage reaches its chunk through a ``match_buffer`` of
the region ``[c * chunk_len * scale, +chunk_len * scale)`` along the chunk axis, a zero-copy
view (stage buffers get symbolic strides and offset so they can bind to one). Temporaries are
chunk-sized: flat storages, one per group of temporaries whose lifetimes do not overlap, passed
as extra outputs so Relax's memory planner sees and plans them; each temporary is a
``DeclBuffer`` view of its storage. The body is::

    for c in range(extent // chunk_len):          # full chunks
        <stages at chunk_len, offset c * chunk_len>
    <stages at extent % chunk_len>                # the shorter last chunk, if any

(for a symbolic extent, the last chunk is a loop of ``min(extent % chunk_len, 1)`` iterations).

On GPUs the loop stays on the host: every stage's thread-bound loops become kernel launches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.ir import Range

from ..search.candidate import ChunkAxis
from .region import LoweringError
from .stages import StageProgram, Tensor

INDEX = "int64"
OPAQUE = 8  # relay/relax OpPatternKind::kOpaque: FuseOps leaves the composite alone


@dataclasses.dataclass(frozen=True)
class Variant:
    """The stages of chunks of one length. ``length_var`` is the symbolic length the stages were
    compiled at (the last chunk of a symbolic extent); the composite substitutes the run-time
    length for it."""

    program: StageProgram
    length_var: tirx.Var | None = None


def _numel(shape: Sequence) -> tvm.ir.PrimExpr | int:
    total = 1
    for dim in shape:
        total = total * dim
    return total


def _simplify(expr):
    if isinstance(expr, int):
        return expr
    value = tvm.sym.Analyzer().simplify(expr)
    return int(value.value) if isinstance(value, tirx.IntImm) else value


def _substitute(expr, mapping: dict):
    if not mapping or isinstance(expr, int):
        return expr
    return tvm_ffi.structural_map(expr, (tirx.Var, lambda v: mapping.get(v, v)))


def _plan_storage(variants: Sequence[Variant], chunk_len) -> tuple[list[str], list, list[dict]]:
    """Greedy interval packing of every variant's temporaries into shared flat storages.

    Returns the storages' dtypes and sizes (elements; the symbolic tail length bounded by
    ``chunk_len``) and, per variant, the storage of each storage-owning temporary.
    """
    dtypes: list[str] = []
    sizes: list = []
    assignments: list[dict] = []
    for variant in variants:
        program = variant.program
        bound = {variant.length_var: _expr(chunk_len)} if variant.length_var is not None else {}
        ranges = program.live_ranges()
        slot_of: dict[int, int] = {}
        busy_until: dict[int, int] = {}  # storage -> last stage using it in this variant
        for root, (first, last) in sorted(ranges.items(), key=lambda kv: kv[1]):
            ty = program.temps[root]
            need = _simplify(_substitute(_numel(ty.shape.values), bound))
            dtype = str(ty.dtype)
            free = [
                s
                for s in range(len(dtypes))
                if dtypes[s] == dtype and busy_until.get(s, -1) < first
            ]
            fits = [s for s in free if _le(need, sizes[s])]
            if fits:
                slot = min(fits, key=lambda s: _key(sizes[s]))
            elif free:
                slot = max(free, key=lambda s: _key(sizes[s]))
                sizes[slot] = _max(sizes[slot], need)
            else:
                dtypes.append(dtype)
                sizes.append(need)
                slot = len(dtypes) - 1
            slot_of[root] = slot
            busy_until[slot] = last
        assignments.append(slot_of)
    return dtypes, sizes, assignments


def _le(a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a <= b
    return a is b or tvm.sym.Analyzer().can_prove(tirx.LE(_expr(a), _expr(b)))


def _max(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return _simplify(tirx.max(_expr(a), _expr(b)))


def _key(size) -> int:
    return size if isinstance(size, int) else 1 << 62


def _expr(value):
    return tirx.IntImm(INDEX, value) if isinstance(value, int) else value


def _seq(stmts: list) -> tirx.Stmt:
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)  # TIR forbids 1-long SeqStmts


def _flex_buffer(param: tirx.Var, name: str, known: dict) -> tirx.Var:
    """A copy of a stage's parameter buffer that can bind to a strided, offset view."""
    index = str(param.shape[0].ty) if len(param.shape) else INDEX
    strides = [tirx.Var(f"{name}_s{i}", index) for i in range(len(param.shape))]
    offset = tirx.Var(f"{name}_off", index)
    return tirx.decl_buffer(
        [_substitute(d, known) for d in param.shape],
        param.dtype,
        name,
        strides=strides,
        elem_offset=offset,
        offset_factor=1,
        scope=param.scope(),
    )


class CompositeBuilder:
    """Builds the composite PrimFunc of one region."""

    def __init__(
        self,
        inputs: Sequence[tuple[str, relax.TensorType, ChunkAxis]],
        outputs: Sequence[tuple[str, relax.TensorType, ChunkAxis]],
        chunk_len: int,
    ) -> None:
        self.chunk_len = chunk_len
        self.inputs = [self._param(n, ty) for n, ty, _ in inputs]
        self.input_axes = [a for _, _, a in inputs]
        self.outputs = [self._param(n, ty) for n, ty, _ in outputs]
        self.output_axes = [a for _, _, a in outputs]
        self.chunk = tirx.Var("c", INDEX)
        self._stage_count = 0

    @staticmethod
    def _param(name: str, ty: relax.TensorType) -> tirx.Var:
        return tirx.decl_buffer(list(ty.shape.values), str(ty.dtype), name.replace(".", "_"))

    def extent(self):
        """Chunk units along the chunk axis, from the first output's shape."""
        axis = self.output_axes[0]
        return _simplify(self.outputs[0].shape[axis.axis] // axis.scale)

    def build(self, full: Variant, tail: Variant | None) -> tuple[tirx.PrimFunc, list]:
        """The composite and the (dtype, size) of each storage, in parameter order."""
        variants = [full] + ([tail] if tail is not None else [])
        dtypes, sizes, assignments = _plan_storage(variants, self.chunk_len)
        storages = [
            tirx.decl_buffer([_expr(size)], dtype, f"storage{i}")
            for i, (dtype, size) in enumerate(zip(dtypes, sizes))
        ]
        extent = self.extent()
        n_full = _simplify(tirx.floordiv(_expr(extent), self.chunk_len))
        offset = self.chunk * self.chunk_len
        body = self._variant(full, assignments[0], storages, offset, self.chunk_len)
        stmts = [tirx.For(self.chunk, 0, _expr(n_full), tirx.ForKind.SERIAL, body)]
        if tail is not None:
            rest = _simplify(tirx.floormod(_expr(extent), self.chunk_len))
            start = _expr(n_full) * self.chunk_len
            tail_body = self._variant(tail, assignments[1], storages, start, rest)
            if isinstance(rest, int):
                stmts.append(tail_body)
            else:
                # A loop of min(rest, 1) iterations, not an `if`: GPU ThreadSync refuses to
                # place the kernels' barriers inside a condition.
                once = tirx.Var("last", INDEX)
                stmts.append(
                    tirx.For(once, 0, tirx.min(rest, _expr(1)), tirx.ForKind.SERIAL, tail_body)
                )
        root = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", _seq(stmts)))
        params = self.inputs + self.outputs + storages
        func = tirx.PrimFunc(params, root).with_attrs(
            {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE}
        )
        return func, list(zip(dtypes, sizes))

    def _variant(self, variant: Variant, slot_of, storages, offset, length) -> tirx.Stmt:
        program = variant.program
        stmts: list[tirx.Stmt] = []
        # The symbolic length is substituted, not bound: match_buffer must prove each stage's
        # shape equal to its source region, and it cannot see through a binding.
        known = {variant.length_var: _expr(length)} if variant.length_var is not None else {}
        temps: dict[int, tirx.Var] = {}
        for index, ty in enumerate(program.temps):
            root = program.owner[index]
            if root not in slot_of:
                continue  # never touched by a kernel (a dead reshape)
            shape = [_substitute(d, known) for d in ty.shape.values]
            buf = tirx.decl_buffer(shape, str(ty.dtype), f"t{index}")
            stmts.append(tirx.DeclBuffer(buf, data=storages[slot_of[root]].data))
            temps[index] = buf
        for stage in program.stages:
            stmts.extend(self._stage(stage, temps, offset, length, known))
        return _seq(stmts)

    def _source(self, tensor: Tensor, temps, offset, length) -> tirx.TensorRegion:
        if tensor.kind == "temp":
            buf = temps[tensor.index]
            return tirx.BufferRegion(buf, [Range.from_min_extent(0, d) for d in buf.shape])
        if tensor.kind == "input":
            buf, axis = self.inputs[tensor.index], self.input_axes[tensor.index]
        else:
            buf, axis = self.outputs[tensor.index], self.output_axes[tensor.index]
        region = [Range.from_min_extent(0, d) for d in buf.shape]
        if axis.chunked:
            region[axis.axis] = Range.from_min_extent(
                _expr(offset) * axis.scale, _expr(length) * axis.scale
            )
        return tirx.BufferRegion(buf, region)

    def _stage(self, stage, temps, offset, length, known: dict) -> list[tirx.Stmt]:
        prim = s_tir.renew_defs(stage.prim)
        self._stage_count += 1
        prefix = f"s{self._stage_count}"
        n_buffers = len(stage.args)
        buffers, scalars = list(prim.params[:n_buffers]), list(prim.params[n_buffers:])
        if len(scalars) != len(stage.scalars):
            raise LoweringError(
                f"kernel {stage.name}: {len(scalars)} scalar params, call passes "
                f"{len(stage.scalars)}"
            )
        mapping: dict = dict(known)
        matches = []
        for param, tensor in zip(buffers, stage.args):
            flex = _flex_buffer(param, f"{prefix}_{param.name}", known)
            mapping[param] = flex
            source = self._source(tensor, temps, offset, length)
            matches.append(s_tir.MatchBufferRegion(flex, source))
        body = tvm_ffi.structural_map(prim.body, (tirx.Var, lambda v: mapping.get(v, v)))
        if isinstance(body, s_tir.SBlockRealize) and not body.block.iter_vars:
            root = body.block
            block = s_tir.SBlock(
                [],
                [],
                [],
                f"{prefix}_{stage.name}",
                root.body,
                None,
                list(root.alloc_buffers),
                matches + list(root.match_buffers),
            )
        else:
            block = s_tir.SBlock([], [], [], f"{prefix}_{stage.name}", body, None, [], matches)
        stmts: list[tirx.Stmt] = [
            tirx.Bind(var, _substitute(_expr(value), known))
            for var, value in zip(scalars, stage.scalars)
        ]
        stmts.append(s_tir.SBlockRealize([], True, block))
        return stmts
