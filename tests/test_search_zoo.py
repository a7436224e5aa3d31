"""Search on the zoo: it finds the chunks experts write by hand, and every candidate checked
computes the same function when executed chunked (reference executor, before lowering)."""

import dataclasses
import random

import numpy as np
import pytest
from conftest import op_name, run_on_vm

import autochunk_tvm as ac
from autochunk_tvm.search import ChunkAxis, flat_bindings, search_chunk_candidates
from autochunk_tvm.search.reference import chunk_with_reference


def _axes_of(mod, candidates, op):
    """(chunk axis, shape) of the first ``op`` binding in every candidate containing one."""
    bindings = flat_bindings(mod["main"])
    found = set()
    for c in candidates:
        for b in bindings[c.start : c.end + 1]:
            if op_name(b) == op:
                found.add((c.axes[b.var.name].axis, tuple(int(d) for d in b.var.ty.shape.values)))
                break
    return found


def _check_numerics(mod, args, candidates, chunk_units, rng, n=4):
    ref = run_on_vm(mod, args)
    for c in rng.sample(candidates, min(n, len(candidates))):
        units = min(chunk_units, c.extent - 1)
        out = run_on_vm(chunk_with_reference(mod, c, units), args)
        for o, r in zip(out, ref):
            np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5, err_msg=str(c))


@pytest.fixture(scope="module")
def gpt_attention():
    model, args = ac.models.gpt("tiny", seq_len=64)  # scores (1, 4, 64, 64) dominate
    mod = ac.from_torch(model, args)
    return mod, args, search_chunk_candidates(mod)


def test_gpt_attention_scores_chunked_over_queries(gpt_attention):
    mod, args, candidates = gpt_attention
    # the expert chunk of attention: softmax rows, i.e. the query axis of (B, H, Tq, Tk)
    assert (2, (1, 4, 64, 64)) in _axes_of(mod, candidates, "relax.nn.softmax")
    # ... and never the key axis the softmax normalizes over
    assert all(axis != 3 for axis, _ in _axes_of(mod, candidates, "relax.nn.softmax"))
    _check_numerics(mod, args, candidates, chunk_units=5, rng=random.Random(0))


def test_searches_that_share_their_traces_find_what_each_finds_alone(gpt_attention, monkeypatch):
    """Selection's searches around several centres share one table of traces (traced=): each
    finds the candidates it finds alone, and no region is traced twice."""
    from autochunk_tvm.search import regions

    mod, _, _ = gpt_attention
    n = len(flat_bindings(mod["main"]))
    centres = [n // 3, n // 3 + 2, n // 2]
    calls = []
    real = regions.trace_region

    def counted(func, start, end, axes, **kw):
        calls.append((start, end, tuple(axes.items())))
        return real(func, start, end, axes, **kw)

    monkeypatch.setattr(regions, "trace_region", counted)
    alone = [search_chunk_candidates(mod, centre=c) for c in centres]
    traced_alone, calls[:] = len(calls), []
    table: dict = {}
    shared = [search_chunk_candidates(mod, centre=c, traced=table) for c in centres]
    assert shared == alone and all(alone)
    assert len(calls) == len(set(calls)) == len(table) < traced_alone
    found = {(c.start, c.end, tuple((o, a.axis) for o, a in c.outputs)) for f in alone for c in f}
    assert {key for key, cand in table.items() if cand is not None} == found


@pytest.mark.slow  # 32 s; test_lowering's gpt-mlp region chunks it over the sequence
def test_gpt_mlp_chunked_over_the_sequence():
    model, args = ac.models.gpt("tiny")  # the MLP hidden layer is the peak at this size
    mod = ac.from_torch(model, args)
    candidates = search_chunk_candidates(mod)
    assert (1, (1, 16, 128)) in _axes_of(mod, candidates, "relax.nn.gelu_tanh")
    _check_numerics(mod, args, candidates, chunk_units=3, rng=random.Random(1))


@pytest.mark.slow  # 30 s; test_lowering's evoformer-transition region lowers these rows
def test_evoformer_transition_chunked_over_msa_rows_like_openfold():
    model, args = ac.models.evoformer("tiny")
    mod = ac.from_torch(model, args)
    candidates = search_chunk_candidates(mod)
    assert (0, (8, 12, 64)) in _axes_of(mod, candidates, "relax.nn.relu")
    _check_numerics(mod, args, candidates, chunk_units=3, rng=random.Random(2))


def test_reference_check_catches_an_illegal_chunk(gpt_attention):
    """The numerical check is not vacuous: chunking the softmax over keys changes the result."""
    mod, args, candidates = gpt_attention
    bindings = flat_bindings(mod["main"])
    legal = next(
        c
        for c in candidates
        if any(op_name(b) == "relax.nn.softmax" for b in bindings[c.start : c.end + 1])
        and c.end - c.start < 8
    )
    softmax = next(
        b.var.name
        for b in bindings[legal.start : legal.end + 1]
        if op_name(b) == "relax.nn.softmax"
    )
    # Re-label the softmax as chunked over keys (axis 3) while its input stays on queries:
    # exactly what the flow forbids.
    wrong = dataclasses.replace(
        legal,
        bindings=tuple((n, ChunkAxis(3) if n == softmax else a) for n, a in legal.bindings),
    )
    with pytest.raises(Exception):  # noqa: B017 - either a shape error or a wrong result
        out = run_on_vm(chunk_with_reference(mod, wrong, 8), args)
        ref = run_on_vm(mod, args)
        np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 29 s; the corpus' OpenFold blocks chunk triangle attention in the suite
def test_evoformer_triangle_attention_chunked_over_rows_like_openfold():
    model, args = ac.models.evoformer("tiny", n_res=32)  # triangle attention logits peak
    mod = ac.from_torch(model, args)
    candidates = search_chunk_candidates(mod)
    axes = _axes_of(mod, candidates, "relax.nn.softmax")
    # OpenFold chunks triangle attention over the pair rows: logits (i, heads, j, k), axis 0
    assert (0, (32, 2, 32, 32)) in axes
    assert all(axis != 3 for axis, _ in axes)  # never the keys the softmax normalizes over
    _check_numerics(mod, args, candidates, chunk_units=5, rng=random.Random(3), n=2)


@pytest.mark.parametrize("name", ["vit", pytest.param("unet", marks=pytest.mark.slow)])  # 48 s
def test_vit_and_unet_candidates_are_exact(name):
    model, args = ac.models.FACTORIES[name]("tiny")
    mod = ac.from_torch(model, args)
    candidates = search_chunk_candidates(mod)
    assert candidates, f"no chunk region found around the {name} peak"
    _check_numerics(mod, args, candidates, chunk_units=3, rng=random.Random(4), n=2)
