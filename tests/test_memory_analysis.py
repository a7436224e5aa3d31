"""Exact results of the activation-memory analysis on hand-computed graphs."""

import re

import numpy as np
import pytest
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import autochunk_tvm as ac
from autochunk_tvm.analysis import format_bytes
from autochunk_tvm.analysis.plot import module_segment, per_operator
from autochunk_tvm.analysis.sizes import dtype_bytes
from autochunk_tvm.analysis.sources import TorchSource, add_sources, merge_layers, sources_table


@I.ir_module
class Chain:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 16), "float16")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            lv = R.astype(w, "float32")  # 512 B
            a = R.matmul(x, lv)  # 256 B
            b = R.reshape(a, (64,))  # view of a
            c = R.exp(b)  # 256 B
            d = R.split(c, 2)  # two separate 128 B outputs
            e = d[0]
            gv = R.add(e, e)  # 128 B
            R.output(gv)
        return gv


def test_chain_exact_bytes():
    p = ac.estimate_activation_memory(Chain)
    assert [b.own_bytes for b in p.bindings] == [512, 256, 0, 256, 256, 0, 128]
    # x (128) is live throughout; the peak is the matmul: x + lv + a.
    assert [b.live_bytes for b in p.bindings] == [640, 896, 384, 640, 640, 384, 384]
    assert (p.peak_bytes, p.peak_binding, p.peak_index) == (896, "a", 1)
    assert p.input_bytes == 128 and p.output_bytes == 128
    assert p.weight_bytes == 8 * 16 * 2  # the fp16 weight parameter, not an activation
    # reshape is a view: a stays live until c (which reads the view) is computed
    assert "a" in p.binding("c").live_tensors
    assert "a" not in p.binding("d").live_tensors
    # each split output dies on its own: d[1] is never used after the tuple is consumed
    assert p.binding("gv").live_tensors == ("x", "d[0]", "gv")


@I.ir_module
class Residual:
    @R.function
    def main(x: R.Tensor((256,), "float16")):
        with R.dataflow():
            h = R.multiply(x, R.const(2.0, "float16"))  # 512 B
            t = (h, x)
            u = t[0]
            s = R.sigmoid(u)  # 512 B
            y = R.add(s, h)  # 512 B, h is a residual kept alive across s
            R.output(y)
        return y


def test_tuple_and_residual_liveness():
    p = ac.estimate_activation_memory(Residual)
    assert [b.own_bytes for b in p.bindings] == [512, 0, 0, 512, 512]
    assert p.binding("y").live_bytes == 512 + 512 + 512 + 512  # x, h, s, y
    assert p.binding("y").live_after_bytes == 512 + 512  # x (caller-owned) and y
    assert p.peak_bytes == 2048 and p.peak_binding == "y"
    assert p.weight_bytes == 2  # the scalar constant


@I.ir_module
class Symbolic:
    @R.function
    def main(x: R.Tensor(("n", 64), "float32")):
        n = T.int64()  # noqa: F841 - declares the symbolic dim for TVMScript
        R.func_attr({"tir_var_upper_bound": {"n": 1024}})
        with R.dataflow():
            s = R.matmul(x, R.permute_dims(x))  # n * n * 4 B
            y = R.nn.softmax(s, axis=-1)
            R.output(y)
        return y


def test_symbolic_sizes_use_bounds():
    p = ac.estimate_activation_memory(Symbolic)  # the function's upper bound, n = 1024
    assert p.bounds == {"n": 1024}
    assert p.binding("s").own_bytes == 1024 * 1024 * 4
    assert "n" in p.binding("s").own_bytes_expr
    small = ac.estimate_activation_memory(Symbolic, bounds={"n": 10})
    assert small.binding("s").own_bytes == 400
    # peak at the matmul: x, x^T and s; at the softmax x^T is already dead (x, s, y = 3360)
    assert (small.peak_bytes, small.peak_binding) == (2560 * 2 + 400, "s")
    assert small.binding("y").live_bytes == 2560 + 400 * 2


