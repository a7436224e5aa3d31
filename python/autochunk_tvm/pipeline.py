"""One-call build, and the ``"autochunk"`` Relax pipeline.

``build(mod, target, budget)`` is ``relax.build`` with AutoChunk in front of the target's own
pipeline (the same pipeline ``relax.build`` picks: the backend pipeline with dlight for GPU
targets, the generic one for CPU). The pipeline is registered, so that

    relax.build(mod, target, relax_pipeline=relax.get_pipeline("autochunk", budget=0.2))

does the same.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from . import console
from .analysis.planned import as_target
from .transform import AutoChunk


def cuda_kernels_compile_at_build() -> bool:
    """Whether a CUDA build in this process compiles its kernels to a binary.

    TVM does so only when its CUDA runtime library is loaded, which needs the CUDA driver
    (``libcuda.so.1``; not a GPU). Without it a CUDA library keeps the kernels' source, and TVM
    compiles it when the library is loaded, through its Python compiler: the TVM runtime alone
    (the C++ runner, a deployment without the TVM wheel) cannot load such a library.
    """
    from tvm.base import _LOADED_LIBS

    return "tvm_runtime_cuda" in _LOADED_LIBS


def _target_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    # Mirrors relax.build's choice for relax_pipeline="default" (tvm/relax/vm_build.py).
    if "gpu" in target.keys:
        return relax.get_default_pipeline(target)
    return relax.get_pipeline("default")


def autochunk_pipeline(budget: int | float | str, target: Any = None, **options: Any):
    """AutoChunk, then the target's default Relax pipeline, as one pass. ``target`` defaults
    to the current target scope (``relax.build`` opens one); ``options`` go to
    :func:`~autochunk_tvm.transform.AutoChunk`."""

    chunk = AutoChunk(budget, target=target, **options)  # checks the options now

    @tvm.transform.module_pass(opt_level=0, name="autochunk.pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        tgt = as_target(target) if target is not None else tvm.target.Target.current()
        if tgt is None:
            raise ValueError("the autochunk pipeline needs a target: relax.build(mod, target)")
        with tgt, console.native_stderr_filtered():  # the target pipeline legalizes too
            return _target_pipeline(tgt)(chunk(mod))

    return _pipeline


if "autochunk" not in relax.pipeline.PIPELINE_MAP:
    relax.register_pipeline("autochunk")(autochunk_pipeline)


def build(
    mod: tvm.IRModule,
    target: Any = "llvm",
    budget: int | float | str | None = None,
    **options: Any,
) -> relax.VMExecutable:
    """Compile a high-level Relax module with AutoChunk to a Relax executable.

    Parameters
    ----------
    mod
        As imported (:func:`~autochunk_tvm.from_torch`), before legalization.
    target
        ``"llvm"``, ``"cuda"`` (sm_80), a dict such as ``{"kind": "cuda", "arch": "sm_90"}``,
        or a ``tvm.target.Target``.
    budget
        See :func:`~autochunk_tvm.transform.AutoChunk`; ``None`` builds without chunking.
    options
        Passed to :func:`~autochunk_tvm.transform.AutoChunk` (``strict``, ``tune``,
        ``on_selection``, ``beam_width``, ...).

    Returns
    -------
    The executable: run it with ``relax.VirtualMachine``, save it with ``export_library``.
    """
    if not isinstance(mod, tvm.IRModule):
        raise TypeError(
            f"build expects a Relax tvm.IRModule (from autochunk_tvm.from_torch), got "
            f"{type(mod).__qualname__}"
        )
    tgt = as_target(target)
    # The target scope reaches the CUDA kernels' compiler, which reads the arch from it when it
    # runs at build time (where the CUDA driver is installed) and no GPU is there to ask.
    # TVM's native warnings that a user cannot act on are held back (console.py).
    with tgt, console.native_stderr_filtered():
        if budget is None:
            return relax.build(mod, target=tgt)
        pipeline = autochunk_pipeline(budget, tgt, **options)
        return relax.build(mod, target=tgt, relax_pipeline=pipeline)
