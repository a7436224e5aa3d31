"""What holds a plan's peak: the tensors live there, and why each is not chunked.

When a budget cannot be met, the smallest peak found (the *floor*) is the answer users get;
this module says what it is made of. At the plan's peak binding it lists the storages the
build holds (largest first), maps each to the high-level tensor placed in it, and gives the
reason that tensor is held whole: the function returns it, it is the assembled output of a
chunked region, or no legal region takes it in (the chunk-flow refusal, in the tracer's
words).
"""

from __future__ import annotations

import dataclasses

from tvm import relax, tirx

from ..analysis.memory import format_bytes
from ..analysis.sizes import type_bytes
from ..analysis.views import is_view, short_op
from ..lowering import ChunkStep
from ..search.candidate import CantChunk
from ..search.flow import flat_bindings, last_uses, region_outputs, trace_region
from ..search.regions import MAX_OUTPUTS, aligned_combinations
from ..search.rules import shape_of, static
from .estimate import PlanEstimate

# Tensors below this share of the peak are summed, not explained one by one.
_SHARE = 0.05
_MOST = 6


@dataclasses.dataclass(frozen=True)
class HeldTensor:
    """One tensor held at the peak: ``index`` is its high-level binding; ``reason`` says why
    it is held whole, or which chunked region it belongs to."""

    name: str
    op: str
    nbytes: int
    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class PeakAccount:
    """The make-up of a plan's peak (bytes): the largest tensors live there, the kernel
    workspace at that binding, and the bytes the build still holds for tensors already dead
    (``dead_bytes``: the pool reuses a freed buffer only for a request of the same size, and
    a tuple nothing reads pins its storages). ``dead`` names the largest of those buffers by
    the tensor that sized each: tensors that were live together earlier."""

    peak_bytes: int
    binding: str  # the high-level binding at which the peak is reached
    held: tuple[HeldTensor, ...]
    other_live_bytes: int  # live tensors too small to list
    workspace_bytes: int
    dead_bytes: int
    dead: tuple[HeldTensor, ...] = ()

    def __str__(self) -> str:
        lines = [f"  at the peak ({format_bytes(self.peak_bytes)}, near {self.binding}):"]
        for t in self.held:
            lines.append(f"    {format_bytes(t.nbytes):>11}  {t.name} ({t.op}): {t.reason}")
        for nbytes, what in (
            (self.other_live_bytes, "smaller live tensors"),
            (self.workspace_bytes, "kernel workspace of the peak binding"),
        ):
            if nbytes:
                lines.append(f"    {format_bytes(nbytes):>11}  {what}")
        if self.dead_bytes:
            what = "buffers of dead tensors the build still holds"
            line = f"    {format_bytes(self.dead_bytes):>11}  {what}"
            if self.dead:
                line += (
                    " (the pool gives a freed buffer only to a request of its size; a tuple"
                    " nothing reads pins its storages), sized by:"
                )
            lines.append(line)
            for t in self.dead:
                lines.append(f"      {format_bytes(t.nbytes):>11}  {t.name} ({t.op}): {t.reason}")
        return "\n".join(lines)


def account_for_peak(
    func: relax.Function, steps: tuple[ChunkStep, ...], estimate: PlanEstimate
) -> PeakAccount:
    """The :class:`PeakAccount` of the plan ``steps`` of ``func``, whose estimate is
    ``estimate`` (from :class:`~.estimate.PlanEstimator`)."""
    allocation = estimate.allocation
    footprint = allocation.footprint
    bindings = flat_bindings(func)
    if not footprint:
        return PeakAccount(allocation.peak_bytes, "", (), 0, 0, 0)
    j = footprint.index(max(footprint))
    at = allocation.profile.bindings[j]
    lowered_index = {name: k for k, name in reversed(list(enumerate(allocation.bindings)))}
    last_use = last_uses(func)
    live: list[tuple[int, int]] = []  # (bytes, high-level index)
    for name in at.live_tensors:
        k = lowered_index.get(name)
        if k is None:
            continue
        nbytes = allocation.profile.bindings[k].own_bytes
        placed = [t for t, _ in allocation.storage_tensors.get(k, ()) if t <= j]
        occupant = placed[-1] if placed else k
        live.append((nbytes, estimate.position[occupant]))
    # Storages traced to one binding (a chunked region's buffers map to its output) merge.
    by_binding: dict[int, list[int]] = {}
    for nbytes, p in live:
        by_binding.setdefault(p, []).append(nbytes)
    ranked = sorted(by_binding.items(), key=lambda item: -sum(item[1]))
    held = []
    other = 0
    for p, sizes in ranked:
        total = sum(sizes)
        if len(held) >= _MOST or total < _SHARE * allocation.peak_bytes or p >= len(bindings):
            other += total
            continue
        binding = bindings[p]
        reason = _why_held(func, bindings, last_use, steps, p, max(sizes))
        if len(sizes) > 1:
            reason = f"{len(sizes)} buffers; {reason}"
        held.append(HeldTensor(binding.var.name, short_op(binding), total, p, reason))
    live_bytes = sum(nbytes for nbytes, _ in live)
    near = estimate.position[j]
    dead_bytes = max(0, allocation.peak_bytes - live_bytes - at.workspace_bytes)
    return PeakAccount(
        peak_bytes=allocation.peak_bytes,
        binding=bindings[near].var.name if near < len(bindings) else "the return",
        held=tuple(held),
        other_live_bytes=other,
        workspace_bytes=at.workspace_bytes,
        dead_bytes=dead_bytes,
        dead=_dead_buffers(func, bindings, last_use, steps, estimate, dead_bytes),
    )


