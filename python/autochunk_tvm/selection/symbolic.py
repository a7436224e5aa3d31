"""Selection for a function whose shapes are symbolic: choose at the bound, build once.

NOTE [symbolic selection]: a model exported with a dynamic sequence length has one function
for every length up to its bound. The built module sizes its planned storages for the bound
(``StaticPlanBlockMemory`` reads the function's ``tir_var_upper_bound``), and a chunk storage is
sized by the chunk length, a fixed number of chunk units, not by the length. So the memory the
build allocates is the same at every length, and it is the memory at the bound: a plan that
meets the budget at the bound meets it at every length.

Selection therefore searches the function with every symbolic dim bound to its upper bound
(a static twin, where every extent is a number to bisect on), keeping only the regions whose
chunk flow is also legal on the symbolic function (some rules stop at a symbolic dim). Each
plan is estimated on what will be built: its regions traced again on the symbolic function,
lowered there, and its memory planned at the bound. That differs from the twin's: the loop
runs ``ceil(extent / chunk_len)`` times, computed at run time, and its last, shorter chunk
runs stages compiled for a symbolic length, whose internal buffers TVM cannot share with the
full chunks' (on the zoo GPT at 20%, 0.4 MiB, 3%, more than the twin's plan: measured).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import tvm
import tvm_ffi
from tvm import relax

from ..analysis.sizes import input_dims, upper_bounds
from ..lowering import ChunkStep
from ..lowering.bounds import with_bounds
from ..lowering.plan import ordered_steps
from ..search.candidate import CantChunk, ChunkCandidate
from ..search.flow import flat_bindings, trace_region

if TYPE_CHECKING:
    from .estimate import PlanEstimate, PlanEstimator


# Registered so that the error keeps its type when raised inside the AutoChunk pass (it
# crosses TVM's FFI on the way out, rebuilt from its message: the dims are read back from it).
@tvm_ffi.register_error
class UnboundedShapeError(ValueError):
    """Symbolic dims without an upper bound (``dims``, by name): no budget can be checked."""

    def __init__(self, message: str, dims: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        if dims is None:
            found = _DIMS.search(message)
            dims = tuple(found.group(1).split(", ")) if found else ()
        self.dims = dims


_DIMS = re.compile(r"the input dim\(s\) (.+?) are symbolic")


@dataclasses.dataclass(frozen=True)
class SymbolicDims:
    """The symbolic dims of a function's inputs and the bounds selection plans for.

    Attributes
    ----------
    bounds
        Upper bound of every symbolic dim of the inputs, by name.
    given
        The bounds the caller passed (``bounds=``) that the function's own
        ``tir_var_upper_bound`` attribute does not already state; the build must be told
        them (:func:`~autochunk_tvm.lowering.bounds.with_bounds`), or it would allocate each
        call's memory at run time.
    """

    bounds: Mapping[str, int]
    given: Mapping[str, int]


def symbolic_dims(
    func: relax.Function, bounds: Mapping[str, int] | None = None
) -> SymbolicDims | None:
    """The symbolic dims of ``func``'s inputs with their bounds; ``None`` when every input
    shape is static.

    Raises
    ------
    UnboundedShapeError
        When a symbolic dim has neither a ``tir_var_upper_bound`` nor an entry in ``bounds``.
    """
    names = sorted(input_dims(func))
    if not names:
        return None
    own = upper_bounds(func)
    given = {str(k): int(v) for k, v in (bounds or {}).items()}
    merged = {**own, **given}
    missing = [n for n in names if n not in merged]
    if missing:
        raise UnboundedShapeError(
            f"the input dim(s) {', '.join(missing)} are symbolic without an upper bound, so "
            "the memory of a call cannot be bounded and no budget can be checked. Export with "
            f"a bounded dim (torch.export.Dim({missing[0]!r}, max=8192)) or pass "
            f"bounds={{{missing[0]!r}: 8192}} with the longest length the model must serve",
            tuple(missing),
        )
    for name in names:
        if merged[name] < 1:
            raise UnboundedShapeError(
                f"the bound of {name} must be positive, got {merged[name]}", (name,)
            )
    kept = {n: merged[n] for n in names}
    return SymbolicDims(kept, {n: v for n, v in kept.items() if own.get(n) != v})


class AtTheBound:
    """A symbolic function and its static twin at the bound, with the map from the twin's
    chunk regions back to the symbolic function's (NOTE [symbolic selection])."""

    def __init__(self, mod: tvm.IRModule, func_name: str, dims: SymbolicDims) -> None:
        self.func_name = func_name
        self.dims = dims
        self.symbolic = with_bounds(mod, func_name, dims.given)
        func = self.symbolic[func_name]
        static = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        static[func_name] = func.bind_symbolic_vars(dict(dims.bounds))
        self.static = static
        self._func = func
        self._twins: dict[ChunkCandidate, ChunkCandidate | None] = {}

    def twin(self, cand: ChunkCandidate) -> ChunkCandidate | None:
        """The same region of the symbolic function with the same chunk flow, or ``None``
        when the flow is not legal there (or differs)."""
        if cand not in self._twins:
            self._twins[cand] = self._trace(cand)
        return self._twins[cand]

    def admits(self, cand: ChunkCandidate) -> bool:
        return self.twin(cand) is not None

    def steps(self, steps: tuple[ChunkStep, ...]) -> tuple[ChunkStep, ...]:
        """The plan's steps on the symbolic function, at the same chunk lengths."""
        out = []
        for step in steps:
            twin = self.twin(step.candidate)
            if twin is None:  # selection only takes admitted regions
                raise ValueError(
                    f"region [{step.candidate.start}, {step.candidate.end}] has "
                    "no chunk flow on the symbolic function"
                )
            out.append(dataclasses.replace(step, candidate=twin))
        return tuple(out)

    def _trace(self, cand: ChunkCandidate) -> ChunkCandidate | None:
        try:
            twin = trace_region(
                self._func,
                cand.start,
                cand.end,
                {name: axis.axis for name, axis in cand.outputs},
                function_name=self.func_name,
            )
        except CantChunk:
            return None
        # The symbolic region also reads the shape variables it uses (a slice's end ``seq``),
        # which the static twin has as numbers.
        inputs = tuple(i for i in twin.inputs if i[0] not in self.dims.bounds)
        same = (
            twin.bindings == cand.bindings
            and inputs == cand.inputs
            and twin.outputs == cand.outputs
            and twin.hoistable == cand.hoistable
        )
        return twin if same else None


