"""Lowering (stage 4): chunk plans become one TIR loop over chunks, and give the same output.

Numerics compare the chunked build with the unchunked one on llvm, for hand-written plans over
each region kind of the zoo and chunk counts {1, 2, 3, 7, extent}; CUDA plans are built and
exported (no GPU needed) and their device kernels counted.
"""

import dataclasses
import re

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from conftest import cuda_kernels, op_name, run_on_vm
from tvm import relax, s_tir

import autochunk_tvm as ac
from autochunk_tvm.analysis.planned import as_target
from autochunk_tvm.lowering.stages import legalize_region
from autochunk_tvm.lowering import (
    COMPOSITE_ATTR,
    ChunkPlan,
    ChunkPlanError,
    ChunkStep,
    lower_chunk_plan,
)
from autochunk_tvm.search import (
    ChunkAxis,
    flat_bindings,
    search_chunk_candidates,
    trace_region,
)
from autochunk_tvm.transform import LowerChunkPlan

COUNTS = (1, 2, 3, 7, None)  # None: one chunk unit per chunk (count = extent)


def _region(mod, candidates, op, axis):
    """The longest candidate chunking an ``op`` binding along ``axis``."""
    bindings = flat_bindings(mod["main"])
    found = [
        c
        for c in candidates
        if any(
            op_name(b) == op and c.axes[b.var.name].axis == axis
            for b in bindings[c.start : c.end + 1]
        )
    ]
    assert found, f"search found no region chunking {op} on axis {axis}"
    return max(found, key=lambda c: (c.end - c.start, -c.start))


def _chunk_len(cand, count):
    return 1 if count is None else ChunkPlan.chunk_len_for(cand, min(count, cand.extent))


def _composites(mod):
    return {
        gv.name_hint: f
        for gv, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and COMPOSITE_ATTR in f.attrs
    }


def _stage_blocks(prim):
    names = []
    tvm_ffi.structural_walk(prim.body, ((s_tir.SBlock,), lambda b: names.append(b.name_hint)))
    return [n for n in names if re.match(r"s\d+_", n)]


def _check(mod, args, plan, tol=1e-5):
    ref = run_on_vm(mod, args)
    out = run_on_vm(LowerChunkPlan(plan, "llvm")(mod), args)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, rtol=tol, atol=tol, err_msg=str(plan.steps[0]))


# ---- zoo numerics ------------------------------------------------------------------------------

ZOO_REGIONS = {
    # model, preset overrides, the op a region must contain, its chunk axis
    "gpt-attention": ("gpt", {"seq_len": 64}, "relax.nn.softmax", 2),
    "gpt-mlp": ("gpt", {}, "relax.nn.gelu_tanh", 1),
    "evoformer-transition": ("evoformer", {}, "relax.nn.relu", 0),
    "evoformer-triangle": ("evoformer", {"n_res": 32}, "relax.nn.softmax", 0),
    "vit-attention": ("vit", {}, "relax.nn.softmax", 2),
    "unet-resnet-conv": ("unet", {}, "relax.nn.conv2d", 1),  # over output channels
}


@pytest.fixture(scope="module")
def zoo():
    cache = {}

    def get(key):
        name, overrides, op, axis = ZOO_REGIONS[key]
        model_key = (name, tuple(sorted(overrides.items())))
        if model_key not in cache:
            model, args = ac.models.FACTORIES[name]("tiny", **overrides)
            mod = ac.from_torch(model, args)
            cache[model_key] = (mod, args, search_chunk_candidates(mod))
        mod, args, cands = cache[model_key]
        return mod, args, _region(mod, cands, op, axis)

    return get


# The Evoformer's triangle and the UNet's convolution take 30-35 s each: kept for -m slow.
HEAVY_REGIONS = {"evoformer-triangle", "unet-resnet-conv"}


@pytest.mark.parametrize(
    "key",
    [pytest.param(k, marks=pytest.mark.slow) if k in HEAVY_REGIONS else k for k in ZOO_REGIONS],
)
def test_zoo_region_chunked_equals_unchunked(zoo, key):
    mod, args, cand = zoo(key)
    ref = run_on_vm(mod, args)
    for count in COUNTS if key in ("gpt-attention", "evoformer-triangle") else (3, None):
        plan = ChunkPlan.of((cand, _chunk_len(cand, count)))
        out = run_on_vm(lower_chunk_plan(mod, plan, "llvm"), args)
        for o, r in zip(out, ref):
            np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5, err_msg=f"{key} n={count}")


