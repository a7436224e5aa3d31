"""What an exported program uses that the importer cannot translate, said in the user's terms.

When TVM's ExportedProgram importer lacks a converter, the raw fact is an FX node whose target
has no entry in the converter map: ``_fft_r2c.default``, or an internal wrapper such as
``with_effects``. A user acts on something else: the Python call they wrote (``torch.fft.rfft``),
where it is (file, line, module path), and whether a flag makes it go away. :func:`find_unsupported`
maps each unconvertible node back to that, from the metadata torch.export keeps on every node,
and :class:`UnsupportedOperatorError` says it with what to do from Python and from the CLI.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import textwrap
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# NOTE [internal ops]: torch.export wraps some calls in higher-order ops of its own. A custom
# op that writes into an input reaches the graph as ``auto_functionalized[_v2](op, ...)``, an op
# with side effects (``aten._print``) as ``with_effects(token, op, ...)``. Their names are not
# ops the user wrote, and a converter keyed by the wrapped op's name is never reached, so the
# report names the wrapped op and says why it cannot be converted as it stands.
WRAPPED_OP_ARG = {"auto_functionalized": 0, "auto_functionalized_v2": 0, "with_effects": 1}

# Higher-order ops that carry the user's control flow, and what to write instead.
CONTROL_FLOW_HINTS = {
    "cond": "compute both branches and select with torch.where",
    "while_loop": "unroll the loop to a fixed trip count",
    "map": "unroll the map or batch it over a new leading dim",
    "scan": "unroll the scan",
    "wrap_with_set_grad_enabled": "remove torch.no_grad()/enable_grad() from forward() and "
    "export under torch.no_grad() instead",
    "wrap_with_autocast": "remove torch.autocast from forward() and cast the model instead",
}

# Ops torch.export inserts to check shapes and values at run time (torch._check, asserts on
# data-dependent sizes); none is a call of the user's and none computes a value of the model.
_CHECK_PREFIXES = ("_assert", "_functional_assert", "sym_constrain_range", "_functional_sym")

# At most this many call sites are listed per op: enough to find the code, short on a big model.
MAX_SITES = 3
# The message's prose is wrapped to this width; call sites (a line of code each) are not.
MESSAGE_WIDTH = 100


class OpKind(enum.Enum):
    """How an unconvertible node relates to what the user wrote."""

    OP = "op"  # an operator the user's code calls (directly or through a decomposition)
    WRAPPED = "wrapped"  # such an operator inside a torch.export wrapper (NOTE [internal ops])
    CONTROL_FLOW = "control flow"  # a higher-order op: torch.cond, a loop, a grad-mode region
    CHECK = "check"  # a run-time check that torch.export inserted


class Decomposition(enum.Enum):
    """What torch's decomposition table offers for an op."""

    NONE = "none"  # torch._decomp.decomposition_table has no entry for it
    COMPLETE = "complete"  # it decomposes into ops that all have converters
    PARTIAL = "partial"  # it decomposes, but into some ops without converters either
    UNTRIED = "untried"  # it has an entry, but tracing it on this node's inputs failed
    NOT_AN_OP = "not an op"  # a wrapper, control flow or check: no decomposition applies