def test_symbolic_without_bound_is_a_clear_error():
    func = Symbolic["main"].without_attr("tir_var_upper_bound")
    with pytest.raises(ValueError, match="bound"):
        ac.estimate_activation_memory(func)


@I.ir_module
class WithKernel:
    @T.prim_func(private=True, s_tir=True)
    def exp_twice(
        x: T.Buffer((T.int64(1024),), "float32"), y: T.Buffer((T.int64(1024),), "float32")
    ):
        tmp = T.alloc_buffer((T.int64(1024),), "float32")
        for i in range(T.int64(1024)):
            with T.sblock("a"):
                vi = T.axis.remap("S", [i])
                tmp[vi] = T.exp(x[vi])
        for i in range(T.int64(1024)):
            with T.sblock("b"):
                vi = T.axis.remap("S", [i])
                y[vi] = T.exp(tmp[vi])

    @R.function
    def main(x: R.Tensor((1024,), "float32")):
        cls = WithKernel
        with R.dataflow():
            y = R.call_tir(cls.exp_twice, (x,), out_ty=R.Tensor((1024,), "float32"))
            z = R.call_dps_packed("my_opaque_op", (y,), out_ty=R.Tensor((2, 1024), "float16"))
            R.output(z)
        return z


def test_tir_workspace_and_opaque_ops():
    p = ac.estimate_activation_memory(WithKernel)
    y = p.binding("y")
    assert y.workspace_bytes == 4096  # the kernel's full-size tmp buffer, live only in the call
    assert y.live_bytes == 4096 + 4096 + 4096
    assert p.binding("z").workspace_bytes == 0
    # an op the analysis knows nothing about is sized from its type
    assert p.binding("z").own_bytes == 2 * 1024 * 2
    assert p.workspace_bytes == 4096


@I.ir_module
class NonTensor:
    @R.function
    def main(x: R.Tensor((8, 8), "int32"), flag: R.Tensor((8, 8), "bool")):
        with R.dataflow():
            shape = R.shape_of(x)
            b = R.where(flag, x, R.const(0, "int32"))
            c = R.astype(b, "bfloat16")
            R.output(c, shape)
        return (c, shape)


def test_non_tensor_values_and_mixed_dtypes():
    p = ac.estimate_activation_memory(NonTensor)
    assert p.binding("shape").own_bytes == 0
    assert p.input_bytes == 8 * 8 * 4 + 8 * 8 * 1  # int32 + bool (one byte each)
    assert p.binding("c").own_bytes == 8 * 8 * 2
    assert p.output_bytes == 128  # the bf16 tensor; the shape costs nothing


def test_dtype_bytes():
    assert [dtype_bytes(d) for d in ("float32", "float16", "bfloat16", "int8", "bool")] == [
        4,
        2,
        2,
        1,
        1,
    ]


def test_function_without_bindings():
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    func = relax.Function([x], x)
    p = ac.estimate_activation_memory(func)
    assert p.bindings == () and p.peak_bytes == 16 and p.peak_index == -1


def test_bad_inputs_say_what_to_do():
    with pytest.raises(TypeError, match="from_torch"):
        ac.estimate_activation_memory("model.pt2")
    with pytest.raises(ValueError, match="func_name"):
        ac.estimate_activation_memory(Chain, func_name="forward")


def test_profile_summary_and_plot(tmp_path):
    p = ac.estimate_activation_memory(Chain)
    text = p.summary()
    # no recorded source (a TVMScript module): the peak is named by its op, and by its variable
    assert "peak 896 B at matmul (binding 1 'a' of 7)" in text
    out = p.plot(str(tmp_path / "profile.png"), compare=ac.estimate_activation_memory(Residual))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# -- labels in the model's terms ------------------------------------------------------------
LV_NAME = re.compile(r"\blv\d+\b")