@pytest.mark.slow
@pytest.mark.parametrize("key", list(ZOO_REGIONS))
def test_zoo_region_every_chunk_count(zoo, key):
    mod, args, cand = zoo(key)
    ref = run_on_vm(mod, args)
    for count in COUNTS:
        plan = ChunkPlan.of((cand, _chunk_len(cand, count)))
        out = run_on_vm(lower_chunk_plan(mod, plan, "llvm"), args)
        for o, r in zip(out, ref):
            np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5, err_msg=f"{key} n={count}")


def test_single_kernel_region_without_temporaries(zoo):
    """A region of one kernel has one output and no chunk-sized storage: its call_tir returns
    the tensor itself, not a 1-tuple."""
    mod, args, _ = zoo("gpt-attention")
    bindings = flat_bindings(mod["main"])
    at = next(i for i, b in enumerate(bindings) if op_name(b) == "relax.nn.softmax")
    single = next(c for c in search_chunk_candidates(mod, centre=at) if c.start == c.end == at)
    _check(mod, args, ChunkPlan.of((single, max(1, single.extent - 1))))


def test_two_regions_in_one_plan(zoo):
    """Search looks around the peak only; the second layer's attention is traced by hand."""
    mod, args, _ = zoo("gpt-attention")
    func = mod["main"]
    bindings = flat_bindings(func)
    softmaxes = [i for i, b in enumerate(bindings) if op_name(b) == "relax.nn.softmax"]
    assert len(softmaxes) >= 2
    # softmax over queries, then probabilities @ V: both chunked on the query axis (2)
    steps = [
        (trace_region(func, i, i + 1, {bindings[i + 1].var.name: 2}), 5) for i in softmaxes[:2]
    ]
    plan = ChunkPlan.of(*reversed(steps))  # steps need not be in program order
    lowered = lower_chunk_plan(mod, plan, "llvm")
    assert len(_composites(lowered)) == 2
    _check(mod, args, plan)


def test_fp16_gpt_attention_within_half_precision():
    model, args = ac.models.gpt("tiny", seq_len=32, dtype=torch.float16)
    mod = ac.from_torch(model, args)
    cand = _region(mod, search_chunk_candidates(mod), "relax.nn.softmax", 2)
    _check(mod, args, ChunkPlan.of((cand, 5)), tol=2e-3)


def test_cpu_chunk_kernels_fuse_elementwise_loop_nests():
    """A kernel at chunk shape has small constant loop extents, which LLVM unrolled completely:
    a chunked fp16 GPT once took 200 s to JIT (NOTE [small constant loop nests]). Elementwise
    kernels get one fused loop; reductions keep their nest."""
    x = relax.Var("x", relax.TensorType((1, 21, 512), "float16"))
    bb = relax.BlockBuilder()
    with bb.function("region", [x]):
        g = bb.emit(relax.op.nn.gelu_tanh(x))
        s = bb.emit(relax.op.sum(g, axis=[2]))
        bb.emit_func_output(s)
    legal = legalize_region(bb.get()["region"], as_target("llvm"))
    loops = {}
    for prim in legal.functions.values():
        if isinstance(prim, tvm.tirx.PrimFunc):
            sch = s_tir.Schedule(tvm.IRModule({"main": prim}))
            for block in sch.get_child_blocks(sch.get_sblock("root")):
                loops[sch.get(block).name_hint] = len(sch.get_loops(block))
    spatial = [n for n in loops if "T_" in n or "gelu" in n or "compute" in n]
    assert spatial and all(loops[n] == 1 for n in spatial), loops
    assert max(loops.values()) >= 3, loops  # the sum's (spatial, spatial, reduce) nest


# ---- the composite itself ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(32, 128)
            self.fc2 = torch.nn.Linear(128, 32)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x))) + x

    args = (torch.randn(1, 50, 32),)
    mod = ac.from_torch(MLP().eval(), args)
    cands = search_chunk_candidates(mod)
    cand = max((c for c in cands if c.extent == 50), key=lambda c: c.end - c.start)
    return MLP, mod, args, cand