@dataclass(frozen=True)
class UnsupportedOp:
    """One operator of an exported program that no converter handles, as the user wrote it.

    Attributes
    ----------
    name
        The operator's qualified name, ``"aten.unfold.default"`` or ``"mylib.scale_.default"``;
        for control flow the higher-order op's name (``"cond"``).
    key
        The key a converter for it takes in ``custom_convert_map`` / ``--converters``: the name
        without its namespace (``"unfold.default"``), as the importer looks ops up.
    kind
        How the node relates to the user's code.
    call
        The Python call torch.export recorded for the first node (``"torch.fft.rfft"``,
        ``"Tensor.unfold"``), or ``None`` when it kept none.
    sites
        Up to :data:`MAX_SITES` distinct places in the user's code, ``"model.py:12 in forward,
        module 'blocks.0' (Block): y = x.unfold(1, 2, 2)"``.
    count
        How many nodes of the graph call it.
    decomposition
        What torch's decomposition table offers for it.
    leaves
        For a partial decomposition, the ops it leaves that have no converter either.
    wrapper
        The torch.export wrapper around it (``"auto_functionalized_v2"``), for ``WRAPPED``.
    mutated
        For ``WRAPPED`` by auto-functionalization, the arguments the op writes into.
    decomposed_from
        The op whose decomposition produced this one, when it is not what the user called.
    """

    name: str
    key: str
    kind: OpKind
    call: str | None = None
    sites: tuple[str, ...] = ()
    count: int = 1
    decomposition: Decomposition = Decomposition.NOT_AN_OP
    leaves: tuple[str, ...] = ()
    wrapper: str | None = None
    mutated: tuple[str, ...] = ()
    decomposed_from: str | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"UnsupportedOp {self.name}: count must be >= 1, got {self.count}")
        if (self.kind is OpKind.WRAPPED) != (self.wrapper is not None):
            raise ValueError(f"UnsupportedOp {self.name}: a wrapper goes with kind WRAPPED only")
        if self.leaves and self.decomposition is not Decomposition.PARTIAL:
            raise ValueError(f"UnsupportedOp {self.name}: leaves go with a PARTIAL decomposition")


class UnsupportedOperatorError(NotImplementedError):
    """The exported program uses ops that neither TVM's importer nor our converters know.

    Attributes
    ----------
    missing
        One record per operator, in graph order, with where the user's code calls it and what
        to do about it.
    ops
        The qualified names of the user's operators among them (``"aten._fft_r2c.default"``),
        sorted; torch.export's own run-time checks are left out (they are in ``missing``).
    """

    def __init__(self, missing: Sequence[UnsupportedOp]) -> None:
        self.missing = tuple(missing)
        self.ops = sorted({op.name for op in self.missing if op.kind is not OpKind.CHECK})
        super().__init__(format_unsupported(self.missing))


def converter_key(name: str) -> str:
    """The converter-map key for an op name as a user may write it.

    The importer keys converters by ``OpOverload.__name__``, which drops the namespace:
    ``"aten.unfold.default"``, ``"aten::unfold.default"`` and ``"unfold.default"`` all mean the
    key ``"unfold.default"``. Names with fewer than three dotted parts are returned unchanged.
    """
    name = name.replace("::", ".")
    parts = name.split(".")
    return ".".join(parts[1:]) if len(parts) >= 3 else name


def is_convertible(target: Any, known: Collection[str], custom: Collection[str] = ()) -> bool:
    """Whether the importer has a converter for an FX node's ``target``.

    NOTE [prims]: the importer looks ops up by ``__name__`` alone, so ``prims.prod.default``
    (left by some of torch's decompositions) would be handed to the converter of
    ``aten.prod.default``, whose arguments differ. A prims op counts as convertible only when
    the user's own converters name it.
    """
    import torch

    key = getattr(target, "__name__", str(target))
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "prims":
        return key in custom
    return key in known


def find_unsupported(
    graph,
    known: Collection[str],
    custom: Collection[str] = (),
    decomp_table: Mapping[Any, Any] | None = None,
) -> tuple[UnsupportedOp, ...]:
    """The operators of ``graph`` the importer cannot translate, one record per operator.

    Parameters
    ----------
    graph
        The ``torch.fx.Graph`` of an ExportedProgram, after the decompositions the import runs.
    known
        Every converter key the importer will have (TVM's, ours and the user's).
    custom
        The user's own converter keys (see NOTE [prims]).
    decomp_table
        The decomposition table the import ran, on which a trial decomposition of each missing
        op builds; ``None`` for torch.export's default table.

    Returns
    -------
    tuple[UnsupportedOp, ...]
        In the order the graph first calls each; empty when everything converts.
    """
    import torch

    groups: dict[str, list] = {}
    for node in graph.nodes:
        if node.op == "call_function" and not is_convertible(node.target, known, custom):
            groups.setdefault(_user_op_name(node), []).append(node)
    if not groups:
        return ()
    # Materialized only now: torch.export's default table is lazy, and listing it takes time.
    table = torch.export.default_decompositions() if decomp_table is None else decomp_table
    table = dict(table.items())
    return tuple(_describe(nodes, known, custom, table) for nodes in groups.values())


# ---- one record per op ------------------------------------------------------------------------