def _figure_texts(fig) -> list[str]:
    """Every piece of text a figure shows: titles, axis labels, ticks, legends, notes."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


@pytest.fixture(scope="module")
def tiny_gpt():
    model, args = ac.models.gpt("tiny")
    return ac.from_torch(model, args)


def test_imported_bindings_are_labelled_with_torch_op_and_module(tiny_gpt):
    p = ac.estimate_activation_memory(tiny_gpt)
    labels = [b.label for b in p.bindings]
    assert not [label for label in labels if LV_NAME.search(label)]
    by_op = {b.op: b for b in p.bindings}
    softmax = by_op["relax.nn.softmax"]
    assert softmax.source.op == "softmax" and softmax.source.module == "blocks.1.attn"
    assert softmax.source.module_type == "CausalSelfAttention"
    assert softmax.label == "softmax in blocks.1.attn"
    # every layer's own ops, by the call the user wrote and the module that made it
    for layer in (0, 1):
        for label in (
            f"softmax in blocks.{layer}.attn",
            f"linear in blocks.{layer}.mlp.fc",
            f"layer_norm in blocks.{layer}.ln_1",
            f"gelu in blocks.{layer}.mlp",
        ):
            assert label in labels
    # the output tuple has no torch call of its own: its op names it
    assert p.bindings[-1].source is None and p.bindings[-1].label == "tuple"
    assert LV_NAME.search(p.peak_binding) and " in blocks." in p.peak_label
    assert p.peak_label in p.summary()


def test_labels_fall_back_to_the_op_never_the_variable(tiny_gpt):
    chain = ac.estimate_activation_memory(Chain)
    assert [b.label for b in chain.bindings] == [
        "astype", "matmul", "reshape", "exp", "split", "tuple_get_item", "add"
    ]  # fmt: skip
    # once legalized, a name no longer computes the op it was recorded for (FuseOps even
    # reuses the names): the recorded source is not applied
    legal = relax.transform.LegalizeOps()(tiny_gpt)
    lowered = ac.estimate_activation_memory(legal)
    assert all(b.source is None for b in lowered.bindings if b.op.startswith("call_tir"))
    assert not [b.label for b in lowered.bindings if LV_NAME.search(b.label)]


def test_sources_survive_a_saved_program_and_leave_the_input_alone(tiny_gpt, tmp_path):
    import torch

    model, args = ac.models.gpt("tiny")
    path = tmp_path / "gpt.pt2"
    torch.export.save(torch.export.export(model, args), str(path))
    assert sources_table(ac.from_torch(str(path))) == sources_table(tiny_gpt)
    table = sources_table(tiny_gpt)
    extra = {"lv0": TorchSource("thing", "a.b", relax_op="relax.add")}
    bigger = add_sources(tiny_gpt, "main", extra)
    assert sources_table(bigger) == {**table, **extra}
    assert sources_table(tiny_gpt) == table  # the caller's module is not changed
    assert sources_table(tiny_gpt, "forward") == {}
    with pytest.raises(ValueError, match="op name"):
        TorchSource("")


def test_relax_profile_figure_names_peaks_and_says_what_it_counts(tiny_gpt):
    p = ac.estimate_activation_memory(tiny_gpt)
    fig = p.figure(title="tiny GPT")
    texts = _figure_texts(fig)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"live tensors: peak {format_bytes(p.peak_bytes)} at {p.peak_label}"]
    assert any("before TVM's memory planning" in t for t in texts)
    assert not [t for t in texts if LV_NAME.search(t)]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert {"blocks.0", "blocks.1"} <= set(ticks)


def test_merged_layer_labels_and_per_operator_bytes():
    assert merge_layers(["x in blocks.0.attn"] * 2) == "x in blocks.0.attn"
    layers = [f"matmul..add in h.{i}" for i in range(12)]
    assert merge_layers(layers) == "matmul..add in h.{0..11}"
    assert merge_layers(["a in h.0.attn", "a in h.2.attn", "a in h.5.attn"]) == (
        "a in h.{0,2,5}.attn"
    )
    assert merge_layers(["a in h.0", "b in h.1"]) == "a in h.0; b in h.1"
    # lowered bindings 0..5 belong to operators 0, 0, 1, 3, 3, 5 (2 and 4 have none of their
    # own: they are computed with the next); past the end counts for the last operator
    assert per_operator([1, 4, 2, 7, 3, 9], [0, 0, 1, 3, 3, 5], 5) == [4, 2, 7, 7, 9]
    assert module_segment("blocks.3.attn.qkv") == "blocks.3" and module_segment("lm_head") == (
        "lm_head"
    )


def test_profile_is_immutable():
    p = ac.estimate_activation_memory(Chain)
    with pytest.raises(AttributeError):
        p.peak_bytes = 0  # type: ignore[misc]


def test_analysis_does_not_mutate_module():
    before = Chain.script()
    ac.estimate_activation_memory(Chain)
    ac.static_allocation(Chain, "llvm")
    assert Chain.script() == before


def _function(params, bindings, result):
    """A Relax function made of exactly these bindings (no normalization, which would bind a
    tuple literal to a variable of its own before reading a field)."""
    vbs = [relax.VarBinding(var, value) for var, value in bindings]
    return relax.Function(params, relax.SeqExpr([relax.BindingBlock(vbs)], result), result.ty)


def _tensor(name, n):
    return relax.Var(name, relax.TensorType([n], "float32"))


def test_field_of_a_tuple_literal_is_that_fields_storage():
    # The lowered transformers GPT-2 reads a field of a tuple literal: `e = (a, b)[0]`.
    x = _tensor("x", 16)
    a, b, e, y = _tensor("a", 16), _tensor("b", 32), _tensor("e", 16), _tensor("y", 16)
    func = _function(
        [x],
        [
            (a, relax.op.exp(x)),  # 64 B
            (b, relax.op.zeros(relax.ShapeExpr([32]), "float32")),  # 128 B
            (e, relax.TupleGetItem(relax.Tuple([a, b]), 0)),  # a view of a
            (y, relax.op.add(e, e)),  # 64 B; b is dead by now, a is read through e
        ],
        y,
    )
    p = ac.estimate_activation_memory(func)
    assert [r.own_bytes for r in p.bindings] == [64, 128, 0, 64]
    assert p.binding("y").live_tensors == ("x", "a", "y")


def test_every_kind_of_value_is_accounted_for():
    x = _tensor("x", 16)
    s = relax.Var("s", relax.ShapeType(ndim=1))
    k = relax.Var("k", relax.TensorType([16], "float32"))
    c = relax.Var("c", relax.TensorType([16], "float32"))
    y = _tensor("y", 16)
    bindings = [
        (s, relax.ShapeExpr([16])),  # a shape: no storage
        (k, relax.const(np.ones(16, "float32"))),  # a bound constant is a weight
        (c, relax.op.multiply(x, k)),  # 64 B
        (y, relax.op.add(c, x)),  # 64 B
    ]
    p = ac.estimate_activation_memory(_function([x], bindings, y))
    assert [r.own_bytes for r in p.bindings] == [0, 0, 64, 64]
    assert p.weight_bytes == 64 and p.output_bytes == 64 and p.unsized == ()


def test_one_list_of_views_for_memory_cost_and_report():
    from autochunk_tvm.analysis.views import is_view_value

    x = relax.Var("x", relax.TensorType([2, 3, 4], "float32"))
    assert is_view_value(relax.op.flatten(x))  # legalizes to a reshape: a view
    assert is_view_value(relax.op.reshape(x, (6, 4)))
    assert not is_view_value(relax.op.permute_dims(x))  # TVM copies a transpose
    assert not is_view_value(relax.op.broadcast_to(x, (2, 2, 3, 4)))
    flat = _tensor("f", 24)
    p = ac.estimate_activation_memory(_function([x], [(flat, relax.op.flatten(x))], flat))
    assert p.bindings[0].own_bytes == 0


def _copy_kernel(n):
    @T.prim_func(private=True, s_tir=True)
    def copy(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
        for i in range(n):
            with T.sblock("b"):
                vi = T.axis.spatial(n, i)
                b[vi] = a[vi]

    return copy


def test_a_structural_memo_finds_a_node_it_knows_by_handle_without_hashing(monkeypatch):
    # NOTE [identity first]: the modules of successive plans share their kernels as objects.
    import tvm_ffi

    from autochunk_tvm.analysis import memo

    hashed = []
    real_hash = tvm_ffi.structural_hash
    monkeypatch.setattr(memo.tvm_ffi, "structural_hash", lambda n: hashed.append(n) or real_hash(n))
    cache = memo.StructuralMemo()
    first, twin, other = _copy_kernel(8), _copy_kernel(8), _copy_kernel(16)
    assert first is not twin and first.__chandle__() != twin.__chandle__()
    cache.put(first, "sizes", "llvm")
    hashed.clear()
    assert cache.get(first, "llvm") == "sizes" and not hashed  # the stored object itself
    assert cache.get(twin, "llvm") == "sizes" and len(hashed) == 1  # equal: found by its hash
    assert cache.get(twin, "llvm") == "sizes" and len(hashed) == 1  # ... and known from then on
    assert cache.get(twin, "cuda") is None  # the other key parts still count
    assert cache.get(other, "llvm") is None


@pytest.mark.parametrize("target", ["llvm", "cuda"])
def test_legalizing_with_kernels_made_once_gives_the_module_legalize_ops_gives(target):
    """NOTE [kernels made once]: alike calls share one kernel, made once; calls whose kernel
    could depend on more than their types (constant and scalar arguments) are made each time,
    and the result is the module LegalizeOps makes, structurally."""
    import tvm

    from autochunk_tvm.analysis.legalize import legalize_ops_reusing_kernels
    from autochunk_tvm.analysis.planned import as_target

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((64, 32), "float32"), w: R.Tensor((32, 32), "float32")):
            with R.dataflow():
                a = R.matmul(x, w)
                b = R.add(a, R.const(1.0, "float32"))
                c = R.matmul(b, w)
                d = R.add(c, R.const(2.0, "float32"))
                e = R.reshape(d, R.shape([32, 64]))
                f = R.reshape(a, R.shape([32, 64]))
                g = R.reshape(b, R.shape([64, 32]))
                h = R.nn.softmax(e, axis=-1)
                i = R.nn.softmax(f, axis=0)
                j = R.add(h, i)
                R.output(j, g)
            return (j, g)

    model, args = ac.models.gpt("small", n_layer=3, seq_len=64)
    for mod in (Module, ac.from_torch(model, args)):
        with as_target(target):
            expected = relax.transform.LegalizeOps()(mod)
            tvm.ir.assert_structural_equal(legalize_ops_reusing_kernels(mod), expected)


@pytest.mark.parametrize("target", ["llvm", "cuda"])
def test_never_cleared_variables_are_those_kill_after_last_use_leaves(target):
    """NOTE [pinned storages]: the rule read off the bindings holds the storages that running
    LowerAllocTensor and KillAfterLastUse leaves held, on every plan of one region of two
    models, including plans whose chunked region pins a tuple's storages."""
    import tvm

    from autochunk_tvm.analysis.memory import StorageKind, handle
    from autochunk_tvm.analysis.planned import never_cleared, never_cleared_by_passes
    from autochunk_tvm.lowering import ChunkStep
    from autochunk_tvm.search import search_chunk_candidates
    from autochunk_tvm.selection.estimate import PlanEstimator

    def storages(live, held):
        return {s for b in live.bindings if handle(b.var) in held for s in live.storages_of(b.var)}

    pinned_dead = 0
    plans = 0
    for model, args in (ac.models.gpt("tiny", n_layer=2), ac.models.evoformer("tiny")):
        mod = ac.from_torch(model, args)
        est = PlanEstimator(mod, target)
        cands = search_chunk_candidates(mod)
        for cand in [None, *cands[:: max(1, len(cands) // 12)]]:
            steps = () if cand is None else (ChunkStep(cand, 2),)
            live = est.estimate(steps).allocation.liveness
            lowered = tvm.IRModule({"main": live.func})
            rule = never_cleared(live)
            assert rule is not None
            held = storages(live, rule)
            assert held == storages(live, never_cleared_by_passes(lowered, "main"))
            pinned_dead += any(live.storages[s].kind is StorageKind.INTERMEDIATE for s in held)
            plans += 1
    assert plans >= 20 and pinned_dead >= 1, (plans, pinned_dead)