def _dead_buffers(func, bindings, last_use, steps, estimate, dead_bytes: int):
    """The largest buffers of dead tensors held at the peak, each as the high-level tensor
    that sized it (the largest the planner placed in its storage)."""
    allocation = estimate.allocation
    live = allocation.liveness
    if live is None or not dead_bytes:
        return ()
    by_binding: dict[int, int] = {}
    for s in allocation.dead_at_peak:
        at = live.storages[s].start
        placed = allocation.storage_tensors.get(at, ())
        sizer = max(placed, key=lambda t: t[1])[0] if placed else at
        p = estimate.position[sizer]
        by_binding[p] = by_binding.get(p, 0) + live.sizes[s]
    dead = []
    for p, nbytes in sorted(by_binding.items(), key=lambda item: -item[1]):
        if len(dead) >= _MOST or nbytes < _SHARE * dead_bytes or p >= len(bindings):
            continue
        binding = bindings[p]
        reason = _why_held(func, bindings, last_use, steps, p, nbytes)
        dead.append(HeldTensor(binding.var.name, short_op(binding), nbytes, p, reason))
    return tuple(dead)


def _why_held(func, bindings, last_use, steps, p: int, nbytes: int) -> str:
    var = bindings[p].var
    full = type_bytes(var.ty)
    if isinstance(full, tirx.IntImm):
        full = int(full)
    for step in steps:
        cand = step.candidate
        if cand.start <= p <= cand.end:
            region = f"region [{cand.start}-{cand.end}]"
            if var.name in cand.hoistable:
                return f"computed once before the loop of {region}: it does not depend on the chunk"
            whole = not isinstance(full, int) or nbytes >= full
            if whole and var.name in dict(cand.outputs):
                reader = bindings[min(last_use.get(var, p), len(bindings) - 1)]
                return (
                    f"output of the chunked {region}, assembled whole: read after it by "
                    f"{reader.var.name} ({short_op(reader)})"
                )
            return f"buffers of the chunked {region} ({step.n_chunks} chunks)"
    used_until = last_use.get(var, p)
    if used_until >= len(bindings):
        return "returned by the function: the caller receives it whole"
    if _returned_through_views(bindings, last_use, p):
        return "returned by the function through views: the caller receives it whole"
    shape = shape_of(var)
    if shape is None or all(static(d) == 1 for d in shape):
        return "its shape is unknown or has no axis to chunk"
    # The region from the tensor to its last reader: the one that must exist for it to be
    # made chunk by chunk. The tracer says why it does not.
    refusals = []
    for end in (used_until, p):
        outputs = region_outputs(func, p, end)
        if not outputs or len(outputs) > MAX_OUTPUTS:
            refusals.append(f"[{p}-{end}] has {len(outputs)} outputs")
            continue
        combos = list(aligned_combinations(outputs))
        if not combos:
            refusals.append(f"[{p}-{end}]: its outputs share no chunk axis")
        for combo in combos:
            axes = {v.name: a for v, a in zip(outputs, combo)}
            try:
                trace_region(func, p, end, axes)
            except CantChunk as err:
                refusals.append(f"[{p}-{end}] on axis {combo[0]}: {err}")
                continue
            if end == used_until:
                return (
                    f"region [{p}-{end}] through its last reader is legal but was not "
                    "chosen (it did not lower the peak within the search's beam)"
                )
            break
    if not refusals:
        return "not chunked"
    unique = list(dict.fromkeys(refusals))
    return "no region takes it in: " + "; ".join(unique[:3])


def _returned_through_views(bindings, last_use, p: int) -> bool:
    """Whether the tensor of binding ``p`` reaches the function's return through views only
    (a language model's logits, reshaped and returned): its storage is the output's."""
    names = {bindings[p].var.name}
    for k in range(p + 1, len(bindings)):
        binding = bindings[k]
        if is_view(binding) and any(
            isinstance(arg, relax.Var) and arg.name in names for arg in _operands(binding.value)
        ):
            names.add(binding.var.name)
            if last_use.get(binding.var, k) >= len(bindings):
                return True
    return False


def _operands(value: relax.Expr) -> list:
    if isinstance(value, relax.Call):
        return list(value.args)
    if isinstance(value, relax.TupleGetItem):
        return [value.tuple_value]
    if isinstance(value, relax.Tuple):
        return list(value.fields)
    return [value]