def _wrapped_op(node):
    """The op a torch.export wrapper node wraps, or ``None`` for any other node."""
    index = WRAPPED_OP_ARG.get(getattr(node.target, "__name__", ""))
    if index is None or len(node.args) <= index:
        return None
    return node.args[index]


def _qualified(target: Any) -> str:
    """``aten.unfold.default`` for an OpOverload; the plain name for anything else."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target.__name__}"
    return getattr(target, "__name__", str(target))


def _user_op_name(node) -> str:
    wrapped = _wrapped_op(node)
    return _qualified(wrapped if wrapped is not None else node.target)


def _kind(node) -> OpKind:
    import torch

    if _wrapped_op(node) is not None:
        return OpKind.WRAPPED
    if isinstance(node.target, torch._ops.HigherOrderOperator):
        return OpKind.CONTROL_FLOW
    if getattr(node.target, "__name__", "").startswith(_CHECK_PREFIXES):
        return OpKind.CHECK
    return OpKind.OP


def _describe(nodes: list, known, custom, decomp_table) -> UnsupportedOp:
    first = nodes[0]
    kind = _kind(first)
    target = _wrapped_op(first) if kind is OpKind.WRAPPED else first.target
    sites: list[str] = []
    for node in nodes:
        site = _site(node)
        if site and site not in sites and len(sites) < MAX_SITES:
            sites.append(site)
    decomposition, leaves = Decomposition.NOT_AN_OP, ()
    if kind is OpKind.OP:
        decomposition, leaves = _try_decomposition(first, known, custom, decomp_table)
    original = first.meta.get("original_aten")
    from_other = (
        kind is OpKind.OP and original is not None and _qualified(original) != _qualified(target)
    )
    return UnsupportedOp(
        name=_qualified(target),
        key=getattr(target, "__name__", str(target)),
        kind=kind,
        call=_python_call(first),
        sites=tuple(sites),
        count=len(nodes),
        decomposition=decomposition,
        leaves=leaves,
        wrapper=first.target.__name__ if kind is OpKind.WRAPPED else None,
        mutated=_mutated_args(target) if kind is OpKind.WRAPPED else (),
        decomposed_from=_qualified(original) if from_other else None,
    )


def _mutated_args(op) -> tuple[str, ...]:
    schema = getattr(op, "_schema", None)
    if schema is None:
        return ()
    return tuple(
        arg.name
        for arg in schema.arguments
        if arg.alias_info is not None and arg.alias_info.is_write
    )


def _try_decomposition(node, known, custom, decomp_table) -> tuple[Decomposition, tuple[str, ...]]:
    """Trace torch's decomposition of ``node``'s op on its recorded (fake) inputs, and see
    whether every op it produces has a converter.

    NOTE [trial decomposition]: an entry in ``decomposition_table`` does not mean the op goes
    away: most entries come from ``torch._refs`` and lower to ``prims`` ops (``aten.hypot`` to
    ``prims.hypot``), and some decline some shapes (``adaptive_max_pool2d`` with sizes that do
    not divide). Tracing the one node with ``make_fx`` on its fake inputs, under the table the
    import used, tells which case applies in milliseconds, without re-running the decomposition
    of the whole program.
    """
    import torch
    from torch._decomp import decomposition_table

    op = node.target
    if not isinstance(op, torch._ops.OpOverload) or op not in decomposition_table:
        return Decomposition.NONE, ()
    try:
        from torch._guards import detect_fake_mode
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.utils._pytree import tree_flatten, tree_unflatten

        values = torch.fx.node.map_arg((node.args, node.kwargs), lambda arg: arg.meta["val"])
        flat, spec = tree_flatten(values)
        where = [i for i, value in enumerate(flat) if isinstance(value, torch.Tensor)]

        def call(*tensors):
            args = list(flat)
            for i, tensor in zip(where, tensors, strict=True):
                args[i] = tensor
            positional, named = tree_unflatten(args, spec)
            return op(*positional, **named)

        tensors = [flat[i] for i in where]
        table = {**decomp_table, op: decomposition_table[op]}
        with detect_fake_mode(tensors) or contextlib.nullcontext():
            traced = make_fx(call, decomposition_table=table)(*tensors)
    except Exception:  # noqa: BLE001 - a decomposition that fails to trace is 'untried'
        return Decomposition.UNTRIED, ()
    leaves = []
    for new in traced.graph.nodes:
        if new.op == "call_function" and not is_convertible(new.target, known, custom):
            name = _qualified(new.target)
            if name not in leaves:
                leaves.append(name)
    return (Decomposition.PARTIAL, tuple(leaves)) if leaves else (Decomposition.COMPLETE, ())


# ---- where the user's code calls it --------------------------------------------------------------

# One frame of a ``stack_trace``; the code line is absent for code without a source file.
_FRAME = re.compile(
    r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)'
    r'(?:\n[ \t]+(?!File ")(?P<code>.*))?'
)


def _site(node) -> str | None:
    """``"model.py:12 in forward, module 'blocks.0' (Block): y = x.unfold(1, 2, 2)"``."""
    frame = _user_frame(node.meta.get("stack_trace") or "")
    module = _module(node.meta.get("nn_module_stack") or {})
    parts = []
    if frame is not None:
        parts.append(f"{frame['file']}:{frame['line']} in {frame['func']}")
    if module:
        parts.append(module)
    where = ", ".join(parts)
    if frame is not None and (frame["code"] or "").strip():
        where += f": {frame['code'].strip()}"
    return where or None


def _user_frame(stack_trace: str) -> dict[str, str] | None:
    """The innermost frame of the stack outside torch itself (``nn.Linear.forward`` is not
    where the user can change anything), or the innermost frame when all are torch's."""
    import torch

    frames = [match.groupdict() for match in _FRAME.finditer(stack_trace)]
    if not frames:
        return None
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    outside = [f for f in frames if not os.path.abspath(f["file"]).startswith(torch_dir)]
    frame = dict((outside or frames)[-1])
    path = os.path.abspath(frame["file"])
    if path.startswith(os.getcwd() + os.sep):
        frame["file"] = os.path.relpath(path)
    return frame


