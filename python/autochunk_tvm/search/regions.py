"""Region enumeration around the memory peak (paper §3.3): every legal chunk region in a
local window, with a cheap filter before the full flow trace."""

from __future__ import annotations

import itertools
import logging

import tvm
from tvm import relax

from ..analysis import MemoryProfile, estimate_activation_memory
from ..analysis.memory import handle
from ..analysis.views import is_view
from .candidate import CantChunk, ChunkCandidate
from .flow import flat_bindings, region_outputs, trace_region
from .rules import same_dim, shape_of, static

logger = logging.getLogger("autochunk_tvm")

# NOTE [search window]: the peak is a property of a few consecutive bindings (the paper's
# Fig. 4: most bindings use under 30% of the peak), so regions worth chunking are short runs
# around it. 24 kernels each side covers a transformer block's attention or MLP (about 10-20
# kernels each) with room for the residual and norms around them. The window counts kernels,
# not bindings: views (reshapes, tuple reads; analysis/views.py) launch nothing, and how many
# of them an importer emits says nothing about the region. OpenFold's triangle attention is
# 56 bindings from its key projection to the probabilities' matmul with the values, 30 of
# them reshapes and expand_dims; counted in bindings, a window of 24 cut it before that
# matmul and left the full (rows, heads, N, N) probabilities as the region's output.
DEFAULT_WINDOW = 24
# Regions with more outputs than this are not traced: each output must be chunked in step with
# the others, and real chunkable regions (attention, MLP, transitions) have one or two.
MAX_OUTPUTS = 3


def _axis_choices(shape: list | None) -> list[int]:
    if shape is None:
        return []
    return [a for a, d in enumerate(shape) if static(d) != 1]


def aligned_combinations(outputs: list[relax.Var], shape=shape_of):
    """Axis choices for all outputs whose dims along the chunk axis are equal (stage 1).

    Conservative: outputs that align only through a reshape scale (``(24, 8)`` beside
    ``(4, 6, 8)``) are not paired, so such multi-output regions are not proposed. ``shape``
    reads a variable's shape (:func:`~.rules.shape_of`, or a cached form of it).
    """
    shapes = [shape(v) for v in outputs]
    first = shapes[0]
    for axis in _axis_choices(first):
        dim = first[axis]
        rest = []
        for other in shapes[1:]:
            matching = [a for a in _axis_choices(other) if same_dim(other[a], dim)]
            if not matching:
                break
            rest.append(matching)
        else:
            for combo in itertools.product(*rest):
                yield (axis, *combo)


def window_bounds(bindings: list[relax.Binding], centre: int, window: int) -> tuple[int, int]:
    """The first and last binding index of the search window: ``window`` kernels (bindings
    that are not views) each side of ``centre``, and the views between them."""
    first = centre
    kernels = 0
    while first > 0 and kernels < window:
        first -= 1
        kernels += not is_view(bindings[first])
    last = centre
    kernels = 0
    while last < len(bindings) - 1 and kernels < window:
        last += 1
        kernels += not is_view(bindings[last])
    return first, last


def search_chunk_candidates(
    mod_or_func: tvm.IRModule | relax.Function,
    profile: MemoryProfile | None = None,
    *,
    func_name: str = "main",
    window: int = DEFAULT_WINDOW,
    centre: int | None = None,
    traced: dict[tuple, ChunkCandidate | None] | None = None,
) -> list[ChunkCandidate]:
    """Every legal chunk region of the function that contains its peak binding (or
    ``centre``).

    Parameters
    ----------
    mod_or_func
        A Relax module (``func_name`` is searched) or function, at the high level
        (before legalization).
    profile
        Its memory profile; computed when not given. The search centres on
        ``profile.peak_index``.
    window
        How many kernels (bindings that are not views) before and after the peak a region
        may extend.
    centre
        Search around this binding index instead of the profile's peak (selection uses the
        binding where the memory of the *built* module first exceeds the budget).
    traced
        What earlier searches on the same function traced, by region and output axes: the
        candidate, or None where the flow does not allow it. Read and extended here.
        Selection searches around a dozen centres of one function, whose windows overlap: a
        third of the traces of a 48-block Evoformer's selection were repeats.

    Returns
    -------
    list of ChunkCandidate
        Ordered by region start, end and output axes. Empty when nothing around the peak can
        be chunked (a function without bindings, control flow, barriers everywhere).
    """
    func = mod_or_func[func_name] if isinstance(mod_or_func, tvm.IRModule) else mod_or_func
    if not isinstance(func, relax.Function):
        raise TypeError(f"search_chunk_candidates needs a Relax function, got {type(func)}")
    bindings = flat_bindings(func)
    if not bindings:
        return []
    if centre is not None:
        if not 0 <= centre < len(bindings):
            raise ValueError(f"centre {centre} is not a binding index (0..{len(bindings) - 1})")
        peak = centre
    else:
        if profile is None:
            profile = estimate_activation_memory(mod_or_func, func_name=func_name)
        peak = profile.peak_index
        if peak < 0:
            return []
    first, last = window_bounds(bindings, peak, window)
    found: list[ChunkCandidate] = []
    tries = 0
    memo = traced if traced is not None else {}
    shapes: dict[int, list | None] = {}  # per variable handle: the windows' regions share outputs

    def shape(var: relax.Var) -> list | None:
        key = handle(var)
        if key not in shapes:
            shapes[key] = shape_of(var)
        return shapes[key]

    for start in range(first, peak + 1):
        for end in range(peak, last + 1):
            outputs = region_outputs(func, start, end)
            # Stage 1: cheap checks on the region's outputs only.
            if not outputs or len(outputs) > MAX_OUTPUTS:
                continue
            for combo in aligned_combinations(outputs, shape):
                tries += 1
                axes = {v.name: a for v, a in zip(outputs, combo)}
                key = (start, end, tuple(axes.items()))
                if key not in memo:
                    try:  # Stage 2: the full flow trace
                        memo[key] = trace_region(func, start, end, axes, function_name=func_name)
                    except CantChunk:
                        memo[key] = None
                if memo[key] is not None:
                    found.append(memo[key])
    logger.info("search: %d regions traced, %d legal candidates", tries, len(found))
    return found
