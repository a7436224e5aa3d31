"""Records of stage 2 (search): chunk axes and candidate regions. Compute only, frozen.

A chunk *flows* through a region: every chunked tensor is split along one axis, and chunk
index range ``[c0, c1)`` selects elements ``[c0 * scale, c1 * scale)`` along it. Scales let a
chunk pass through reshapes that merge or split the chunk axis with the axes inside it: an
output ``(S, H)`` reshaped from ``(S * H,)`` is chunked on axis 0 with scale 1 and its input on
axis 0 with scale ``H``. ``extent`` is the number of chunk units, the same for every tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


class CantChunk(Exception):
    """This chunk flow is illegal; search drops the region (never surfaces to users)."""


@dataclasses.dataclass(frozen=True)
class ChunkAxis:
    """How one tensor is chunked: along ``axis``, ``scale`` elements per chunk unit.

    ``axis is None`` means the tensor is not chunked: it is used whole by every chunk
    (weights, broadcast operands, values that do not depend on the chunk axis).
    """

    axis: int | None
    scale: int = 1

    def __post_init__(self) -> None:
        if self.axis is not None and self.axis < 0:
            raise ValueError(f"chunk axis must be normalized to >= 0, got {self.axis}")
        if self.scale < 1:
            raise ValueError(f"chunk scale must be a positive integer, got {self.scale}")

    @property
    def chunked(self) -> bool:
        return self.axis is not None


WHOLE = ChunkAxis(None)


@dataclasses.dataclass(frozen=True)
class ChunkCandidate:
    """A legal chunk region: a contiguous run of bindings and how the chunk flows through it.

    Attributes
    ----------
    function
        Name of the Relax function.
    start, end
        Inclusive binding indices of the region (positions in the flattened function body).
    bindings
        Per binding of the region, in order: ``(var name, ChunkAxis)``.
    inputs
        Values read by the region and defined outside it: ``(name, ChunkAxis)``; unchunked ones
        are used whole. Parameters and earlier bindings by variable name; constants as
        ``"<binding>.arg<j>"``, the first site in the region that reads them.
    outputs
        Bindings of the region used after it: ``(name, ChunkAxis)``; all chunked.
    extent
        Number of chunk units (the loop runs over ``range(extent)`` in chunks), an ``int``, or a
        ``str`` of the symbolic expression when shapes are symbolic.
    hoistable
        Names of bindings that do not depend on the chunk axis: computed once outside the loop.
    """

    function: str
    start: int
    end: int
    bindings: tuple[tuple[str, ChunkAxis], ...]
    inputs: tuple[tuple[str, ChunkAxis], ...]
    outputs: tuple[tuple[str, ChunkAxis], ...]
    extent: int | str
    hoistable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"region [{self.start}, {self.end}] is empty or negative")
        if len(self.bindings) != self.end - self.start + 1:
            raise ValueError("one bindings entry per binding of the region is required")
        if not self.outputs or not all(a.chunked for _, a in self.outputs):
            raise ValueError("a region needs at least one output, and every output is chunked")
        if isinstance(self.extent, int) and self.extent < 2:
            raise ValueError(f"a chunk extent below 2 cannot be chunked (got {self.extent})")

    @property
    def axes(self) -> Mapping[str, ChunkAxis]:
        """Chunk axis of every binding of the region, by name."""
        return dict(self.bindings)

    @property
    def input_axes(self) -> Mapping[str, ChunkAxis]:
        return dict(self.inputs)

    @property
    def output_axes(self) -> Mapping[str, ChunkAxis]:
        return dict(self.outputs)
