"""The speed-loss cost model of chunk selection (paper §3.4, Eqs. 8-10), with fitted weights.

The paper scores a chunk by ``alpha N_node + beta N_flop`` (macro: how much of the model runs
in chunks) plus ``gamma N_density + lambda N_stride`` (micro: how well each chunk still uses
the hardware). We keep the four terms, give each a physical reading, and make them
dimensionless so that the weighted sum predicts the relative slow-down of the whole model
(``time chunked / time unchunked - 1``), which adds up over the regions of a plan:

``node``
    Kernel calls the chunk loop adds, per MFLOP of the model: ``n_chunks * N_node / MFLOP``.
    Each call pays a launch (GPU) or a thread-pool dispatch (CPU).
``flop``
    Share of the model's FLOPs that run in chunks: ``F_region / F_model``.
``density``
    The same share, divided by ``log2(2 + FLOPs per kernel call)``: kernels with little work
    per call lose more of their parallelism when split.
``stride``
    Elements the region reads and writes through chunk views of full tensors, per FLOP of the
    model, divided by ``log2(2 + contiguous bytes per view row / 64)``: chunking an inner
    axis turns long contiguous reads into many short ones.
``collapse``
    Share of the model's FLOPs in kernels whose chunked axis holds one element per chunk.
    Measured on CPU: the attention's batched matmul over one head per chunk (GPT, heads
    chunked one by one) runs at half the speed per head of the same kernel over two heads,
    one thread or two (TVM generates another loop nest once the axis is gone); the 4-head GPT
    chunked one head at a time runs 1.10-1.14x the unchunked time, two heads at a time 1.00x.

The weights are fitted by non-negative least squares on measured speed ratios
(``benchmarks/fit_cost_model.py``; data and fit in ``benchmarks/results/cost_model_fit.*``),
and shipped in ``cost_model.json`` next to this file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping
from pathlib import Path

from tvm import relax

from ..analysis.flops import binding_flops
from ..analysis.sizes import dtype_bytes
from ..analysis.views import is_view
from ..search.candidate import ChunkCandidate
from ..search.flow import flat_bindings

TERMS = ("node", "flop", "density", "stride", "collapse")
WEIGHTS_FILE = Path(__file__).with_name("cost_model.json")


@dataclasses.dataclass(frozen=True)
class ModelTotals:
    """Whole-function quantities the features are normalized by."""

    flops: int
    nodes: int

    @classmethod
    def of(cls, func: relax.Function, bounds: Mapping[str, int] | None = None) -> ModelTotals:
        bindings = flat_bindings(func)
        flops = sum(binding_flops(b, bounds) for b in bindings)
        nodes = sum(1 for b in bindings if not is_view(b))
        return cls(max(flops, 1), max(nodes, 1))


@dataclasses.dataclass(frozen=True)
class StepFeatures:
    """What the cost model knows of one region chunked into ``n_chunks``."""

    n_chunks: int
    nodes: int  # kernels per chunk (views, hoisted bindings excluded)
    flops: int  # FLOPs of the region's chunked bindings
    io_elements: int  # elements of full-size tensors read or written through chunk views
    row_bytes: int  # contiguous bytes of one row of a chunk view (smallest over the views)
    totals: ModelTotals
    collapsed_flops: int = 0  # FLOPs of kernels whose chunked axis is one element per chunk

    def terms(self) -> dict[str, float]:
        share = self.flops / self.totals.flops
        per_call = self.flops / max(1, self.nodes * self.n_chunks)
        return {
            "node": self.n_chunks * self.nodes * 1e6 / self.totals.flops,
            "flop": share,
            "density": share / math.log2(2 + per_call),
            "stride": self.io_elements / self.totals.flops / math.log2(2 + self.row_bytes / 64),
            "collapse": self.collapsed_flops / self.totals.flops,
        }


def step_features(
    func: relax.Function,
    candidate: ChunkCandidate,
    chunk_len: int,
    totals: ModelTotals,
    bindings: list[relax.Binding] | None = None,
    bounds: Mapping[str, int] | None = None,
    bound_names: Collection[str] | None = None,
) -> StepFeatures:
    """Features of ``candidate`` chunked at ``chunk_len`` (a static extent is required).

    ``bound_names``: the names the function's bindings have, when the caller has them (a
    region's constant inputs are then not searched for among the bindings)."""
    if not isinstance(candidate.extent, int):
        raise ValueError("cost features need a static chunk extent")
    bindings = bindings if bindings is not None else flat_bindings(func)
    region = bindings[candidate.start : candidate.end + 1]
    hoisted = set(candidate.hoistable)
    inside = [b for b in region if b.var.name not in hoisted]
    nodes = sum(1 for b in inside if not is_view(b))
    flops = sum(binding_flops(b, bounds) for b in inside)
    axes = candidate.axes
    collapsed = sum(
        binding_flops(b, bounds)
        for b in inside
        if not is_view(b) and axes[b.var.name].chunked and chunk_len * axes[b.var.name].scale == 1
    )
    views = list(candidate.inputs) + list(candidate.outputs)
    by_name = _variables_named(
        {name for name, _ in views}, func, bindings[: candidate.end + 1], bound_names
    )
    io_elements, row_bytes = 0, None
    for name, axis in views:
        var = by_name.get(name)
        if var is None or not axis.chunked or not isinstance(var.ty, relax.TensorType):
            continue  # constants, tuples and unchunked inputs are read whole
        shape = _static_shape(var.ty, bounds)
        if shape is None:
            continue
        io_elements += math.prod(shape)
        inner = math.prod(shape[axis.axis + 1 :])
        row = min(chunk_len * axis.scale, shape[axis.axis]) * inner * dtype_bytes(str(var.ty.dtype))
        if math.prod(shape[: axis.axis]) == 1:
            row = math.prod(shape) * dtype_bytes(str(var.ty.dtype))  # one contiguous block
        row_bytes = row if row_bytes is None else min(row_bytes, row)
    n_chunks = -(-candidate.extent // chunk_len)
    return StepFeatures(n_chunks, nodes, flops, io_elements, row_bytes or 1, totals, collapsed)


def _variables_named(
    names: set[str],
    func: relax.Function,
    bindings: list[relax.Binding],
    bound_names: Collection[str] | None = None,
) -> dict[str, relax.Var]:
    """The variables called ``names``: the latest binding of each in ``bindings`` (searched
    backwards, so a region's inputs, read near it, are found without walking a deep model),
    else a parameter. With ``bound_names`` (every binding name of the function), the walk
    looks only for those: a name no binding has (a region's constant input) would make it
    walk to the start of the function, for every region of a 48-block model."""
    found: dict[str, relax.Var] = {}
    wanted = names if bound_names is None else {n for n in names if n in bound_names}
    for binding in reversed(bindings if wanted else ()):
        name = binding.var.name
        if name in wanted and name not in found:
            found[name] = binding.var
            if len(found) == len(wanted):
                break
    for param in func.params:
        found.setdefault(param.name, param)
    return found


def _static_shape(ty: relax.TensorType, bounds) -> list[int] | None:
    if not isinstance(ty.shape, relax.ShapeExpr):
        return None
    out = []
    for dim in ty.shape.values:
        try:
            out.append(int(dim))
        except TypeError:
            if bounds and getattr(dim, "name", None) in bounds:
                out.append(int(bounds[dim.name]))
            else:
                return None
    return out


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Predicted relative slow-down of a chunk step: ``sum(weight[t] * term[t])``.

    ``terms`` switches terms off (the ablation of paper Table 1): a term not in it counts 0.
    """

    weights: Mapping[str, float]
    terms: tuple[str, ...] = TERMS

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(TERMS) | set(self.terms) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown cost terms {sorted(unknown)}; the terms are {TERMS}")
        negative = sorted(t for t, w in self.weights.items() if w < 0)
        if negative:
            # Selection stops relaxing plans at one that costs nothing (select.py).
            raise ValueError(f"cost weights must be non-negative; {negative} are not")

    @classmethod
    def default(cls) -> CostModel:
        """The weights fitted by ``benchmarks/fit_cost_model.py``."""
        data = json.loads(WEIGHTS_FILE.read_text())
        return cls({t: float(data["weights"].get(t, 0.0)) for t in TERMS})

    def without(self, *terms: str) -> CostModel:
        return dataclasses.replace(self, terms=tuple(t for t in self.terms if t not in terms))

    def step_cost(self, features: StepFeatures) -> float:
        values = features.terms()
        return sum(self.weights.get(t, 0.0) * values[t] for t in self.terms)
