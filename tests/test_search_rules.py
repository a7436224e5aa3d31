"""Unit tests of the per-op chunk rules, family by family: given a chunk axis on the output,
the axis (or None, used whole) of each argument, or CantChunk where the op computes across it."""

from fractions import Fraction

import pytest
from tvm import relax

from autochunk_tvm.search import CantChunk
from autochunk_tvm.search.rules import RULES, rule_for


def var(name, shape, dtype="float32"):
    return relax.Var(name, relax.TensorType(shape, dtype))


def normalized(call):
    bb = relax.BlockBuilder()
    return bb.normalize(call)


def flows(call, axis):
    call = normalized(call)
    result = rule_for(call)(call, axis)
    return [
        [None if f is None else f[0] for f in r]
        if isinstance(r, list)
        else (None if r is None else r[0])
        for r in result
    ]


x3 = var("x", (4, 6, 8))


class TestNN:
    def test_layer_and_rms_norm(self):
        g, b = var("g", (8,)), var("b", (8,))
        ln = relax.op.nn.layer_norm(x3, g, b, axes=[-1])
        assert flows(ln, 0) == [0, None, None] and flows(ln, 1) == [1, None, None]
        with pytest.raises(CantChunk, match="statistics"):
            flows(ln, 2)
        rms = relax.op.nn.rms_norm(x3, g, axes=[-1])
        assert flows(rms, 1) == [1, None]

    def test_group_norm_batch_only(self):
        x = var("x", (2, 8, 5, 5))
        gn = relax.op.nn.group_norm(
            x, var("g", (8,)), var("b", (8,)), num_groups=2, channel_axis=1, axes=[2, 3]
        )
        assert flows(gn, 0) == [0, None, None]
        for axis in (1, 2, 3):
            with pytest.raises(CantChunk):
                flows(gn, axis)

    def test_attention(self):
        q, k, v = var("q", (2, 16, 4, 8)), var("k", (2, 12, 4, 8)), var("v", (2, 12, 4, 8))
        att = relax.op.nn.attention(q, k, v)
        assert flows(att, 0) == [0, 0, 0]
        assert flows(att, 1) == [1, None, None]  # queries: keys and values whole
        assert flows(att, 2) == [2, 2, 2]  # heads
        causal = relax.op.nn.attention(q, k, v, causal_mask="TopLeft")
        with pytest.raises(CantChunk, match="causal"):
            flows(causal, 1)
        assert flows(causal, 2) == [2, 2, 2]

    def test_conv2d(self):
        conv = relax.op.nn.conv2d(var("x", (2, 3, 8, 8)), var("w", (5, 3, 3, 3)), padding=1)
        assert flows(conv, 0) == [0, None] and flows(conv, 1) == [None, 0]
        with pytest.raises(CantChunk, match="halo"):
            flows(conv, 2)


class TestManipulate:
    def test_take_gathers_rows_by_index_chunks(self):
        table, ids = var("table", (100, 8)), var("ids", (3, 16), "int64")
        emb = relax.op.take(table, ids, axis=0)  # (3, 16, 8)
        assert flows(emb, 0) == [None, 0] and flows(emb, 1) == [None, 1]
        assert flows(emb, 2) == [1, None]

    def test_concat_and_split_on_other_axes(self):
        cat = relax.op.concat([x3, var("y", (4, 6, 2))], axis=2)
        assert flows(cat, 0) == [[0, 0]]
        with pytest.raises(CantChunk, match="concatenated"):
            flows(cat, 2)
        split = normalized(relax.op.split(x3, 2, axis=2))
        assert RULES["relax.split"](split, 1) == [(1, Fraction(1))]
        with pytest.raises(CantChunk, match="split along"):
            RULES["relax.split"](split, 2)

    def test_expand_squeeze_slice_broadcast(self):
        assert flows(relax.op.expand_dims(x3, [0]), 2) == [1]
        with pytest.raises(CantChunk, match="size-1"):
            flows(relax.op.expand_dims(x3, [0]), 0)
        assert flows(relax.op.squeeze(var("s", (4, 1, 8)), [1]), 1) == [2]
        sl = relax.op.strided_slice(x3, axes=[1], begin=[1], end=[5])
        assert flows(sl, 0)[0] == 0
        with pytest.raises(CantChunk, match="sliced"):
            flows(sl, 1)
        bc = relax.op.broadcast_to(var("r", (1, 8)), (6, 8))
        assert flows(bc, 0)[0] is None and flows(bc, 1)[0] == 1

    def test_reshape_scales(self):
        split = normalized(relax.op.reshape(var("m", (24, 8)), (4, 6, 8)))
        assert RULES["relax.reshape"](split, 0)[0] == (0, Fraction(6))
        merge = normalized(relax.op.reshape(x3, (24, 8)))
        assert RULES["relax.reshape"](merge, 0)[0] == (0, Fraction(1, 6))
        with pytest.raises(CantChunk, match="inner factor"):
            RULES["relax.reshape"](split, 1)

    def test_triangular_masks_only_batch_axes(self):
        tri = relax.op.tril(x3)
        assert flows(tri, 0)[0] == 0
        with pytest.raises(CantChunk, match="absolute"):
            flows(tri, 1)

    def test_creation_ops_have_nothing_to_chunk(self):
        z = relax.op.zeros((4, 6), "float32")
        assert flows(z, 0) == [None]