def _module(nn_module_stack: Mapping[str, Any]) -> str | None:
    if not nn_module_stack:
        return None
    path, kind = list(nn_module_stack.values())[-1]
    kind = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
    kind = kind.rsplit(".", 1)[-1]
    return f"module {path!r} ({kind})" if path else f"the top-level module ({kind})"


def _python_call(node) -> str | None:
    """The Python call torch.export recorded for ``node`` (its ``torch_fn`` metadata), spelled
    as the user would write it, or ``None``."""
    import torch

    torch_fn = node.meta.get("torch_fn")
    if not torch_fn or len(torch_fn) < 2:
        return None
    kind, _, name = str(torch_fn[1]).partition(".")
    if kind == "method_descriptor":
        return f"Tensor.{name}"
    if kind == "CondOp":
        return "torch.cond"
    if kind in ("function", "builtin_function_or_method"):
        for prefix, module, public in (
            ("fft_", torch.fft, "torch.fft"),
            ("linalg_", torch.linalg, "torch.linalg"),
            ("special_", torch.special, "torch.special"),
        ):
            if name.startswith(prefix) and hasattr(module, name[len(prefix) :]):
                return f"{public}.{name[len(prefix) :]}"
        spaces = [(torch, "torch"), (torch.nn.functional, "F")]
        if kind == "function":
            spaces.reverse()
        for module, public in spaces:
            if hasattr(module, name):
                return f"{public}.{name}"
    return None  # an OpOverload called directly: its name says it


# ---- the message ------------------------------------------------------------------------------


