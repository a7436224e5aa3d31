"""AutoChunk's passes, to drop into any TVM pass pipeline.

* :class:`AutoChunk` (``auto_chunk.py``) - the whole method: estimate, search, select, lower.
  Runs on high-level Relax, before legalization.
* :func:`apply_selection` - stage 4 for a selection made apart (``select_plan``): the plan
  lowered, and for symbolic lengths the bounds stated and checked.
* :func:`LowerChunkPlan` - stage 4 alone: apply a given chunk plan. Every planned region of
  the Relax module becomes one ``call_tir`` to a composite PrimFunc that loops over chunks.
"""

from __future__ import annotations

from typing import Any

import tvm

from ..lowering import ChunkPlan, lower_chunk_plan
from .auto_chunk import AutoChunk, apply_selection
from .target import pass_target


def LowerChunkPlan(plan: ChunkPlan, target: Any = None) -> tvm.transform.Pass:
    """A module pass applying ``plan`` (see :mod:`autochunk_tvm.lowering`).

    ``target`` is the target the module will be built for (``"llvm"``, ``"cuda"``, a dict or a
    ``Target``); without it, the current ``with target:`` scope is used. Per-chunk kernels are
    legalized and scheduled for it, so it must be the target of the later ``relax.build``.
    """

    @tvm.transform.module_pass(opt_level=0, name="autochunk.LowerChunkPlan")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return lower_chunk_plan(mod, plan, pass_target(target, "LowerChunkPlan"))

    return _pass


__all__ = ["AutoChunk", "LowerChunkPlan", "apply_selection"]
