"""AutoChunk's passes, to drop into any TVM pass pipeline.

* ``AutoChunk(budget)`` - the whole method: estimate, search, select, lower. Runs on high-level
  Relax, before legalization.
* ``LowerChunkPlan(plan, target)`` - stage 4 alone: apply a given chunk plan. Every planned
  region of the Relax module becomes one ``call_tir`` to a composite PrimFunc that loops over
  chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm

from ..lowering import ChunkPlan, lower_chunk_plan


def _target(target: Any, pass_name: str) -> Any:
    chosen = target if target is not None else tvm.target.Target.current(allow_none=True)
    if chosen is None:
        raise ValueError(
            f"{pass_name} needs the build target: pass target='llvm' or 'cuda', or run the "
            "pass inside `with tvm.target.Target(...):`"
        )
    return chosen


def LowerChunkPlan(plan: ChunkPlan, target: Any = None) -> tvm.transform.Pass:
    """A module pass applying ``plan`` (see :mod:`autochunk_tvm.lowering`).

    ``target`` is the target the module will be built for (``"llvm"``, ``"cuda"``, a dict or a
    ``Target``); without it, the current ``with target:`` scope is used. Per-chunk kernels are
    legalized and scheduled for it, so it must be the target of the later ``relax.build``.
    """

    @tvm.transform.module_pass(opt_level=0, name="autochunk.LowerChunkPlan")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return lower_chunk_plan(mod, plan, _target(target, "LowerChunkPlan"))

    return _pass


def AutoChunk(
    budget: int | float | str,
    *,
    target: Any = None,
    func_name: str = "main",
    strict: bool = True,
    tune: bool = False,
    on_selection: Callable[[Any], None] | None = None,
    **options: Any,
) -> tvm.transform.Pass:
    """The AutoChunk pass: chunk the regions that keep ``func_name`` over a memory budget.

    Parameters
    ----------
    budget
        Bytes the built function may allocate during one call (intermediates, outputs and
        kernel workspace; inputs and weights are not counted): an ``int`` in bytes, a
        ``float`` in (0, 1] as a fraction of the unchunked peak, or a string such as
        ``"2GiB"``, ``"512MB"`` or ``"20%"``.
    target
        The target of the later build; default: the current ``with target:`` scope.
    strict
        When no plan meets the budget: raise
        :class:`~autochunk_tvm.BudgetUnreachableError` carrying the smallest reachable peak
        (``True``), or warn and apply the plan with the smallest peak found (``False``).
    tune
        Time the best plans on the target's device and keep the fastest.
    on_selection
        Called with the :class:`~autochunk_tvm.selection.Selection` (the plan, its estimates);
        e.g. ``PlanReport.of(mod, selection)`` for the report.
    options
        Passed to :func:`~autochunk_tvm.selection.select_plan` (``beam_width``, ``top_k``,
        ``max_chunks``, ``headroom``, ``cost_model``, ``bounds``).

    A budget the unchunked build already meets returns the module unchanged (the same
    object). On any error the input module is unchanged.
    """
    import inspect

    from ..selection import select_plan

    known = set(inspect.signature(select_plan).parameters) - {"mod", "budget", "target"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(
            f"AutoChunk got unknown option(s) {sorted(unknown)}; the options are {sorted(known)}"
        )

    @tvm.transform.module_pass(opt_level=0, name="autochunk.AutoChunk")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        chosen = _target(target, "AutoChunk")
        selection = select_plan(
            mod, budget, chosen, func_name=func_name, strict=strict, tune=tune, **options
        )
        if on_selection is not None:
            on_selection(selection)
        if not selection.plan.steps:
            return mod
        return lower_chunk_plan(mod, selection.plan, chosen)

    return _pass


__all__ = ["AutoChunk", "LowerChunkPlan"]
