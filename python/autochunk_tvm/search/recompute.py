"""Values worth recomputing next to each reader: the masks that pin a whole model.

NOTE [recompute shared masks]: a model often computes one large tensor from small ones
early and reads it in every layer: the causal mask of a `transformers` decoder is ``(1, 1, S,
S)`` floats built from two ``arange``s and the ``(1, S)`` attention mask, and every layer adds
it to its attention scores. Kept, it is live from the first layer to the last, and since no
region of one layer can take in a value that the others read too (a region is one run of
bindings), no plan can chunk it: it sets a floor under every plan (4 MiB of the 8.6 MiB that a
20% budget allows a 2-layer Llama at S = 1024 on CUDA). Computed afresh right before each
reader instead, from the small tensors it came from, every copy has one reader in one layer:
the attention region of that layer takes it in and computes it a chunk at a time, and on a GPU
FuseOps folds it into the kernel that reads it, so it is never stored at all.

A value qualifies when (:func:`find_recomputable`):

- it is read by two or more bindings of its dataflow block, and not by anything after the
  block (the function's output, a binding outside the block);
- it is computed by cheap ops (elementwise, broadcasts, reshapes, ``arange``/``full``,
  ``tril``/``triu``: no reductions, no matmuls, no gathers) from leaves that are parameters,
  constants or tensors at most 1/8 of its size, so the copies keep only small tensors alive;
- the large tensors on the way (its *chain*) are read only within the chain, so that nothing
  else keeps the original computation alive;
- it has at least ``MIN_BYTES``: smaller values are not worth the extra work;
- the names of its chain and readers are each bound once in the function: a record names
  them, and lowering finds them again by name.

What a reader's copy costs is the chain's elementwise work once more per reader: next to the
attention it feeds (a matmul over the same ``S * S`` elements, a softmax) it is small, and on
a GPU, fused into its reader, it is cheaper than reading the stored mask.
The rewrite itself is :func:`~autochunk_tvm.lowering.recompute.recompute_at_readers`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import tvm
from tvm import relax

from ..analysis.memory import handle, read_vars
from ..analysis.sizes import evaluate, type_bytes, upper_bounds
from ..analysis.views import op_name
from .rules.elementwise import BINARY, UNARY

logger = logging.getLogger("autochunk_tvm")

# Ops a copy may recompute: no reduction, no contraction, no gather.
CHEAP_OPS = frozenset(
    [f"relax.{name}" for name in UNARY + BINARY]
    + [
        f"relax.{name}"
        for name in (
            "broadcast_to",
            "expand_dims",
            "squeeze",
            "reshape",
            "permute_dims",
            "full",
            "zeros",
            "ones",
            "full_like",
            "zeros_like",
            "ones_like",
            "arange",
            "tril",
            "triu",
        )
    ]
)
# A leaf is small when it has at most this fraction of the value's bytes.
LEAF_FRACTION = 8
# Values below this size are left where they are.
MIN_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Recomputable:
    """A value that is computed afresh before each of its readers.

    Attributes
    ----------
    function
        The Relax function.
    name
        The value (a binding's variable name).
    chain
        The bindings each copy recomputes, in program order, ``name`` last.
    readers
        The bindings that read ``name``: each gets its own copy.
    nbytes
        Bytes of the value (at the function's upper bounds, for symbolic shapes).
    """

    function: str
    name: str
    chain: tuple[str, ...]
    readers: tuple[str, ...]
    nbytes: int


def find_recomputable(
    mod: tvm.IRModule, func_name: str = "main", min_bytes: int = MIN_BYTES
) -> tuple[Recomputable, ...]:
    """The values of function ``func_name`` that qualify for a copy per reader (NOTE
    [recompute shared masks]), in program order. Chains do not overlap."""
    func = mod[func_name]
    if not isinstance(func.body, relax.SeqExpr):
        return ()
    bounds = upper_bounds(func)
    bindings: list[relax.Binding] = []
    block_of: dict[int, int] = {}  # by handle: the number of its dataflow block, -1 outside
    for number, block in enumerate(func.body.blocks[:]):
        dataflow = isinstance(block, relax.DataflowBlock)
        for binding in block.bindings[:]:
            block_of[handle(binding.var)] = number if dataflow else -1
            bindings.append(binding)
    index_of = {handle(b.var): i for i, b in enumerate(bindings)}
    readers: dict[int, list[int]] = {}
    for position, binding in enumerate(bindings):
        for key in dict.fromkeys(handle(v) for v in read_vars(binding.value)):
            readers.setdefault(key, []).append(position)  # once per reader
    escaping = {handle(v) for v in relax.analysis.free_vars(func.body.body)}
    bound: Counter | None = None  # bindings per name, counted when first needed

    def nbytes(var: relax.Var) -> int | None:
        size = type_bytes(var.ty)
        if size is None:
            return None
        try:
            return evaluate(size, bounds)
        except ValueError:
            return None

    taken: set[int] = set()
    found: list[Recomputable] = []
    for position in range(len(bindings) - 1, -1, -1):
        binding = bindings[position]
        var = binding.var
        key = handle(var)
        if key in taken or block_of[key] < 0 or op_name(binding.value) not in CHEAP_OPS:
            continue
        mine = readers.get(key, [])
        if len(mine) < 2 or key in escaping:  # before the size: most values have one reader
            continue
        size = nbytes(var)
        if size is None or size < min_bytes:
            continue
        if any(block_of[handle(bindings[r].var)] != block_of[key] for r in mine):
            continue
        chain = _chain(binding, size, block_of[key], bindings, index_of, block_of, nbytes)
        if chain is None:
            continue
        members = set(chain)
        inner = [p for p in chain if p != position]
        if any(r not in members for p in inner for r in readers.get(handle(bindings[p].var), [])):
            logger.debug("%s is not recomputed: its chain is read outside it", var.name)
            continue
        if any(handle(bindings[p].var) in escaping for p in inner):
            continue
        # A record names its bindings: a name bound twice could not be found again by it.
        if bound is None:
            bound = Counter(b.var.name for b in bindings)
        if any(bound[bindings[p].var.name] > 1 for p in chain + mine):
            logger.debug("%s is not recomputed: a binding of it has a name bound twice", var.name)
            continue
        taken.update(handle(bindings[p].var) for p in chain)
        found.append(
            Recomputable(
                function=func_name,
                name=var.name,
                chain=tuple(bindings[p].var.name for p in chain),
                readers=tuple(bindings[r].var.name for r in mine),
                nbytes=size,
            )
        )
    return tuple(reversed(found))


def _chain(root, size, block, bindings, index_of, block_of, nbytes) -> list[int] | None:
    """Positions of the bindings a copy of ``root`` recomputes, sorted; None when a large
    input of the chain is not cheap to recompute (or not in the same block)."""
    seen = {index_of[handle(root.var)]}
    stack = [root]
    while stack:
        binding = stack.pop()
        for var in read_vars(binding.value):
            key = handle(var)
            if key not in index_of:
                continue  # a parameter
            arg_size = nbytes(var)
            if arg_size is not None and arg_size * LEAF_FRACTION <= size:
                continue  # a small leaf, shared by the copies
            position = index_of[key]
            if position in seen:
                continue
            source = bindings[position]
            if block_of[key] != block or op_name(source.value) not in CHEAP_OPS:
                return None
            seen.add(position)
            stack.append(source)
    return sorted(seen)
