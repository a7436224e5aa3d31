"""A memo keyed by IR nodes compared structurally: the structural hash finds the entries,
structural equality confirms one (two nodes may share a hash)."""

from __future__ import annotations

from typing import Any

import tvm_ffi


class StructuralMemo:
    """Values by IR node (a PrimFunc, a Relax function) and any hashable ``extra`` key parts
    (the target, a chunk length). ``limit``: the number of distinct keys kept before the memo
    is cleared, or ``None`` for no limit."""

    def __init__(self, limit: int | None = None) -> None:
        self._entries: dict[tuple, list[tuple[Any, Any]]] = {}
        self._limit = limit

    def get(self, node, *extra) -> Any | None:
        """The value stored for a node structurally equal to ``node``, or None."""
        for seen, value in self._entries.get((tvm_ffi.structural_hash(node), *extra), ()):
            if tvm_ffi.structural_equal(seen, node):
                return value
        return None

    def put(self, node, value, *extra) -> None:
        if self._limit is not None and len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries.setdefault((tvm_ffi.structural_hash(node), *extra), []).append((node, value))
