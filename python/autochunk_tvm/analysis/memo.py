"""A memo keyed by IR nodes compared structurally: the structural hash finds the entries,
structural equality confirms one (two nodes may share a hash)."""

from __future__ import annotations

from typing import Any

import tvm_ffi


# How many nodes a memo knows by handle before it forgets them (NOTE [identity first]).
_IDENTITY_LIMIT = 4096


class StructuralMemo:
    """Values by IR node (a PrimFunc, a Relax function) and any hashable ``extra`` key parts
    (the target, a chunk length). ``limit``: the number of distinct keys kept before the memo
    is cleared, or ``None`` for no limit.

    NOTE [identity first]: the modules of successive selection plans share most of their
    functions as the very same objects, so a node seen before is found by its handle first;
    only a node new to the memo pays for a structural hash (a tenth of a CPU estimate when
    every kernel was hashed). The nodes known by handle are kept alive (so that a handle
    stays theirs) and are bounded: GPU plans fuse new kernel objects every time.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._entries: dict[tuple, list[tuple[Any, Any]]] = {}
        # (handle, *extra) -> (node, value); the node is kept so the handle stays its own.
        self._identity: dict[tuple, tuple[Any, Any]] = {}
        self._limit = limit

    def get(self, node, *extra) -> Any | None:
        """The value stored for a node structurally equal to ``node``, or None."""
        same = self._identity.get((node.__chandle__(), *extra))
        if same is not None:
            return same[1]
        for seen, value in self._entries.get((tvm_ffi.structural_hash(node), *extra), ()):
            if tvm_ffi.structural_equal(seen, node):
                self._remember(node, value, extra)
                return value
        return None

    def put(self, node, value, *extra) -> None:
        if self._limit is not None and len(self._entries) >= self._limit:
            self._entries.clear()
            self._identity.clear()
        self._entries.setdefault((tvm_ffi.structural_hash(node), *extra), []).append((node, value))
        self._remember(node, value, extra)

    def _remember(self, node, value, extra: tuple) -> None:
        if len(self._identity) >= _IDENTITY_LIMIT:
            self._identity.clear()
        self._identity[(node.__chandle__(), *extra)] = (node, value)