def test_region_becomes_one_call_to_a_loop_over_chunks(mlp):
    _, mod, args, cand = mlp
    before = mod.script()
    lowered = LowerChunkPlan(ChunkPlan.of((cand, 8)), "llvm")(mod)
    assert mod.script() == before, "the pass must not modify its input module"
    ((name, prim),) = _composites(lowered).items()
    calls = [b for b in flat_bindings(lowered["main"]) if op_name(b) == "relax.call_tir"]
    assert [c.value.args[0].name_hint for c in calls] == [name]
    # 50 = 6 chunks of 8 + a last chunk of 2: a loop of 6, then the tail stages
    loops = []
    tvm_ffi.structural_walk(prim.body, ((tvm.tirx.For,), loops.append))
    assert any(int(lp.extent) == 6 and lp.loop_var.name == "c" for lp in loops)
    stages = _stage_blocks(prim)
    assert len(stages) % 2 == 0 and len(stages) >= 4  # full-chunk and last-chunk variants
    # the hidden layer (1, 50, 128) appears only at chunk size, in storages Relax plans
    storages = [p for p in prim.params if p.name.startswith("storage")]
    assert storages and all(int(p.shape[0]) <= 8 * 128 for p in storages)
    assert prim.attrs["op_pattern"] == 8 and prim.attrs["tirx.is_scheduled"]
    np.testing.assert_allclose(
        run_on_vm(lowered, args)[0], run_on_vm(mod, args)[0], rtol=1e-6, atol=1e-6
    )


def test_hoisted_bindings_stay_outside_the_loop(mlp):
    _, mod, _, cand = mlp
    assert cand.hoistable, "the weight transposes do not depend on the chunk axis"
    lowered = lower_chunk_plan(mod, ChunkPlan.of((cand, 8)), "llvm")
    outside = {b.var.name for b in flat_bindings(lowered["main"])}
    assert set(cand.hoistable) <= outside


def test_without_hoisting_the_loop_recomputes_the_invariant_bindings(mlp):
    """``hoist=False`` (the graph-optimization ablation) keeps the weight transposes inside
    the composite, recomputed per chunk; the output is the same."""
    _, mod, args, cand = mlp
    lowered = lower_chunk_plan(mod, ChunkPlan((ChunkStep(cand, 8, hoist=False),)), "llvm")
    outside = {b.var.name for b in flat_bindings(lowered["main"])}
    assert not set(cand.hoistable) & outside
    ((_, prim),) = _composites(lowered).items()
    hoisted = lower_chunk_plan(mod, ChunkPlan.of((cand, 8)), "llvm")
    ((_, with_hoist),) = _composites(hoisted).items()
    assert len(_stage_blocks(prim)) > len(_stage_blocks(with_hoist))
    np.testing.assert_allclose(
        run_on_vm(lowered, args)[0], run_on_vm(mod, args)[0], rtol=1e-6, atol=1e-6
    )


def test_temporaries_share_storage_when_lifetimes_do_not_overlap(mlp):
    _, mod, _, cand = mlp
    lowered = lower_chunk_plan(mod, ChunkPlan.of((cand, 10)), "llvm")
    (prim,) = _composites(lowered).values()
    storages = [p for p in prim.params if p.name.startswith("storage")]
    temps = []
    tvm_ffi.structural_walk(prim.body, ((tvm.tirx.DeclBuffer,), temps.append))
    assert len(temps) > len(storages) >= 2  # more temporaries than storages


@pytest.mark.parametrize("seq", [50, 64, 7, 33])
def test_symbolic_extent_one_module_serves_every_length(mlp, seq):
    model_cls, _, _, _ = mlp
    dim = torch.export.Dim("seq", min=2, max=4096)
    torch.manual_seed(0)
    model = model_cls().eval()
    mod = ac.from_torch(model, (torch.randn(1, 50, 32),), dynamic_shapes={"x": {1: dim}})
    cands = search_chunk_candidates(mod)
    cand = max((c for c in cands if isinstance(c.extent, str)), key=lambda c: c.end - c.start)
    lowered = lower_chunk_plan(mod, ChunkPlan.of((cand, 16)), "llvm")
    x = torch.randn(1, seq, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_on_vm(lowered, (x,))[0], expected, rtol=1e-5, atol=1e-5)


# ---- CUDA: builds and exports without a GPU ----------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_composite_launches_one_kernel_per_stage(mlp, zoo, arch, tmp_path):
    _, mod, _, cand = mlp
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    for module, candidate, length in [
        (mod, cand, 8),
        (zoo("gpt-attention")[0], zoo("gpt-attention")[2], 5),
    ]:
        lowered = lower_chunk_plan(module, ChunkPlan.of((candidate, length)), target)
        ((name, prim),) = _composites(lowered).items()
        ex = relax.build(lowered, target)
        kernels = {k for k in cuda_kernels(ex) if k.startswith(f"{name}_kernel")}
        assert len(kernels) == len(_stage_blocks(prim)), "a stage built as a host function"
        ex.export_library(str(tmp_path / f"{name}_{arch}.so"))
        assert (tmp_path / f"{name}_{arch}.so").stat().st_size > 0


