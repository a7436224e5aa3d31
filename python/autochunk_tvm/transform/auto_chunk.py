"""The AutoChunk pass: estimate, search, select and lower, as one module pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tvm

from .. import console
from ..analysis.memory import check_module
from ..lowering import guard_bounds, lower_chunk_plan, with_bounds
from ..selection import CostModel, Selection, select_plan
from ..selection.budget import check_budget
from ..selection.select import check_settings
from .target import pass_target


class _AutoChunk:
    """The AutoChunk pass: chunk the regions that keep ``func_name`` over a memory budget.

    Runs on high-level Relax, before legalization; the module it returns goes on through the
    target's own pipeline (:func:`~autochunk_tvm.pipeline.autochunk_pipeline` does both).

    Parameters
    ----------
    budget
        Bytes the built function may allocate during one call (intermediates, outputs and
        kernel workspace; inputs and weights are not counted): an integer in bytes, a float
        in (0, 1] as a fraction of the unchunked peak, or a string such as ``"2GiB"``,
        ``"512MB"`` or ``"20%"``. Checked when the pass is made.
    target
        The target of the later build (``"llvm"``, ``"cuda"``, a dict or a ``Target``);
        default: the current ``with target:`` scope when the pass runs.
    func_name
        The function to chunk.
    strict
        When no plan meets the budget: raise
        :class:`~autochunk_tvm.BudgetUnreachableError` carrying the smallest reachable peak
        (``True``), or warn and apply the plan with the smallest peak found (``False``).
    tune
        Time the best plans on the target's device and keep the fastest.
    on_selection
        Called with the :class:`~autochunk_tvm.selection.Selection` (the plan, its
        estimates); e.g. ``PlanReport.of(mod, selection)`` for the report.
    beam_width, top_k, max_chunks, max_stages, headroom, cost_model, hoist, bounds
        Selection settings; see :func:`~autochunk_tvm.selection.select_plan`.

    A function with symbolic input dims (a dynamic sequence length) is chunked for every
    length up to their upper bounds: the function's ``tir_var_upper_bound`` (torch.export's
    ``Dim(..., max=...)``), or ``bounds={"seq": 8192}``. The budget holds at the bounds and,
    since the build plans its memory for them, at every shorter length; the returned
    function refuses a longer input with a message that names the dim.

    A budget the unchunked build already meets returns the module unchanged (the same
    object), unless ``bounds=`` gave bounds the function did not state. On any error the
    input module is unchanged.
    """

    def __init__(
        self,
        budget: int | float | str,
        *,
        target: Any = None,
        func_name: str = "main",
        strict: bool = True,
        tune: bool = False,
        on_selection: Callable[[Selection], None] | None = None,
        beam_width: int = 3,
        top_k: int = 3,
        max_chunks: int = 64,
        max_stages: int = 64,
        headroom: float = 0.03,
        cost_model: CostModel | None = None,
        hoist: bool = True,
        bounds: Mapping[str, int] | None = None,
    ) -> None:
        check_budget(budget)
        check_settings(
            beam_width=beam_width,
            top_k=top_k,
            max_chunks=max_chunks,
            max_stages=max_stages,
            headroom=headroom,
        )
        if on_selection is not None and not callable(on_selection):
            raise TypeError(f"on_selection must be callable, got {type(on_selection).__name__}")
        self.budget = budget
        self.target = target
        self.func_name = func_name
        self.strict = strict
        self.tune = tune
        self.on_selection = on_selection
        self.settings = dict(
            beam_width=int(beam_width),
            top_k=int(top_k),
            max_chunks=int(max_chunks),
            max_stages=int(max_stages),
            headroom=float(headroom),
            cost_model=cost_model,
            hoist=hoist,
            bounds=bounds,
        )

    @console.holds_back_native_noise
    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # 0. What is chunked, and for which build.
        check_module(mod, self.func_name, "AutoChunk")
        target = pass_target(self.target, "AutoChunk")
        # 1-3. Estimate, search and select: the plan, with its predicted memory and cost.
        selection = select_plan(
            mod,
            self.budget,
            target,
            func_name=self.func_name,
            strict=self.strict,
            tune=self.tune,
            **self.settings,
        )
        if self.on_selection is not None:
            self.on_selection(selection)
        # 4. Lower: every chosen region becomes one call_tir to a loop over its chunks.
        return apply_selection(mod, selection, target, self.func_name)


def apply_selection(
    mod: tvm.IRModule, selection: Selection, target: Any, func_name: str = "main"
) -> tvm.IRModule:
    """``mod`` with the selected plan lowered: ``mod`` itself when the plan is empty (no steps,
    nothing recomputed) and the function's shapes are static (or its bounds all its own).

    For symbolic lengths, the function also states the bounds the plan was selected at, for
    which the build plans its memory, and checks a call's lengths against them first (NOTE
    [symbolic selection], selection/symbolic.py).
    """
    plan = selection.plan
    changes = bool(plan.steps or plan.recompute)
    if not changes and not selection.bounds_given:
        return mod
    chunked = lower_chunk_plan(mod, plan, target) if changes else mod
    if selection.bounds:
        chunked = with_bounds(chunked, func_name, selection.bounds_given)
        chunked = guard_bounds(chunked, func_name, selection.bounds)
    return chunked


_AutoChunkPass = tvm.transform.module_pass(opt_level=0, name="autochunk.AutoChunk")(_AutoChunk)


class AutoChunk(_AutoChunkPass):
    __doc__ = _AutoChunk.__doc__

    def __call__(self, mod):
        # Pass.__call__ would fail on anything but a module with an FFI type error.
        if not isinstance(mod, tvm.IRModule):
            check_module(mod, self.func_name, "AutoChunk")
        return super().__call__(mod)
