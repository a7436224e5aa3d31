"""Activation-memory liveness of a Relax function (stage 1 of AutoChunk).

``estimate_activation_memory`` walks the bindings of a Relax function in program order and
reports, for each, the bytes it allocates and the bytes live while it runs. It works at every
level of the Relax pipeline:

* high-level Relax (``R.matmul``, ``R.nn.softmax``, ...), the level AutoChunk searches on;
* after legalization and fusion (``call_tir`` to fused PrimFuncs), where the PrimFuncs'
  internal allocations are added as workspace at their call;
* after ``StaticPlanBlockMemory`` (``alloc_storage`` / ``alloc_tensor``), where a storage is the
  allocation and tensors placed in it are views of it.

Model
-----
Every value is backed by zero or more *storages*. A binding that computes a new tensor creates
one; views (reshape-like ops, tuple packing and unpacking, var aliases, tensors placed in a
planned storage) reuse their source's storages. A storage is live from the binding that creates
it until the last binding that uses any value backed by it; storages behind the function's
result stay live to the end. Function inputs are owned by the caller, so they are live for the
whole call. Weights (constants and parameters past the ``num_input`` attribute) are reported
apart and are not activation memory.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping

import tvm
from tvm import relax, tirx

from .sizes import (
    SizeExpr,
    evaluate,
    free_vars,
    input_dims,
    is_zero,
    type_bytes,
    upper_bounds,
)
from .sources import TorchSource, binding_sources, op_label, sources_table
from .tir_workspace import workspace_bytes
from .views import VIEW_OPS

logger = logging.getLogger("autochunk_tvm")

# Calls that allocate the bytes named by their first (shape) argument rather than their type.
STORAGE_ALLOC_OPS = frozenset({"relax.memory.alloc_storage", "relax.vm.alloc_storage"})
# Calls that return nothing new and only release memory.
RELEASE_OPS = frozenset({"relax.memory.kill_storage", "relax.memory.kill_tensor"})


class StorageKind(enum.Enum):
    """Who owns a storage, which decides how long it lives."""

    INPUT = "input"  # a function parameter: owned by the caller, live for the whole call
    INTERMEDIATE = "intermediate"  # made by a binding, freed after its last use
    OUTPUT = "output"  # behind the function's result: live to the end


@dataclasses.dataclass(frozen=True)
class BindingMemory:
    """Memory of one binding of the function, in program order.

    Attributes
    ----------
    index
        Position of the binding in the flattened function body.
    name
        Name of the bound variable.
    op
        What the binding computes: an operator name (``relax.matmul``), the callee of a
        ``call_tir`` (``call_tir:fused_matmul_add``), or the kind of value (``tuple``, ``alias``).
    own_bytes
        Bytes this binding newly allocates (0 for views and aliases).
    workspace_bytes
        Bytes the called PrimFunc allocates internally; live only during this binding.
    live_bytes
        Bytes live while this binding runs: its inputs and output, everything kept for later
        bindings, the function inputs and its own workspace.
    live_after_bytes
        Bytes still live once this binding is done (its workspace and the storages it used for
        the last time are released).
    live_tensors
        Names of the storages live while it runs (the variable that created each).
    own_bytes_expr
        ``own_bytes`` as an expression of the function's shape variables (``str`` of a
        PrimExpr), equal to ``str(own_bytes)`` when shapes are static.
    source
        The torch call and module the binding was imported from, when the importer recorded
        it (:mod:`~autochunk_tvm.analysis.sources`); ``None`` otherwise.
    """

    index: int
    name: str
    op: str
    own_bytes: int
    workspace_bytes: int
    live_bytes: int
    live_after_bytes: int
    live_tensors: tuple[str, ...]
    own_bytes_expr: str
    source: TorchSource | None = None

    def __post_init__(self) -> None:
        if min(self.own_bytes, self.workspace_bytes, self.live_bytes, self.live_after_bytes) < 0:
            raise ValueError(f"negative byte count in {self}")

    @property
    def label(self) -> str:
        """What the binding computes in the user's terms: ``softmax in blocks.0.attn`` from
        its source, else the op (``softmax``); never the variable name."""
        return self.source.label if self.source is not None else op_label(self.op)


@dataclasses.dataclass(frozen=True)
class MemoryProfile:
    """Activation-memory profile of one Relax function (all sizes are integer bytes).

    Attributes
    ----------
    function
        Name of the analysed function.
    bindings
        One record per binding, in program order.
    peak_bytes
        Largest ``live_bytes`` over the bindings (inputs alone if there are no bindings).
    peak_index, peak_binding
        Index and variable name of the first binding that reaches ``peak_bytes``.
    input_bytes
        Bytes of the activation inputs (the function's non-weight parameters).
    output_bytes
        Bytes of the storages behind the function's result.
    weight_bytes
        Bytes of weights: constants and parameters after ``num_input``; not in the peak.
    workspace_bytes
        Largest TIR-internal workspace of any single binding (already inside ``live_bytes``).
    bounds
        Values used for symbolic shape variables.
    unsized
        Names of bindings whose size is unknown (no static shape); they count as 0 bytes.
    """

    function: str
    bindings: tuple[BindingMemory, ...]
    peak_bytes: int
    peak_index: int
    peak_binding: str
    input_bytes: int
    output_bytes: int
    weight_bytes: int
    workspace_bytes: int
    bounds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    unsized: tuple[str, ...] = ()

    @property
    def live_bytes(self) -> list[int]:
        """``live_bytes`` of every binding, in program order."""
        return [b.live_bytes for b in self.bindings]

    @property
    def peak_label(self) -> str:
        """:attr:`BindingMemory.label` of the peak binding (empty without bindings)."""
        return self.bindings[self.peak_index].label if self.peak_index >= 0 else ""

    def binding(self, name: str) -> BindingMemory:
        """The record of the binding that defines variable ``name``."""
        for rec in self.bindings:
            if rec.name == name:
                return rec
        raise KeyError(f"no binding named {name!r} in {self.function}")

    def summary(self, top: int = 10) -> str:
        """A human-readable table: totals, then the ``top`` bindings by live bytes, each with
        what it computes in the model's terms (:attr:`BindingMemory.label`)."""
        lines = [
            f"activation memory of {self.function} (live tensors of the Relax graph, before "
            f"TVM's memory planning): peak {format_bytes(self.peak_bytes)} at "
            f"{self.peak_label or self.peak_binding} (binding {self.peak_index} "
            f"{self.peak_binding!r} of {len(self.bindings)})",
            f"  inputs {format_bytes(self.input_bytes)}, outputs "
            f"{format_bytes(self.output_bytes)}, max TIR workspace "
            f"{format_bytes(self.workspace_bytes)}, weights {format_bytes(self.weight_bytes)}",
        ]
        ranked = sorted(self.bindings, key=lambda b: (-b.live_bytes, b.index))[:top]
        lines.append(f"  {'#':>5} {'binding':<12} {'what':<34} {'op':<24} {'own':>11} {'live':>11}")
        for b in ranked:
            lines.append(
                f"  {b.index:>5} {b.name[:12]:<12} {b.label[:34]:<34} {b.op[:24]:<24} "
                f"{format_bytes(b.own_bytes):>11} {format_bytes(b.live_bytes):>11}"
            )
        return "\n".join(lines)

    def figure(self, *, title: str | None = None, compare: MemoryProfile | None = None):
        """The plot of :meth:`plot` as a ``matplotlib.figure.Figure``, not saved (for a
        notebook, or to inspect). Parameters are those of :meth:`plot`."""
        from .plot import profiles_figure

        return profiles_figure([self] + ([compare] if compare is not None else []), title)

    def plot(self, path: str, *, title: str | None = None, compare: MemoryProfile | None = None):
        """Draw live bytes per operator (the paper's Figure 4) with the peak marked; write a PNG.

        The peaks are labelled with what they compute in the model's terms
        (:attr:`BindingMemory.label`), and the figure says what it counts: live tensors of the
        Relax graph, before TVM's memory planning, so not the bytes a build allocates (the
        quantity a budget bounds; :meth:`PlanReport.plot
        <autochunk_tvm.PlanReport.plot>` draws those).

        Parameters
        ----------
        path
            Output PNG file.
        title
            Plot title; defaults to the function name and peak.
        compare
            Another profile (e.g. after chunking) drawn on the same axes.

        Returns
        -------
        str
            ``path``.
        """
        from .plot import save_figure

        return save_figure(self.figure(title=title, compare=compare), path)


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.50 KiB'``: binary units, for reports."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass
class Storage:
    """One allocation and its live interval (bindings ``start`` to ``end``, inclusive)."""

    name: str
    size: SizeExpr
    kind: StorageKind
    start: int
    end: int = -1


def binding_op(value: relax.Expr) -> str:
    """What a bound value computes, as :attr:`BindingMemory.op` names it: ``relax.matmul``,
    ``call_tir:fused_matmul_add``, ``tuple``, ``alias``."""
    if isinstance(value, relax.Call):
        op = value.op
        if isinstance(op, tvm.ir.Op):
            if op.name in ("relax.call_tir", "relax.call_tir_inplace", "relax.call_dps_packed"):
                callee = value.args[0]
                name = getattr(callee, "name_hint", None) or getattr(callee, "global_symbol", "?")
                return f"{op.name.split('.')[-1]}:{name}"
            return op.name
        if isinstance(op, tvm.ir.GlobalVar):
            return f"call:{op.name_hint}"
        if isinstance(op, relax.ExternFunc):
            return f"extern:{op.global_symbol}"
        return "call"
    if isinstance(value, relax.Tuple):
        return "tuple"
    if isinstance(value, relax.TupleGetItem):
        return "tuple_get_item"
    if isinstance(value, relax.Var):
        return "alias"
    if isinstance(value, tvm.ir.expr.GenericConst):
        return "constant"
    return type(value).__name__


def flat_bindings(func: relax.Function) -> list[relax.Binding]:
    """The bindings of ``func``'s body in program order (empty without a SeqExpr body)."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    # A slice of an FFI array is read in one loop; iterating it goes through __getitem__ per
    # element, 3x slower (this runs on every lowered module selection estimates).
    return [b for block in body.blocks[:] for b in block.bindings[:]]


# Values that read no variable: tensor constants, prim values and strings, shapes, callees.
_LEAVES = (
    tvm.ir.expr.GenericConst,
    tvm.ir.expr.Constant,
    relax.ShapeExpr,
    relax.GlobalVar,
    relax.ExternFunc,
)


def read_vars(expr: relax.Expr, constants: dict[int, relax.Expr] | None = None) -> list[relax.Var]:
    """The variables a binding's value reads: ``relax.analysis.free_vars`` of it, walked in
    Python through calls, tuples and items (the shape of a normalized binding), which saves
    an FFI call and an array per binding in the walks that run on every estimate; anything
    else (a branch, a nested function) is left to TVM's analysis.

    ``constants``: a table (by handle) the tensor constants among the value's call arguments
    and tuple fields are added to on the way, so that the liveness walk reads a value once.
    """
    kind = _READ_KIND.get(type(expr)) or _read_kind(expr)
    if kind == "var":
        return [expr]
    if kind == "call":
        op = expr.op
        out = [op] if (_READ_KIND.get(type(op)) or _read_kind(op)) == "var" else []  # a closure
        for arg in expr.args[:]:
            out += read_vars(arg, constants)
        return out
    if kind == "tuple":
        out = []
        for field in expr.fields[:]:
            out += read_vars(field, constants)
        return out
    if kind == "item":
        return read_vars(expr.tuple_value)
    if kind == "const":
        if constants is not None:
            constants.setdefault(handle(expr), expr)
        return []
    if kind == "leaf":
        return []
    return list(relax.analysis.free_vars(expr))


# A value's class -> how read_vars walks it. isinstance on IR classes is slow (several per
# node of every binding of every estimate); a class is asked once.
_READ_KIND: dict[type, str] = {}


def _read_kind(expr: relax.Expr) -> str:
    kinds = (
        ("var", relax.Var),  # DataflowVar too
        ("call", relax.Call),
        ("tuple", relax.Tuple),
        ("item", relax.TupleGetItem),
        ("const", tvm.ir.expr.GenericConst),
        ("leaf", _LEAVES),
    )
    kind = next((k for k, cls in kinds if isinstance(expr, cls)), "other")
    _READ_KIND[type(expr)] = kind
    return kind


# binding_op's names of the calls that run a kernel (before and after CallTIRRewrite)
_KERNEL_CALLS = ("call_tir:", "call_tir_inplace:", "call:")


def _called_primfunc(
    value: relax.Expr, mod: tvm.IRModule | None, found: dict[int, tirx.PrimFunc | None]
) -> tirx.PrimFunc | None:
    """The PrimFunc of ``mod`` that ``value`` calls, or None; ``found``, the callees looked
    up before (by handle), saves a lookup in the module for each call of a kernel."""
    if mod is None or not isinstance(value, relax.Call):
        return None
    if isinstance(value.op, tvm.ir.Op) and value.op.name in (
        "relax.call_tir",
        "relax.call_tir_inplace",
    ):
        callee = value.args[0]
    elif isinstance(value.op, tvm.ir.GlobalVar):
        callee = value.op  # a PrimFunc called directly, after CallTIRRewrite
    else:
        return None
    key = handle(callee)
    if key not in found:
        func = mod[callee] if isinstance(callee, tvm.ir.GlobalVar) and callee in mod else None
        # the module holds the callee: its handle stays its own
        found[key] = func if isinstance(func, tirx.PrimFunc) else None
    return found[key]


def _callee_shape_values(value: relax.Call, prim: tirx.PrimFunc, var: relax.Var) -> dict[str, int]:
    """Values of the PrimFunc's own shape variables at this call, by name.

    A generic kernel (a library scan or sort, ``gpu_2d_continuous_cumsum(A: (m, n), ...)``)
    is written for any shape and sizes its workspace in its own variables; the call's static
    argument shapes fix them.
    """
    if isinstance(value.op, tvm.ir.Op):  # call_tir(callee, (inputs...)): outputs are `var`
        inputs = value.args[1]
        args = list(inputs.fields) if isinstance(inputs, relax.Tuple) else [inputs]
        out_ty = var.ty
        outs = list(out_ty.fields) if isinstance(out_ty, relax.TupleType) else [out_ty]
        types = [a.ty for a in args] + outs
    else:  # called directly after CallTIRRewrite: arguments are inputs, then outputs
        types = [a.ty for a in value.args]
    values: dict[str, int] = {}
    for param, ty in zip(prim.params, types):  # TVM 0.27: a PrimFunc's params are Buffers
        shape = getattr(ty, "shape", None)
        if not isinstance(param, tirx.Buffer) or not isinstance(shape, relax.ShapeExpr):
            continue
        for dim, actual in zip(param.shape, shape.values):
            if isinstance(dim, tirx.Var) and isinstance(actual, tirx.IntImm):
                values[dim.name] = int(actual)
    return values


def _callee_name(value: relax.Call) -> str:
    callee = value.args[0] if isinstance(value.op, tvm.ir.Op) else value.op
    return callee.name_hint


def handle(expr: relax.Expr) -> int:
    """The key of an IR object in the tables of analysis and search.

    NOTE [keys by handle]: every read of ``binding.var`` makes a new Python wrapper, so a
    dict keyed by the variable compares wrappers with ``Expr.__eq__``, which reads the type
    through the FFI: half the liveness walk of a selection estimate. Tables are keyed by the
    object's handle instead, stable while the function (which holds the object) is alive.
    """
    return expr.__chandle__()


def _storage_alloc_bytes(value: relax.Call) -> SizeExpr | None:
    shape = value.args[0]
    if isinstance(shape, relax.ShapeExpr) and len(shape.values) == 1:
        return shape.values[0]
    return None


def _resolve(
    mod_or_func: tvm.IRModule | relax.Function, func_name: str
) -> tuple[tvm.IRModule | None, relax.Function, str]:
    if isinstance(mod_or_func, relax.Function):
        name = (
            str(mod_or_func.attrs["global_symbol"])
            if mod_or_func.attrs and ("global_symbol" in mod_or_func.attrs)
            else func_name
        )
        return None, mod_or_func, name
    if isinstance(mod_or_func, tvm.IRModule):
        check_module(mod_or_func, func_name, "estimate_activation_memory")
        return mod_or_func, mod_or_func[func_name], func_name
    raise TypeError(
        "estimate_activation_memory expects a tvm.IRModule or a relax.Function, got "
        f"{type(mod_or_func).__module__}.{type(mod_or_func).__qualname__}; import a PyTorch "
        "model with autochunk_tvm.from_torch first"
    )


def check_module(mod: object, func_name: str, caller: str) -> None:
    """Raise a TypeError/ValueError that says what to pass when ``mod`` is not an IRModule
    with a Relax function ``func_name``."""
    if not isinstance(mod, tvm.IRModule):
        raise TypeError(
            f"{caller} expects a Relax tvm.IRModule, got {type(mod).__module__}."
            f"{type(mod).__qualname__}; import a PyTorch model with autochunk_tvm.from_torch "
            "first"
        )
    names = [gv.name_hint for gv in mod.get_global_vars()]
    if func_name not in names:
        raise ValueError(
            f"the module has no function {func_name!r} (it has {sorted(names)}); pass "
            "func_name= to use another one"
        )
    if not isinstance(mod[func_name], relax.Function):
        raise TypeError(f"{func_name!r} is a {type(mod[func_name]).__name__}, not a Relax function")


def _known_bytes(ty) -> SizeExpr:
    """:func:`type_bytes`, 0 when unknown (a symbolic size is kept: ``or`` would test it)."""
    size = type_bytes(ty)
    return 0 if size is None else size


@dataclasses.dataclass
class Liveness:
    """Storages of a function with their live intervals, and per-binding facts.

    Internal result shared by the profile and the allocator simulation (:mod:`.planned`).
    ``start == -1`` marks function inputs; ``end == len(bindings)`` means live to the end.
    """

    bindings: list[relax.Binding]
    storages: list[Storage]
    sizes: list[int]
    ops: list[str]
    own: list[SizeExpr]
    workspace_allocs: list[tuple[int, ...]]
    weight_bytes: int
    bounds: dict[str, int]
    unsized: list[str]
    # The storages behind each variable (params and bound vars), as indices into ``storages``,
    # by the variable's handle (NOTE [keys by handle]); read it with :meth:`storages_of`.
    backing: dict[int, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # The function analysed: it holds the objects whose handles key ``backing``.
    func: relax.Function | None = dataclasses.field(default=None, repr=False, compare=False)
    # Per binding: the handles of the variables its value reads (:func:`read_vars`).
    reads: list[tuple[int, ...]] = dataclasses.field(default_factory=list, repr=False)

    def storages_of(self, var: relax.Var) -> tuple[int, ...]:
        """The storages behind ``var`` (indices into ``storages``); none for weights."""
        return self.backing.get(handle(var), ())

    @property
    def workspaces(self) -> list[int]:
        """Total workspace bytes of each binding."""
        return [sum(allocs) for allocs in self.workspace_allocs]


Backing = tuple[int, ...]  # indices into the storage list: what holds a value's bytes


class _LivenessVisitor:
    """Walks a function's bindings in program order and decides, for each, which storages
    back its variable: one method per kind of bound value (``visit_<kind>``), each returning
    the variable's :data:`Backing`; those that allocate add to ``storages`` first.

    A value kind without a method is not guessed at: :meth:`visit_unknown` logs it and
    counts the variable as a new allocation of its type's size (an upper bound).
    """

    def __init__(self, mod, func, bounds, workspace):
        self.mod, self.func, self.bounds, self.workspace = mod, func, bounds, workspace
        self.storages: list[Storage] = []
        self.backing: dict[int, Backing] = {}  # by handle (NOTE [keys by handle])
        # Values whose fields are each backed by exactly one storage, so ``t[i]`` can alias
        # just the i-th field's storage.
        self.fields: dict[int, Backing] = {}
        self.unsized: list[str] = []
        self.weight_bytes = 0
        self.index = -1
        self.own: SizeExpr = 0  # bytes the binding being visited allocates
        self.op: str | None = None  # binding_op of the value being visited, when known
        self._dispatch = (
            (relax.Var, self.visit_var),  # DataflowVar too
            (relax.Tuple, self.visit_tuple),
            (relax.TupleGetItem, self.visit_tuple_get_item),
            (relax.Call, self.visit_call),
            (tvm.ir.expr.GenericConst, self.visit_constant),
            (relax.If, self.visit_if),
            # Values that hold no tensor: shapes, scalars, strings, functions.
            (relax.ShapeExpr, self.visit_no_storage),
            (tvm.ir.expr.Constant, self.visit_no_storage),  # scalars (after GenericConst)
            (tvm.ir.expr.StringImm, self.visit_no_storage),
            (relax.Function, self.visit_no_storage),
            (relax.ExternFunc, self.visit_no_storage),
            (tvm.ir.GlobalVar, self.visit_no_storage),
        )
        self._dispatch_of: dict[type, int] = {}  # a value's class -> its entry, -1 for none

    # -- building blocks -------------------------------------------------------------------

    def new_storage(self, name: str, size: SizeExpr, kind: StorageKind) -> int:
        self.storages.append(Storage(name, size, kind, start=self.index))
        return len(self.storages) - 1

    def backing_of(self, expr: relax.Expr) -> Backing:
        """The storages behind any expression that can be an operand."""
        if isinstance(expr, relax.Var):
            return self.backing.get(handle(expr), ())
        if isinstance(expr, relax.Tuple):
            return tuple(s for f in expr.fields[:] for s in self.backing_of(f))
        if isinstance(expr, relax.TupleGetItem):
            return self.field_of(expr.tuple_value, expr.index)
        return ()  # constants (weights), shapes, scalars: no activation storage

    def fields_of(self, expr: relax.Expr) -> Backing | None:
        """One storage per field of a tuple-valued expression, when that is known."""
        if isinstance(expr, relax.Var):
            return self.fields.get(handle(expr))
        if isinstance(expr, relax.Tuple):
            per_field = [self.backing_of(f) for f in expr.fields]
            if all(len(fs) == 1 for fs in per_field):
                return tuple(fs[0] for fs in per_field)
        return None

    def field_of(self, tup: relax.Expr, index: int) -> Backing:
        if isinstance(tup, relax.Tuple):
            return self.backing_of(tup.fields[index])
        fields = self.fields_of(tup)
        return (fields[index],) if fields else self.backing_of(tup)

    def sized(self, var: relax.Var, size: SizeExpr | None, what: str) -> SizeExpr:
        if size is None:
            self.unsized.append(var.name)
            logger.warning("binding %s (%s) has no static size; counted as 0 bytes", var.name, what)
            return 0
        return size

    def allocate(self, var: relax.Var, op: str) -> Backing:
        """A new allocation of ``var``'s type; one per field for a tuple-typed result.

        NOTE [multi-output calls]: each field of a call returning a tuple (split, a
        multi-output call_tir) is its own allocation and dies on its own.
        """
        size = self.sized(var, type_bytes(var.ty), op)
        if is_zero(size):
            return ()
        self.own = size
        if isinstance(var.ty, relax.TupleType):
            fields = tuple(
                self.new_storage(f"{var.name}[{i}]", _known_bytes(field), StorageKind.INTERMEDIATE)
                for i, field in enumerate(var.ty.fields)
            )
            self.fields[handle(var)] = fields
            return fields
        return (self.new_storage(var.name, size, StorageKind.INTERMEDIATE),)

    # -- one method per kind of value ------------------------------------------------------

    def visit_var(self, var: relax.Var, value: relax.Var) -> Backing:
        """An alias (also a ``match_cast``): the source's storages."""
        if handle(value) in self.fields:
            self.fields[handle(var)] = self.fields[handle(value)]
        return self.backing_of(value)

    def visit_tuple(self, var: relax.Var, value: relax.Tuple) -> Backing:
        """Packing values into a tuple allocates nothing."""
        fields = self.fields_of(value)
        if fields is not None:
            self.fields[handle(var)] = fields
        return self.backing_of(value)

    def visit_tuple_get_item(self, var: relax.Var, value: relax.TupleGetItem) -> Backing:
        """A field of a tuple: that field's storage when known, else the whole tuple's.
        The tuple may be a variable or a tuple literal (``(lv22, lv28)[0]``)."""
        return self.field_of(value.tuple_value, value.index)

    def visit_call(self, var: relax.Var, value: relax.Call) -> Backing:
        op = self.op if self.op is not None else binding_op(value)
        if op == "relax.memory.alloc_tensor":
            return self.backing_of(value.args[0])  # a tensor placed in a planned storage
        if op in VIEW_OPS:
            return self.backing_of(value.args[0]) if value.args else ()
        if op in RELEASE_OPS:
            return ()
        if op in STORAGE_ALLOC_OPS:
            size = self.sized(var, _storage_alloc_bytes(value), op)
            if is_zero(size):
                return ()
            self.own = size
            return (self.new_storage(var.name, size, StorageKind.INTERMEDIATE),)
        return self.allocate(var, op)

    def visit_constant(self, var: relax.Var, value: tvm.ir.expr.GenericConst) -> Backing:
        """A bound constant is a weight (counted apart), not activation memory."""
        return ()

    def visit_if(self, var: relax.Var, value: relax.If) -> Backing:
        """Control flow: its result is a new allocation (what a branch computes inside is not
        seen at this level)."""
        return self.allocate(var, "if")

    def visit_no_storage(self, var: relax.Var, value: relax.Expr) -> Backing:
        return ()

    def visit_unknown(self, var: relax.Var, value: relax.Expr) -> Backing:
        logger.warning(
            "binding %s is a %s, a kind of value the memory model does not know; counted as a "
            "new allocation of its type",
            var.name,
            type(value).__name__,
        )
        return self.allocate(var, type(value).__name__)

    # -- the walk --------------------------------------------------------------------------

    def visit_binding(
        self, index: int, binding: relax.Binding, value: relax.Expr | None = None, op=None
    ) -> None:
        """``value`` and ``op`` (its :func:`binding_op`): the binding's, when the caller has
        read them already."""
        var = binding.var
        value = binding.value if value is None else value
        self.index, self.own, self.op = index, 0, op
        at = self._dispatch_of.get(type(value))
        if at is None:  # the first value of its class: find its method once
            at = next(
                (k for k, (kind, _) in enumerate(self._dispatch) if isinstance(value, kind)), -1
            )
            self._dispatch_of[type(value)] = at
        method = self._dispatch[at][1] if at >= 0 else self.visit_unknown
        self.backing[handle(var)] = method(var, value)

    def visit_params(self, num_input: int) -> None:
        """Activation inputs are storages owned by the caller; weights are not."""
        for i, param in enumerate(self.func.params):
            size = type_bytes(param.ty)
            if size is None:
                self.unsized.append(param.name)
                size = 0
            if i >= num_input:
                self.weight_bytes += evaluate(size, self.bounds)
                self.backing[handle(param)] = ()
                continue
            self.index = -1
            self.backing[handle(param)] = (self.new_storage(param.name, size, StorageKind.INPUT),)


def analyse_liveness(
    mod: tvm.IRModule | None,
    func: relax.Function,
    bounds: Mapping[str, int] | None = None,
    workspace: Mapping[str, tuple[SizeExpr, ...]] | None = None,
) -> Liveness:
    """Storages, their live intervals and per-binding workspace of ``func`` (see module doc).

    ``workspace`` maps PrimFunc names to their internal allocations; functions not in it get
    the :func:`~.tir_workspace.workspace_bytes` upper bound as one allocation.
    """
    use_bounds = {**upper_bounds(func), **dict(bounds or {})}
    bindings = flat_bindings(func)
    visitor = _LivenessVisitor(mod, func, use_bounds, workspace)

    # Step 1. Parameters.
    num_input = len(func.params)
    if func.attrs is not None and "num_input" in func.attrs:
        num_input = int(func.attrs["num_input"])
    visitor.visit_params(num_input)

    # Step 2. Bindings: which storages back each value, which are new; what each uses.
    constants: dict[int, relax.Expr] = {}  # by handle, in order
    ops: list[str] = []
    workspaces: list[tuple[SizeExpr, ...]] = []
    callee_shapes: list[dict[str, int]] = []  # a generic kernel's shape variables, per call
    own: list[SizeExpr] = []
    uses: list[set[int]] = []
    reads: list[tuple[int, ...]] = []
    primfuncs: dict[int, tirx.PrimFunc | None] = {}  # by the callee's handle
    for index, binding in enumerate(bindings):
        value = binding.value
        op = binding_op(value)
        ops.append(op)
        reads.append(tuple(handle(v) for v in read_vars(value, constants)))
        uses.append({s for h in reads[-1] for s in visitor.backing.get(h, ())})
        prim = _called_primfunc(value, mod, primfuncs) if op.startswith(_KERNEL_CALLS) else None
        if prim is None:
            workspaces.append(())
        elif workspace is not None and (callee := _callee_name(value)) in workspace:
            workspaces.append(tuple(workspace[callee]))
        else:
            workspaces.append((workspace_bytes(prim),))
        # only kernels with workspace need their shape variables bound (most have none)
        needs_shapes = prim is not None and workspaces[-1]
        callee_shapes.append(_callee_shape_values(value, prim, binding.var) if needs_shapes else {})
        visitor.visit_binding(index, binding, value, op)
        own.append(visitor.own)

    # Step 3. Last uses; inputs and storages behind the result live to the end.
    storages = visitor.storages
    end = len(bindings)
    for index, used in enumerate(uses):
        for s in used:
            storages[s].end = max(storages[s].end, index)
    result = func.body.body if isinstance(func.body, relax.SeqExpr) else func.body
    result_storages = set(visitor.backing_of(result))
    result_storages |= {
        s for v in relax.analysis.free_vars(result) for s in visitor.backing.get(handle(v), ())
    }
    for s, st in enumerate(storages):
        if st.kind is StorageKind.INPUT:
            st.end = end
        elif s in result_storages:
            st.kind, st.end = StorageKind.OUTPUT, end
        elif st.end < st.start:
            st.end = st.start  # never used: freed right after it is made

    weight_bytes = visitor.weight_bytes
    for c in constants.values():
        weight_bytes += evaluate(_known_bytes(c.ty), use_bounds)
    return Liveness(
        bindings=bindings,
        storages=storages,
        sizes=[evaluate(st.size, use_bounds) for st in storages],
        ops=ops,
        own=own,
        workspace_allocs=[
            tuple(evaluate(w, {**use_bounds, **shapes}) for w in ws)
            for ws, shapes in zip(workspaces, callee_shapes)
        ],
        weight_bytes=weight_bytes,
        bounds=use_bounds,
        unsized=visitor.unsized,
        backing=visitor.backing,
        func=func,
        reads=reads,
    )


def _workspace_in_inner_variables(
    mod: tvm.IRModule, func: relax.Function
) -> dict[str, tuple[SizeExpr, ...]] | None:
    """Exact workspace of the PrimFuncs whose ``alloc_buffer`` sizes use variables that a
    call's shapes do not fix, or None when there are none.

    A chunk composite for a symbolic length (lowering/composite.py) sizes its last chunk's
    buffers in the stage's own length variable, bound only through ``match_buffer``. TIR
    lowering (:func:`~.tir_workspace.lowered_workspace_allocations`) substitutes the
    function's lengths for them; the sum of the raw allocations cannot be evaluated.
    """
    from .planned import as_target
    from .tir_workspace import lowered_workspace_allocations

    outer = set(input_dims(func))
    inner = {
        gv: prim
        for gv, prim in mod.functions.items()
        if isinstance(prim, tirx.PrimFunc)
        and not isinstance(size := workspace_bytes(prim), int)
        and any(v.name not in outer for v in free_vars(size))
    }
    if not inner:
        return None
    try:
        return lowered_workspace_allocations(tvm.IRModule(inner), as_target("llvm"))
    except RuntimeError:  # TVM's errors: kernels scheduled for another target
        return None  # the sum of the raw allocations is used, where it can be evaluated


def estimate_activation_memory(
    mod_or_func: tvm.IRModule | relax.Function,
    *,
    func_name: str = "main",
    bounds: Mapping[str, int] | None = None,
    workspace: Mapping[str, tuple[int, ...]] | None = None,
) -> MemoryProfile:
    """Activation-memory liveness of a Relax function, binding by binding.

    Parameters
    ----------
    mod_or_func
        An IRModule (its ``func_name`` is analysed; PrimFuncs it calls contribute their internal
        workspace) or a single Relax function.
    func_name
        Function to analyse in a module.
    bounds
        Values for symbolic shape variables, by name. Defaults to the function's
        ``tir_var_upper_bound`` attribute, so sizes are upper bounds.
    workspace
        Internal allocations of called PrimFuncs by name, when known exactly (see
        :func:`~.tir_workspace.lowered_workspace_allocations`); otherwise the sum of their
        ``alloc_buffer`` allocations is used, an upper bound.

    Returns
    -------
    MemoryProfile

    Raises
    ------
    TypeError
        If the input is not an IRModule or a Relax function.
    ValueError
        If a size depends on a shape variable with no bound.

    Examples
    --------
    >>> import autochunk_tvm as ac
    >>> mod = ac.from_torch(*ac.models.gpt("tiny"))
    >>> profile = ac.estimate_activation_memory(mod)
    >>> profile.peak_bytes > profile.input_bytes
    True
    """
    mod, func, name = _resolve(mod_or_func, func_name)
    if workspace is None and mod is not None:
        workspace = _workspace_in_inner_variables(mod, func)
    live_info = analyse_liveness(mod, func, bounds, workspace)
    table = sources_table(mod, name) if mod is not None else {}
    return profile_from_liveness(name, live_info, table)


def profile_from_liveness(
    name: str, live_info: Liveness, sources: Mapping[str, TorchSource] | None = None
) -> MemoryProfile:
    """The :class:`MemoryProfile` of function ``name`` from its already computed liveness;
    ``sources`` is the function's table of recorded sources, if any (analysis/sources.py)."""
    bindings, storages, sizes = live_info.bindings, live_info.storages, live_info.sizes
    found = binding_sources(bindings, live_info.ops, sources or {})
    # Sweep in program order with start/end events: O(bindings + storages + output size).
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for s, st in enumerate(storages):
        starts.setdefault(max(st.start, 0), []).append(s)
        ends.setdefault(st.end, []).append(s)
    active: dict[int, None] = {}  # live storages, in creation order
    active_bytes = 0
    workspaces = live_info.workspaces
    records: list[BindingMemory] = []
    for index, binding in enumerate(bindings):
        for s in starts.get(index, ()):
            active[s] = None
            active_bytes += sizes[s]
        work = workspaces[index]
        live_tensors = tuple(storages[s].name for s in active)
        live_bytes = active_bytes + work
        for s in ends.get(index, ()):
            del active[s]
            active_bytes -= sizes[s]
        own_size = live_info.own[index]
        records.append(
            BindingMemory(
                index=index,
                name=binding.var.name,
                op=live_info.ops[index],
                own_bytes=evaluate(own_size, live_info.bounds),
                workspace_bytes=work,
                live_bytes=live_bytes,
                live_after_bytes=active_bytes,
                live_tensors=live_tensors,
                own_bytes_expr=str(own_size),
                source=found[index],
            )
        )

    input_bytes = sum(sizes[s] for s, st in enumerate(storages) if st.kind is StorageKind.INPUT)
    output_bytes = sum(sizes[s] for s, st in enumerate(storages) if st.kind is StorageKind.OUTPUT)
    if records:
        peak = max(records, key=lambda r: r.live_bytes)
        peak_bytes, peak_index, peak_name = peak.live_bytes, peak.index, peak.name
    else:
        peak_bytes, peak_index, peak_name = input_bytes, -1, ""
    return MemoryProfile(
        function=name,
        bindings=tuple(records),
        peak_bytes=peak_bytes,
        peak_index=peak_index,
        peak_binding=peak_name,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        weight_bytes=live_info.weight_bytes,
        workspace_bytes=max((r.workspace_bytes for r in records), default=0),
        bounds=dict(live_info.bounds),
        unsized=tuple(live_info.unsized),
    )