def test_cuda_symbolic_extent_builds(mlp, tmp_path):
    model_cls = mlp[0]
    dim = torch.export.Dim("seq", min=2, max=4096)
    mod = ac.from_torch(
        model_cls().eval(), (torch.randn(1, 50, 32),), dynamic_shapes={"x": {1: dim}}
    )
    cands = search_chunk_candidates(mod)
    cand = max((c for c in cands if isinstance(c.extent, str)), key=lambda c: c.end - c.start)
    lowered = lower_chunk_plan(mod, ChunkPlan.of((cand, 16)), "cuda")
    ex = relax.build(lowered, as_target("cuda"))
    ex.export_library(str(tmp_path / "dynamic.so"))


# ---- bad plans -----------------------------------------------------------------------------------


def _unchanged_after_error(mod, plan, match, target="llvm"):
    before = mod.script()
    with pytest.raises(ChunkPlanError, match=match):
        LowerChunkPlan(plan, target)(mod)
    assert mod.script() == before


def test_plan_naming_bindings_not_in_the_function(mlp):
    _, mod, _, cand = mlp
    renamed = dataclasses.replace(
        cand, bindings=(("nope", cand.bindings[0][1]),) + cand.bindings[1:]
    )
    _unchanged_after_error(mod, ChunkPlan.of((renamed, 8)), "'nope'.*not at that place")
    shifted = dataclasses.replace(cand, start=cand.start + 500, end=cand.end + 500)
    _unchanged_after_error(mod, ChunkPlan.of((shifted, 8)), "has .* bindings")
    other = dataclasses.replace(cand, function="decode")
    _unchanged_after_error(mod, ChunkPlan.of((other, 8)), "no Relax function 'decode'")


def test_plan_with_an_axis_the_flow_does_not_allow(mlp):
    _, mod, _, cand = mlp
    name, _ = cand.outputs[0]
    wrong_out = dataclasses.replace(cand, outputs=((name, ChunkAxis(2)),))
    _unchanged_after_error(mod, ChunkPlan.of((wrong_out, 8)), "chunk flow does not allow")
    gelu = next(n for n, a in cand.bindings if a.chunked and a.axis == 0)
    wrong_mid = dataclasses.replace(
        cand, bindings=tuple((n, ChunkAxis(1) if n == gelu else a) for n, a in cand.bindings)
    )
    _unchanged_after_error(mod, ChunkPlan.of((wrong_mid, 8)), "chunk flow does not allow")


@pytest.mark.parametrize("length", [0, -3, 51])
def test_chunk_length_outside_the_extent(mlp, length):
    _, mod, _, cand = mlp
    _unchanged_after_error(mod, ChunkPlan((ChunkStep(cand, length),)), "outside|at least 1")


def test_overlapping_steps_and_missing_target(mlp):
    _, mod, _, cand = mlp
    _unchanged_after_error(mod, ChunkPlan.of((cand, 8), (cand, 4)), "overlaps")
    with pytest.raises(ValueError, match="needs the build target"):
        LowerChunkPlan(ChunkPlan.of((cand, 8)))(mod)
    with tvm.target.Target("llvm"):
        assert _composites(LowerChunkPlan(ChunkPlan.of((cand, 8)))(mod))


# ---- memory: the chunked region needs X + Y + A/n -------------------------------------------


def test_measured_peak_tracks_x_plus_y_plus_a_over_n():
    """MLP over the sequence, activations ~100 MiB: x (1, 4096, 32) -> hidden (4096, 2048)
    -> y. A is three hidden tensors (GELU input, output and the GELU kernel's own buffer); the
    weight transposes hoisted out of the loop (0.5 MiB) are computed once."""
    seq, dim, hidden = 4096, 32, 2048
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim)
    ).eval()
    args = (torch.randn(1, seq, dim),)
    mod = ac.from_torch(model, args)
    cand = max(
        (c for c in search_chunk_candidates(mod) if c.extent == seq), key=lambda c: c.end - c.start
    )
    x = y = seq * dim * 4
    a = 3 * seq * hidden * 4
    hoisted = 2 * dim * hidden * 4
    unchunked = ac.measure_peak_memory(mod, args).peak_bytes + x
    assert unchunked == pytest.approx(x + y + a + hoisted, rel=0.05)
    for n in (2, 4, 8, 16):
        plan = ChunkPlan.of((cand, ChunkPlan.chunk_len_for(cand, n)))
        measured = ac.measure_peak_memory(lower_chunk_plan(mod, plan, "llvm"), args).peak_bytes
        assert measured + x == pytest.approx(x + y + a / n + hoisted, rel=0.05), f"n={n}"
