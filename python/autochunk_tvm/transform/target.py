"""The target a pass of this package compiles for: its argument, or the current scope."""

from __future__ import annotations

from typing import Any

import tvm


def pass_target(target: Any, pass_name: str) -> Any:
    """``target`` when given, else the current ``with tvm.target.Target(...)`` scope."""
    chosen = target if target is not None else tvm.target.Target.current(allow_none=True)
    if chosen is None:
        raise ValueError(
            f"{pass_name} needs the build target: pass target='llvm' or 'cuda', or run the "
            "pass inside `with tvm.target.Target(...):`"
        )
    return chosen
