"""Import a PyTorch model into a Relax IRModule.

``from_torch`` runs ``torch.export`` and then TVM's ExportedProgram importer, with the converters
of :mod:`.converters` layered over the importer's own. Ops the importer cannot translate are
reported up front, as the user's code calls them, with what to do about them
(:mod:`.unsupported`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import tvm

from .. import console
from ..analysis.sizes import input_dims
from .converters import CONVERTERS, keep_torch_dtype
from .sources import SourceRecorder
from .unsupported import UnsupportedOperatorError, converter_key, find_unsupported

logger = logging.getLogger("autochunk_tvm")

__all__ = ["UnsupportedOperatorError", "decompositions_for", "from_exported_program", "from_torch"]


def decompositions_for(names: Iterable[str]) -> dict[Any, Callable]:
    """torch's decompositions of the named ops, for ``from_torch(..., decompose=names)``.

    Parameters
    ----------
    names
        Op names as the import error prints them: ``"aten.addmv.default"``; the namespace may
        be left out (``"addmv.default"``), and so may the overload (``"aten.addmv"`` takes every
        overload that torch has a decomposition for).

    Returns
    -------
    dict
        ``{OpOverload: decomposition}`` from ``torch._decomp.decomposition_table``.

    Raises
    ------
    ValueError
        A name that is no op, or an op torch has no decomposition for.
    """
    import torch
    from torch._decomp import decomposition_table

    table: dict[Any, Callable] = {}
    for name in names:
        parts = name.replace("::", ".").split(".")
        namespace = parts.pop(0) if len(parts) == 3 or parts[0] in ("aten", "prims") else "aten"
        if len(parts) not in (1, 2) or not all(parts):
            raise ValueError(
                f"cannot decompose {name!r}: give an op as the import error names it, "
                "namespace.op.overload (e.g. aten.addmv.default)"
            )
        try:
            packet = getattr(getattr(torch.ops, namespace), parts[0])
        except (AttributeError, RuntimeError) as err:
            raise ValueError(
                f"cannot decompose {name!r}: torch has no op {namespace}.{parts[0]}; give an "
                "op as the import error names it (e.g. aten.addmv.default)"
            ) from err
        overloads = parts[1:] or packet.overloads()
        unknown = [o for o in overloads if o not in packet.overloads()]
        if unknown:
            raise ValueError(
                f"cannot decompose {name!r}: {namespace}.{parts[0]} has no overload "
                f"{unknown[0]!r}; it has {', '.join(packet.overloads())}"
            )
        found = {
            op: decomposition_table[op]
            for op in (getattr(packet, o) for o in overloads)
            if op in decomposition_table
        }
        if not found:
            raise ValueError(
                f"cannot decompose {name!r}: torch has no decomposition for it (none in "
                "torch._decomp.decomposition_table); give it a converter instead: "
                "--converters FILE on the command line, custom_convert_map= from Python"
            )
        table.update(found)
    return table


def _is_torch_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _as_exported_program(model: Any, example_args: Sequence[Any] | None, dynamic_shapes: Any):
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model
    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no saved ExportedProgram at {path!r}")
        try:
            return torch.export.load(path)
        except Exception as err:
            raise ValueError(
                f"{path!r} is not a torch.export program saved with torch.export.save(); "
                f"loading it failed with: {err}"
            ) from err
    if _is_torch_module(model):
        if example_args is None:
            raise TypeError(
                "from_torch(module, example_args): a torch.nn.Module needs example_args, the "
                "tuple of tensors its forward() takes"
            )
        if not isinstance(example_args, tuple | list):
            example_args = (example_args,)
        logger.info("torch.export of %s", type(model).__name__)
        return torch.export.export(model.eval(), tuple(example_args), dynamic_shapes=dynamic_shapes)
    raise TypeError(
        "from_torch expects a torch.nn.Module (with example_args), a "
        "torch.export.ExportedProgram, a path to a .pt2 file saved by torch.export.save, or a "
        f"tvm.IRModule; got {type(model).__module__}.{type(model).__qualname__}"
    )


def from_exported_program(
    ep,
    *,
    keep_params_as_input: bool = False,
    run_ep_decomposition: bool = True,
    custom_convert_map: Mapping[str, Any] | None = None,
    decompose: Sequence[str] = (),
) -> tvm.IRModule:
    """Translate a ``torch.export.ExportedProgram`` to Relax with our converters applied.

    Parameters and errors are those of :func:`from_torch`.
    """
    import torch
    from tvm.relax.frontend.torch import exported_program_translator as ept

    extra = decompositions_for(decompose)
    # NOTE [decomposition]: done here rather than inside TVM's wrapper so that the check for
    # unsupported ops sees the same graph that the importer will translate.
    table: Any = None
    if run_ep_decomposition:
        table = torch.export.default_decompositions()
        for op, fn in extra.items():
            table[op] = fn
    elif extra:
        table = extra
    if table is not None:
        with console.torch_warnings_filtered():  # torch's own deprecated pytree path
            ep = ep.run_decompositions(table)
    custom = {converter_key(name): fn for name, fn in (custom_convert_map or {}).items()}
    convert_map = {**CONVERTERS, **custom}
    importer = ept.ExportedProgramImporter()
    # NOTE [binding sources]: every converter is wrapped to note which torch call and module
    # each binding comes from; the importer keeps neither (analysis/sources.py).
    recorder = SourceRecorder()
    importer.convert_map = {
        name: recorder.wrap(keep_torch_dtype(fn, importer))
        for name, fn in importer.convert_map.items()
    }
    known = {**importer.convert_map, **convert_map}
    missing = find_unsupported(ep.graph, known, custom, table if table is not None else {})
    if missing:
        raise UnsupportedOperatorError(missing)
    mod = importer.from_exported_program(
        ep,
        keep_params_as_input,
        False,  # unwrap_unit_return_tuple
        False,  # no_bind_return_tuple
        {name: recorder.wrap(fn) for name, fn in convert_map.items()},
    )
    return recorder.attach(mod)


def from_torch(
    model: Any,
    example_args: Sequence[Any] | None = None,
    *,
    dynamic_shapes: Any = None,
    keep_params_as_input: bool = False,
    run_ep_decomposition: bool = True,
    custom_convert_map: Mapping[str, Any] | None = None,
    decompose: Sequence[str] = (),
) -> tvm.IRModule:
    """Import a PyTorch model as a Relax IRModule whose ``main`` computes ``model(*example_args)``.

    Parameters
    ----------
    model
        A ``torch.nn.Module``; a ``torch.export.ExportedProgram``; a path to a ``.pt2`` file written
        by ``torch.export.save``; or a ``tvm.IRModule``, returned unchanged.
    example_args
        Example inputs for ``torch.export`` (needed for a module, ignored otherwise).
    dynamic_shapes
        Passed to ``torch.export.export``; symbolic dims become Relax symbolic shape vars and
        their export ranges become the function's ``tir_var_upper_bound`` attribute.
    keep_params_as_input
        ``False`` embeds weights as constants; ``True`` makes them trailing parameters of
        ``main`` (the function's ``num_input`` attribute counts the real inputs).
    run_ep_decomposition
        Decompose to core ATen first (TVM's default). ``False`` keeps composite ops such as
        scaled-dot-product attention as one Relax op (``R.nn.attention``).
    custom_convert_map
        Extra converters ``{"op.overload": fn(node, importer) -> relax.Var}``, taking precedence
        over ours and TVM's. A key may carry the namespace (``"aten.hypot.default"``).
    decompose
        Ops to decompose with torch's decomposition before the import, named as the
        :class:`UnsupportedOperatorError` message names them (``"aten.addmv.default"``); for
        ops the importer lacks whose decomposition it can translate (the message says which).

    Returns
    -------
    tvm.IRModule
        With one Relax function, ``main``.

    Raises
    ------
    TypeError
        ``model`` is none of the accepted kinds, or a module came without ``example_args``.
    FileNotFoundError, ValueError
        A path that does not exist or is not a saved ExportedProgram; a ``decompose`` name
        that is no op or has no decomposition.
    UnsupportedOperatorError
        The program uses ops with no converter; the error names them as the model calls them,
        where, and what to do (its ``missing`` has one record per op).

    Examples
    --------
    >>> import autochunk_tvm as ac
    >>> model, args = ac.models.gpt("tiny")
    >>> mod = ac.from_torch(model, args)
    >>> list(mod.get_global_vars())[0].name_hint
    'main'
    """
    if isinstance(model, tvm.IRModule):
        return model
    decompositions_for(decompose)  # a bad name fails now, not after torch.export
    ep = _as_exported_program(model, example_args, dynamic_shapes)
    mod = from_exported_program(
        ep,
        keep_params_as_input=keep_params_as_input,
        run_ep_decomposition=run_ep_decomposition,
        custom_convert_map=custom_convert_map,
        decompose=decompose,
    )
    if dynamic_shapes is not None and _is_torch_module(model):
        mod = _name_dims(mod, _dim_names(ep, model, dynamic_shapes))
    return mod


def _dim_names(ep, model, dynamic_shapes) -> dict[str, str]:
    """torch's name of each symbolic dim (``s75``) -> the name the user gave its ``Dim``
    (``seq``), for the dims given directly on a tensor argument of ``forward``.

    NOTE [dim names]: torch.export names its symbols afresh (``s75``) and keeps no trace of
    the ``Dim`` names, so a ``.pt2`` loaded later has only torch's names. When the spec is at
    hand, the user's names are restored: they are the names ``bounds=`` takes and messages
    use.
    """
    import inspect

    import torch

    params = [
        name
        for name, p in inspect.signature(model.forward).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if isinstance(dynamic_shapes, Mapping):
        specs = [dynamic_shapes.get(name) for name in params]
    elif isinstance(dynamic_shapes, list | tuple):
        specs = list(dynamic_shapes)
    else:
        return {}
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = [placeholders.get(name) for name in ep.graph_signature.user_inputs]
    names: dict[str, str] = {}
    for node, spec in zip(inputs, specs):
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor):
            continue
        dims = spec.items() if isinstance(spec, Mapping) else enumerate(spec or ())
        for axis, dim in dims:
            size = val.shape[axis] if -val.dim() <= axis < val.dim() else None
            expr = getattr(getattr(size, "node", None), "expr", None)
            given = getattr(dim, "__name__", None)
            if given and getattr(expr, "is_Symbol", False):
                names.setdefault(str(expr), given)
    return names


def _name_dims(mod: tvm.IRModule, names: Mapping[str, str]) -> tvm.IRModule:
    """``mod`` with the shape variables of ``main`` renamed (and its bound attributes)."""
    func = mod["main"]
    present = input_dims(func)
    names = {old: new for old, new in names.items() if old in present and old != new}
    if not names or len(set(names.values())) < len(names):
        return mod
    renamed = func.bind_symbolic_vars(
        {present[old]: tvm.tirx.Var(new, present[old].ty.dtype) for old, new in names.items()}
    )
    for key in ("tir_var_upper_bound", "tir_var_lower_bound"):
        if func.attrs is not None and key in func.attrs:
            bounds = {names.get(str(k), str(k)): v for k, v in func.attrs[key].items()}
            renamed = renamed.with_attr(key, bounds)
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out["main"] = renamed
    return out
