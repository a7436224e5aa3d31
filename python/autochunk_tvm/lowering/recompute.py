"""Recompute a shared value right before each of its readers (NOTE [recompute shared masks],
search/recompute.py, says which values and why)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import tvm
from tvm import relax

from ..analysis.memory import read_vars
from ..search.recompute import Recomputable
from ..search.rewrite import substitute
from .plan import ChunkPlanError


def recompute_at_readers(mod: tvm.IRModule, values: Sequence[Recomputable]) -> tvm.IRModule:
    """A new module in which each of ``values`` is computed afresh, chain and all, right
    before each of its readers, and its first computation is gone.

    Every other binding keeps its variable and its place; a copy's variables are named
    ``<binding>_for_<reader>``. ``mod`` is not changed (and is returned for no values).

    Raises
    ------
    ChunkPlanError
        When a value, its chain or a reader is not found in its function as recorded (the
        records were found on another module: find them again on this one).
    """
    for func_name in dict.fromkeys(v.function for v in values):
        mod = _recompute_in(mod, func_name, [v for v in values if v.function == func_name])
    return mod


def _recompute_in(
    mod: tvm.IRModule, func_name: str, values: Sequence[Recomputable]
) -> tvm.IRModule:
    names = {gv.name_hint for gv in mod.get_global_vars()}
    if func_name not in names or not isinstance(mod[func_name], relax.Function):
        raise ChunkPlanError(
            f"recomputing {values[0].name}: the module has no Relax function {func_name!r}"
        )
    func = mod[func_name]
    bindings = {}
    readers_of: dict[str, set[str]] = {}  # by name: the bindings that read it
    for block in func.body.blocks:
        for binding in block.bindings[:]:
            if binding.var.name in bindings or not isinstance(block, relax.DataflowBlock):
                bindings[binding.var.name] = None  # bound twice, or outside dataflow: not ours
            else:
                bindings[binding.var.name] = binding
            for var in read_vars(binding.value):
                readers_of.setdefault(var.name, set()).add(binding.var.name)
    for var in relax.analysis.free_vars(func.body.body):
        readers_of.setdefault(var.name, set()).add("the function's output")
    dropped: set[str] = set()
    copies_before: dict[str, list[Recomputable]] = {}
    for value in values:
        names = value.chain + value.readers
        missing = [n for n in names if bindings.get(n) is None]
        if missing or value.chain[-1] != value.name:
            raise ChunkPlanError(
                f"recomputing {value.name} in {func_name}: no single binding named "
                f"{missing[0] if missing else value.name!r} in a dataflow block, where the "
                "record says; it was found on another module (find it again on this one)"
            )
        dropped.update(value.chain)
        for reader in value.readers:
            copies_before.setdefault(reader, []).append(value)
    # Whatever read a dropped binding must get a copy: the readers recorded, and the chain.
    for value in values:
        unread = set(value.readers) - readers_of.get(value.name, set())
        what = f"{sorted(unread)[0]} does not read {value.name}" if unread else None
        for link in value.chain:
            expected = set(value.chain) | (set(value.readers) if link == value.name else set())
            stray = readers_of.get(link, set()) - expected
            what = what or (f"{sorted(stray)[0]} reads {link}" if stray else None)
        if what is not None:
            raise ChunkPlanError(
                f"recomputing {value.name} in {func_name}: {what}, unlike where the record "
                "was found: it was found on another module (find it again on this one)"
            )
    clash = dropped & set(copies_before)
    if clash:
        raise ChunkPlanError(
            f"recomputing in {func_name}: {sorted(clash)[0]} is both recomputed and a reader "
            "of a recomputed value; chains must not overlap"
        )

    def rebuilt(binding: relax.Binding, env) -> relax.Binding:
        value = bb.normalize(substitute(binding.value, env))
        if isinstance(binding, relax.MatchCast):
            return relax.MatchCast(binding.var, value, binding.ty)
        return relax.VarBinding(binding.var, value)

    attrs = dict(func.attrs) if func.attrs is not None else None
    private = not (func.attrs and "global_symbol" in func.attrs)
    bb = relax.BlockBuilder()
    with bb.function(func_name, list(func.params), attrs=attrs, pure=func.is_pure, private=private):
        for block in func.body.blocks:
            dataflow = isinstance(block, relax.DataflowBlock)
            with bb.dataflow() if dataflow else contextlib.nullcontext():
                for binding in block.bindings[:]:
                    name = binding.var.name
                    if name in dropped:
                        continue
                    env: dict[relax.Expr, relax.Expr] = {}
                    for value in copies_before.get(name, ()):
                        for link in value.chain:
                            original = bindings[link]
                            copy = relax.DataflowVar(f"{link}_for_{name}", original.var.ty)
                            recomputed = bb.normalize(substitute(original.value, env))
                            bb.emit_normalized(relax.VarBinding(copy, recomputed))
                            env[original.var] = copy
                    bb.emit_normalized(rebuilt(binding, env) if env else binding)
        bb.emit_func_output(func.body.body)
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out[func_name] = bb.get()[func_name]
    return relax.transform.Normalize()(out)
