"""One build for every sequence length: AutoChunk on a function whose length is symbolic.

A GPT exported with ``Dim("seq", max=BOUND)`` is selected at its bound and built once; the
build must equal static builds at lengths 1, a length no chunk length divides, and the bound;
its chunk loops must count chunks at run time; its measured peak at the bound must be within
the budget; a longer input is refused by name, and an unbounded dim is a clear error.
"""

import re

import autochunk_tvm as ac
import numpy as np
import pytest
import torch
import tvm
from autochunk_tvm import cli
from autochunk_tvm.lowering import COMPOSITE_ATTR
from autochunk_tvm.selection.symbolic import UnboundedShapeError
from conftest import run_on_vm, torch_outputs
from tvm import relax

BOUND = 256
BUDGET = 0.5


def _gpt():
    return ac.models.gpt("small", seq_len=BOUND, n_layer=1, mask_from_positions=True)


@pytest.fixture(scope="module")
def dynamic():
    """The GPT exported with a dynamic length up to BOUND, its selection at BUDGET, and the
    module AutoChunk made of it."""
    model, (tokens,) = _gpt()
    seq = torch.export.Dim("seq", min=1, max=BOUND)
    mod = ac.from_torch(model, (tokens[:, :64],), dynamic_shapes={"idx": {1: seq}})
    selections = []
    chunked = ac.transform.AutoChunk(BUDGET, target="llvm", on_selection=selections.append)(mod)
    return model, tokens, mod, selections[0], chunked


def test_the_shape_variable_has_the_dims_name_and_its_bound(dynamic):
    _, _, mod, _, _ = dynamic
    (param,) = mod["main"].params
    dim = param.ty.shape.values[1]
    assert isinstance(dim, tvm.tirx.Var) and dim.name == "seq"
    assert int(mod["main"].attrs["tir_var_upper_bound"]["seq"]) == BOUND


def test_selection_at_the_bound_meets_the_budget(dynamic):
    _, _, _, sel, _ = dynamic
    assert sel.reached and sel.plan.steps
    assert dict(sel.bounds) == {"seq": BOUND}
    assert sel.estimate.peak <= sel.budget
    assert all(s.candidate.extent == "seq" for s in sel.plan.steps)
    # the report gives chunk counts at the bound, from the static twin's steps
    assert all(isinstance(s.candidate.extent, int) for s in sel.steps_at_bounds)
    report = str(ac.PlanReport.of(dynamic[2], sel))
    assert f"at the bound seq = {BOUND}" in report


def test_the_chunk_loops_count_chunks_at_run_time(dynamic):
    _, _, _, sel, chunked = dynamic
    composites = [
        f
        for f in chunked.functions.values()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and COMPOSITE_ATTR in f.attrs
    ]
    assert composites
    for func in composites:
        # the chunk loop: `for c in range(seq // T.int64(8))`, a count computed at run time
        (count,) = re.findall(r"for c in range\((.*)\):", func.script())
        assert "seq" in count, count


@pytest.mark.parametrize("length", [1, 101, BOUND])
def test_one_build_equals_static_builds_at_every_length(dynamic, length):
    model, tokens, _, sel, chunked = dynamic
    if length == 101:  # a last, shorter chunk
        assert length % sel.plan.steps[0].chunk_len
    args = (tokens[:, :length],)
    static = ac.from_torch(model, args)
    got = run_on_vm(chunked, args)
    np.testing.assert_allclose(got[0], run_on_vm(static, args)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], torch_outputs(model, args)[0], rtol=1e-4, atol=1e-4)


def test_the_measured_peak_at_the_bound_is_within_the_budget(dynamic):
    _, tokens, _, sel, chunked = dynamic
    runs = [ac.measure_peak_memory(chunked, (tokens,)).peak_bytes for _ in range(2)]
    assert max(runs) <= sel.budget
    # At 2.5 MiB, page rounding and the runtime's own allocations weigh ~10% (the headroom),
    # and RSS growth undercounts when the heap reuses pages made resident before the call:
    # eight fresh processes on 2 busy cores read 2.02-2.41 MiB of the 2.48 MiB predicted (one
    # clean-clone CI run failed a bound of 85% on one). The larger of two is checked from below.
    assert 0.8 * sel.estimate.peak <= max(runs)


def test_a_length_above_the_bound_is_refused_by_name(dynamic):
    _, _, _, _, chunked = dynamic
    vm = relax.VirtualMachine(relax.build(chunked, "llvm"), tvm.cpu())
    too_long = tvm.runtime.tensor(np.zeros((1, BOUND + 1), dtype="int64"))
    with pytest.raises(ValueError, match=f"seq is above {BOUND}.*Dim\\('seq', max="):
        vm["main"](too_long)