class TwinEstimator:
    """What selection needs of a :class:`~.estimate.PlanEstimator`, for a symbolic function:
    the static twin's structure to search (``mod``, ``func``, ``bindings``, ``index``), and
    estimates of the symbolic build at the bound for plans written on the twin (NOTE
    [symbolic selection]).
    """

    def __init__(self, twin: AtTheBound, symbolic: PlanEstimator) -> None:
        self.twin = twin
        self.symbolic = symbolic
        self.mod = twin.static
        self.func_name = twin.func_name
        self.func = twin.static[twin.func_name]
        self.bindings = flat_bindings(self.func)
        self.index = {b.var.name: i for i, b in enumerate(self.bindings)}
        self.bounds = None  # the twin's shapes are static
        self.target = symbolic.target

    @property
    def evaluated(self) -> int:
        return self.symbolic.evaluated

    def estimate(self, steps: tuple[ChunkStep, ...] = ()) -> PlanEstimate:
        """The symbolic build's estimate at the bound, for the twin's ``steps`` (and keyed by
        them)."""
        found = self.symbolic.estimate(self.twin.steps(steps))
        return dataclasses.replace(found, steps=ordered_steps(steps))

    def lower(self, steps: tuple[ChunkStep, ...]) -> tvm.IRModule:
        return self.symbolic.lower(self.twin.steps(steps))