class TestContractionsAndReductions:
    def test_einsum(self):
        e = relax.op.einsum([var("a", (4, 5, 6)), var("b", (4, 6, 7))], "bij,bjk->bik")
        assert flows(e, 0) == [[0, 0]] and flows(e, 1) == [[1, None]]
        assert flows(e, 2) == [[None, 2]]

    def test_matmul_vectors_and_broadcast_batch(self):
        mv = relax.op.matmul(var("a", (3, 4, 5)), var("v", (5,)))
        assert flows(mv, 1) == [1, None] and flows(mv, 0) == [0, None]
        bb = relax.op.matmul(var("a", (3, 4, 5)), var("w", (1, 5, 6)))
        assert flows(bb, 0) == [0, None]  # w broadcast over the batch: used whole

    def test_scans_and_reductions_without_keepdims(self):
        cs = relax.op.cumsum(x3, axis=1)
        assert flows(cs, 0) == [0]
        with pytest.raises(CantChunk, match="scanned"):
            flows(cs, 1)
        am = relax.op.argmax(x3, axis=1, keepdims=False)  # (4, 8)
        assert flows(am, 1) == [2]


@pytest.mark.parametrize("name", ["gpt", "vit", "evoformer", "unet"])
def test_every_zoo_op_has_a_rule(name):
    """The registry covers every op torch.export produces for the zoo (views included)."""
    import autochunk_tvm as ac
    from autochunk_tvm.search import flat_bindings

    model, args = ac.models.FACTORIES[name]("tiny")
    ops = {
        b.value.op.name
        for b in flat_bindings(ac.from_torch(model, args)["main"])
        if isinstance(b.value, relax.Call)
    }
    assert ops - set(RULES) == set(), "ops without a chunk rule"


def test_resize_chunks_batch_and_channels():
    up = relax.op.image.resize2d(var("x", (2, 4, 8, 8)), (16, 16), method="nearest_neighbor")
    assert flows(up, 1)[0] == 1
    with pytest.raises(CantChunk, match="index arithmetic"):
        flows(up, 2)


def test_registry_rejects_duplicates():
    from autochunk_tvm.search.rules import register

    with pytest.raises(ValueError, match="already registered"):
        register("relax.exp")(lambda call, axis: [None])


def test_arange_is_not_chunked_inside_a_region():
    """Its values depend on the chunk's offset, which a chunk at chunk shape does not know (a
    region starting at an arange once lowered to a wrong broadcast); outside the region, the
    region reads chunk views of its output."""
    ar = relax.op.arange(0, 16, 1, "int64")
    with pytest.raises(CantChunk, match="offset"):
        flows(ar, 0)


def test_a_registered_rule_takes_effect_in_later_searches():
    """Search caches rule answers per call, refusals ("no chunk rule") included: registering
    a rule must drop them, or the same module would still see a barrier."""
    import autochunk_tvm as ac
    from autochunk_tvm.search.candidate import WHOLE
    from autochunk_tvm.search.rules import flow, register, unregister

    bb = relax.BlockBuilder()
    x = var("x", (256, 64))
    with bb.function("main", [x]):
        with bb.dataflow():
            e = bb.emit(relax.op.exp(x))
            t = bb.emit(relax.op.trunc(e))
            out = bb.emit_output(relax.op.multiply(t, e))
        bb.emit_func_output(out)
    mod = bb.get()
    assert "relax.trunc" not in RULES

    def crossing():
        return [c for c in ac.search_chunk_candidates(mod) if c.axes.get(t.name, WHOLE).chunked]

    assert crossing() == []  # a barrier, and the refusal is now cached
    register("relax.trunc")(lambda call, out_axis: [flow(out_axis)])
    try:
        assert crossing(), "the new rule was not consulted"
    finally:
        unregister("relax.trunc")
    assert crossing() == []
    with pytest.raises(KeyError, match="no chunk rule"):
        unregister("relax.trunc")