def test_an_unbounded_dim_says_how_to_bound_it():
    model, (tokens,) = _gpt()
    seq = torch.export.Dim("seq", min=1)
    mod = ac.from_torch(model, (tokens[:, :64],), dynamic_shapes={"idx": {1: seq}})
    before = mod.script()
    with pytest.raises(UnboundedShapeError, match=r"Dim\('seq', max=.*bounds=\{'seq'"):
        ac.select_plan(mod, BUDGET, "llvm")
    with pytest.raises(UnboundedShapeError):
        ac.transform.AutoChunk(BUDGET, target="llvm")(mod)
    assert mod.script() == before
    # bounds= gives the bound: the module built states it, so memory is planned for it
    chunked = ac.transform.AutoChunk(BUDGET, target="llvm", bounds={"seq": BOUND})(mod)
    assert int(chunked["main"].attrs["tir_var_upper_bound"]["seq"]) == BOUND
    args = (tokens[:, :77],)
    np.testing.assert_allclose(
        run_on_vm(chunked, args)[0], torch_outputs(model, args)[0], rtol=1e-4, atol=1e-4
    )


def test_a_slice_torch_proved_in_bounds_keeps_its_length():
    """The zoo GPT's own causal-mask buffer, sliced at the dynamic length: the importer alone
    gives ``min(seq, 257)`` and the masked scores lose their shape."""

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mask", torch.ones(BOUND + 1, BOUND + 1, dtype=torch.bool))

        def forward(self, x):
            t = x.shape[0]
            return (x @ x.T).masked_fill(~self.mask[:t, :t], 0.0)

    seq = torch.export.Dim("seq", min=2, max=BOUND)
    mod = ac.from_torch(Masked(), (torch.randn(32, 8),), dynamic_shapes={"x": {0: seq}})
    script = mod["main"].script()
    assert "T.min" not in script and "ndim=" not in script
    x = torch.randn(100, 8)
    np.testing.assert_allclose(
        run_on_vm(mod, (x,))[0], torch_outputs(Masked(), (x,))[0], rtol=1e-5, atol=1e-5
    )


def test_compile_a_dynamic_program_and_run_it_at_two_lengths(tmp_path, capsys):
    model, (tokens,) = _gpt()
    seq = torch.export.Dim("seq", min=1)  # unbounded: --bound gives the bound
    path = str(tmp_path / "gpt_dynamic.pt2")
    torch.export.save(
        torch.export.export(model, (tokens[:, :64],), dynamic_shapes={"idx": {1: seq}}), path
    )
    lib = str(tmp_path / "gpt_dynamic.so")
    assert cli.main(["compile", path, "--budget", str(BUDGET), "-o", lib, "-q"]) == 2
    assert "--bound" in capsys.readouterr().err
    name = str(ac.from_torch(path)["main"].params[0].ty.shape.values[1])  # torch's, as s75
    code = cli.main(
        ["compile", path, "--budget", str(BUDGET), "--bound", f"{name}={BOUND}", "-o", lib, "-q"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"at the bound {name} = {BOUND}" in captured.out
    vm = relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
    for length in (3, BOUND):
        args = (tokens[:, :length],)
        out = vm["main"](tvm.runtime.tensor(args[0].numpy()))[0].numpy()
        np.testing.assert_allclose(out, torch_outputs(model, args)[0], rtol=1e-4, atol=1e-4)


def test_demo_dynamic_runs_one_build_at_three_lengths(tmp_path, capsys):
    argv = [
        "demo",
        "--dynamic",
        "--model",
        "gpt",
        "--set",
        f"seq_len={BOUND}",
        "--set",
        "n_layer=1",
        "--budget",
        str(BUDGET),
        "--no-measure",
        "--plot",
        str(tmp_path / "p.png"),
    ]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"at each of the lengths 32, 128, {BOUND}" in captured.out
    assert f"at the bound seq = {BOUND}" in captured.out
    assert cli.main(["demo", "--dynamic", "--model", "vit"]) == 2


def test_the_autochunk_pipeline_builds_a_dynamic_module(dynamic):
    model, tokens, mod, _, _ = dynamic
    pipeline = relax.get_pipeline("autochunk", budget=BUDGET)
    ex = relax.build(mod, tvm.target.Target("llvm"), relax_pipeline=pipeline)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = (tokens[:, :150],)
    out = vm["main"](tvm.runtime.tensor(args[0].numpy()))[0].numpy()
    np.testing.assert_allclose(out, torch_outputs(model, args)[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=f"seq is above {BOUND}"):
        vm["main"](tvm.runtime.tensor(np.zeros((1, BOUND + 1), dtype="int64")))