def format_unsupported(missing: Iterable[UnsupportedOp]) -> str:
    """The error message: each op with where it is called and what to do about it."""
    missing = list(missing)
    ops = [op for op in missing if op.kind is not OpKind.CHECK]
    checks = [op for op in missing if op.kind is OpKind.CHECK]
    what = f"{len(ops)} op(s) it calls" if ops else "some of torch.export's run-time checks"
    lines = [f"cannot import this model: TVM's Relax importer has no converter for {what}."]
    for op in ops:
        lines += [
            "",
            _headline(op),
            *(f"  at {site}" for site in op.sites),
            _wrap(_advice(op), "  "),
        ]
    if checks:
        lines += [
            "",
            _wrap(
                f"Also without a converter: {', '.join(op.name for op in checks)}, run-time "
                "check(s) that torch.export inserted, not ops of your model. They compute "
                "nothing the model returns, so a converter that returns None skips them: "
                f"{_together('def skip(node, importer): return None')}."
            ),
        ]
    need = [op.key for op in missing if _wants_converter(op)]
    if need:
        example = ", ".join(f'"{key}": fn' for key in dict.fromkeys(need))
        lines += [
            "",
            _wrap(
                "A converter is a Python function fn(node, importer) -> relax.Var that emits "
                "the op with importer.block_builder.emit(...) (node is the torch.fx node; "
                "importer.env[arg] is the Relax value of an argument node). In a Python file, "
                "define"
            ),
            f"    CONVERTERS = {{{example}}}",
            _wrap(
                f"and pass {_together('--converters FILE')} to `autochunk-tvm plan` or "
                "`autochunk-tvm compile`; from Python, pass "
                f"{_together('from_torch(..., custom_convert_map=CONVERTERS)')}. Keys are "
                "op.overload without the namespace."
            ),
        ]
    return "\n".join(lines)


_GLUE = "\x00"  # a space that textwrap does not break at (see _together)


def _together(text: str) -> str:
    """``text`` kept on one line by :func:`_wrap`: a flag and its value copy as one piece."""
    return text.replace(" ", _GLUE)


def _wrap(text: str, indent: str = "") -> str:
    wrapped = textwrap.fill(
        text,
        MESSAGE_WIDTH,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return wrapped.replace(_GLUE, " ")


def _headline(op: UnsupportedOp) -> str:
    if op.kind is OpKind.CONTROL_FLOW:
        head = f"{op.call or op.name} (control flow)"
    else:
        head = op.name + (f", called as {op.call}" if op.call else "")
    if op.decomposed_from:
        head += f", from torch's decomposition of {op.decomposed_from}"
    return head + (f" ({op.count} calls)" if op.count > 1 else "")


def _wants_converter(op: UnsupportedOp) -> bool:
    """Whether the message's CONVERTERS example should name ``op``."""
    if op.kind is OpKind.OP:
        return op.decomposition is not Decomposition.COMPLETE
    # A functional version of an auto-functionalized op takes a converter under its key.
    return op.kind is OpKind.CHECK or (op.kind is OpKind.WRAPPED and op.wrapper != "with_effects")


def _advice(op: UnsupportedOp) -> str:
    if op.kind is OpKind.WRAPPED and op.wrapper == "with_effects":
        return (
            "It has side effects, so torch.export threads it on an effect token (with_effects), "
            "which the importer cannot translate and a converter would not be called for: "
            "remove the call from forward()."
        )
    if op.kind is OpKind.WRAPPED:
        written = ", ".join(op.mutated) or "an input"
        return (
            f"It writes into {written}, so torch.export wraps it in {op.wrapper}, which the "
            f'importer cannot translate and a converter for "{op.key}" would not be called for: '
            f"make the op return its result instead of writing into {written}, then give it a "
            "converter (below)."
        )
    if op.kind is OpKind.CONTROL_FLOW:
        hint = CONTROL_FLOW_HINTS.get(op.name, "rewrite it without control flow")
        return f"The importer translates no control flow: {hint}."
    flag = _together(f"--decompose {op.name}")
    if op.decomposition is Decomposition.COMPLETE:
        return (
            "torch decomposes it into ops the importer has converters for: add "
            f"{flag} (from Python, " + _together(f'from_torch(..., decompose=["{op.name}"])).')
        )
    if op.decomposition is Decomposition.PARTIAL and op.name in op.leaves:
        return (
            "torch's decomposition of it does not apply to the shapes in this model: give it a "
            "converter (below)."
        )
    if op.decomposition is Decomposition.PARTIAL:
        return (
            f"torch's decomposition of it leaves {', '.join(op.leaves)}, without a converter "
            f"either, so {flag} does not help: give it a converter (below)."
        )
    if op.decomposition is Decomposition.UNTRIED:
        return (
            f"torch has a decomposition for it, which may leave ops without converters: try "
            f"{flag}, or give it a converter (below)."
        )
    return (
        "torch has no decomposition for it: give it a converter (below), or compute it with "
        "other ops in the model."
    )
