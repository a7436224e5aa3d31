"""Import a PyTorch model into a Relax IRModule.

``from_torch`` runs ``torch.export`` and then TVM's ExportedProgram importer, with the converters
of :mod:`.converters` layered over the importer's own. Ops the importer cannot translate are
reported up front, by ATen name, with what to do about them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tvm

from .converters import CONVERTERS, keep_torch_dtype

logger = logging.getLogger("autochunk_tvm")


class UnsupportedOperatorError(NotImplementedError):
    """The exported program uses ATen ops that neither TVM's importer nor our converters know."""

    def __init__(self, ops: Sequence[str]) -> None:
        self.ops = sorted(set(ops))
        super().__init__(
            f"cannot import this model: no Relax converter for ATen op(s) {self.ops}. "
            "Pass `custom_convert_map={'<op>.<overload>': fn}` to from_torch with a converter "
            "fn(node, importer) -> relax.Var, rewrite that part of the model with supported ops, "
            "or export with run_ep_decomposition=True so that composite ops are decomposed."
        )


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


def _unsupported_ops(ep, convert_map: Mapping[str, Any]) -> list[str]:
    return [
        node.target.__name__
        for node in ep.graph.nodes
        if node.op == "call_function" and node.target.__name__ not in convert_map
    ]


def from_exported_program(
    ep,
    *,
    keep_params_as_input: bool = False,
    run_ep_decomposition: bool = True,
    custom_convert_map: Mapping[str, Any] | None = None,
) -> tvm.IRModule:
    """Translate a ``torch.export.ExportedProgram`` to Relax with our converters applied.

    Parameters and errors are those of :func:`from_torch`.
    """
    from tvm.relax.frontend.torch import exported_program_translator as ept

    if run_ep_decomposition:
        # NOTE [decomposition]: done here rather than inside TVM's wrapper so that the check for
        # unsupported ops sees the same graph that the importer will translate.
        ep = ep.run_decompositions()
    convert_map = {**CONVERTERS, **(custom_convert_map or {})}
    importer = ept.ExportedProgramImporter()
    importer.convert_map = {
        name: keep_torch_dtype(fn, importer) for name, fn in importer.convert_map.items()
    }
    known = {**importer.convert_map, **convert_map}
    missing = _unsupported_ops(ep, known)
    if missing:
        raise UnsupportedOperatorError(missing)
    return importer.from_exported_program(
        ep,
        keep_params_as_input,
        False,  # unwrap_unit_return_tuple
        False,  # no_bind_return_tuple
        convert_map,
    )


def from_torch(
    model: Any,
    example_args: Sequence[Any] | None = None,
    *,
    dynamic_shapes: Any = None,
    keep_params_as_input: bool = False,
    run_ep_decomposition: bool = True,
    custom_convert_map: Mapping[str, Any] | None = None,
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
        over ours and TVM's.

    Returns
    -------
    tvm.IRModule
        With one Relax function, ``main``.

    Raises
    ------
    TypeError
        ``model`` is none of the accepted kinds, or a module came without ``example_args``.
    FileNotFoundError, ValueError
        A path that does not exist or is not a saved ExportedProgram.
    UnsupportedOperatorError
        The program uses ATen ops with no converter; the error names them.

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
    ep = _as_exported_program(model, example_args, dynamic_shapes)
    return from_exported_program(
        ep,
        keep_params_as_input=keep_params_as_input,
        run_ep_decomposition=run_ep_decomposition,
        custom_convert_map=custom_convert_map,
    )
