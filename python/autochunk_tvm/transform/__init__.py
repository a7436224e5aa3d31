"""AutoChunk's passes, to drop into any TVM pass pipeline.

``LowerChunkPlan(plan, target)`` applies a chunk plan (stage 4 alone): every planned region of
the Relax module becomes one ``call_tir`` to a composite PrimFunc that loops over chunks.
"""

from __future__ import annotations

from typing import Any

import tvm

from ..lowering import ChunkPlan, lower_chunk_plan


def LowerChunkPlan(plan: ChunkPlan, target: Any = None) -> tvm.transform.Pass:
    """A module pass applying ``plan`` (see :mod:`autochunk_tvm.lowering`).

    ``target`` is the target the module will be built for (``"llvm"``, ``"cuda"``, a dict or a
    ``Target``); without it, the current ``with target:`` scope is used. Per-chunk kernels are
    legalized and scheduled for it, so it must be the target of the later ``relax.build``.
    """

    @tvm.transform.module_pass(opt_level=0, name="autochunk.LowerChunkPlan")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        chosen = target if target is not None else tvm.target.Target.current(allow_none=True)
        if chosen is None:
            raise ValueError(
                "LowerChunkPlan needs the build target: pass target='llvm' or 'cuda', or run "
                "the pass inside `with tvm.target.Target(...):`"
            )
        return lower_chunk_plan(mod, plan, chosen)

    return _pass


__all__ = ["LowerChunkPlan"]
