"""The command line: `demo` (the README's main job), `plan`, `compile`, `bench`, and the exit
codes and messages of its error paths. Sizes are the smallest at which half the unchunked
peak is reachable (a one-block GPT at sequence 512)."""

import json
import os
import re
import sys
import warnings

import autochunk_tvm as ac
import numpy as np
import pytest
import torch
import tvm
from autochunk_tvm import cli
from autochunk_tvm.analysis import format_bytes
from autochunk_tvm.runtime.measure import cuda_available, to_numpy
from tvm import relax

GPT = ["--model", "gpt", "--set", "seq_len=512", "--set", "n_layer=1"]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """A saved torch.export program of the small one-block GPT, and its inputs."""
    model, args = ac.models.gpt("small", seq_len=512, n_layer=1)
    path = tmp_path_factory.mktemp("pt2") / "gpt.pt2"
    torch.export.save(torch.export.export(model, args), str(path))
    return str(path), args


def test_demo_runs_a_model_of_two_inputs(tmp_path, capsys):
    """The Evoformer takes two tensors (the demo once assumed one, for --dynamic's sake)."""
    argv = ["demo", "--model", "evoformer", "--preset", "tiny", "--budget", "0.9"]
    code = cli.main([*argv, "--no-measure", "--plot", str(tmp_path / "p.png"), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "outputs: max abs difference chunked vs unchunked" in captured.out


def test_demo_compares_unchunked_and_chunked_builds(tmp_path, capsys):
    plot = tmp_path / "profile.png"
    code = cli.main(["demo", *GPT, "--budget", "0.5", "--repeats", "1", "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out
    assert "AutoChunk plan for main (llvm): 1 region(s) chunked" in out
    assert "max abs difference chunked vs unchunked 0 (tolerance 0.0001)" in out
    assert "measured" in out and "of unchunked" in out
    assert "speed: chunked/unchunked time" in out
    for step in ("[1/8] importing gpt", "[3/8] selecting a chunk plan", "[8/8] timing"):
        assert step in captured.err
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "profile_relax.png").read_bytes()[:4] == b"\x89PNG"
    # the main plot is the build's bytes: the line naming it has the numbers printed below it
    estimated = re.search(r"memory \(one call, llvm\): estimated (.+) -> (.+)", out)
    unchunked, chunked = estimated.group(1), estimated.group(2).strip()
    assert f"{plot} (predicted build footprint: {unchunked} unchunked -> {chunked} chunked" in out
    assert "budget" in out and "(50% of unchunked) met" in out


def test_demo_fails_when_outputs_differ_beyond_the_dtype_tolerance(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_tolerance", lambda dtype: -1.0)  # any difference is too much
    args = ["demo", *GPT, "--budget", "0.5", "--no-measure", "--plot", str(tmp_path / "p.png")]
    assert cli.main(args) == 1
    assert "outputs differ from the unchunked build's" in capsys.readouterr().err


def test_demo_bad_preset_exits_2_with_what_to_do(capsys):
    assert cli.main(["demo", "--preset", "huge", "--no-measure"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_a_budget_typo_exits_2_before_any_work(capsys):
    assert cli.main(["demo", "--budget", "2 gigs", "--no-measure"]) == 2
    captured = capsys.readouterr()
    assert "--budget: cannot read budget" in captured.err and "'2GiB'" in captured.err
    assert "[1/" not in captured.err  # nothing was imported


@pytest.mark.skipif(cuda_available(), reason="checks the message given when there is no GPU")
def test_demo_on_cuda_without_a_gpu_exits_4(capsys):
    assert cli.main(["demo", *GPT, "--target", "cuda"]) == 4
    err = capsys.readouterr().err
    assert "no" in err and "CUDA" in err and "--target llvm" in err


def test_compile_writes_a_library_that_python_loads(program, tmp_path, capsys):
    path, args = program
    lib = tmp_path / "gpt.so"
    assert cli.main(["compile", path, "--budget", "0.5", "-o", str(lib), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 region(s) chunked" in captured.out and f"wrote {lib}" in captured.out
    assert captured.err == ""  # --quiet: no progress lines
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(to_numpy(a)) for a in args])
    plain = relax.VirtualMachine(relax.build(ac.from_torch(path), "llvm"), tvm.cpu())
    want = plain["main"](*[tvm.runtime.tensor(to_numpy(a)) for a in args])
    got, want = (x if isinstance(x, tvm.runtime.Tensor) else x[0] for x in (got, want))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_cuda_library_compiled_without_the_driver_says_it_holds_kernel_source(
    program, tmp_path, capsys
):
    from autochunk_tvm.pipeline import cuda_kernels_compile_at_build

    path, _ = program
    lib = tmp_path / "gpt_cuda.so"
    assert cli.main(["compile", path, "--target", "cuda", "-o", str(lib), "--quiet"]) == 0
    err = capsys.readouterr().err
    with open(lib, "rb") as f:
        holds_source = b"__global__" in f.read()
    # The note is given exactly when the library carries CUDA source instead of a binary.
    assert holds_source == (not cuda_kernels_compile_at_build())
    assert ("holds the kernels' CUDA source" in err) == holds_source
    if holds_source:
        assert "C++ runner cannot load it" in err and "CUDA driver is installed" in err


def test_plan_writes_the_report_and_plots_without_building(program, tmp_path, capsys, monkeypatch):
    path, _ = program
    drawn = []
    figure = ac.PlanReport.figure
    monkeypatch.setattr(
        ac.PlanReport,
        "figure",
        lambda self, *a, **k: drawn.append(figure(self, *a, **k)) or drawn[-1],
    )
    assert cli.main(["plan", path, "--budget", "50%", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "AutoChunk plan for main (llvm)" in out and "budget" in out and "met" in out
    for name in ("gpt_profile.png", "gpt_plan.png", "gpt_plan.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob("*.so"))
    # the plan plot has both builds and the budget's value; the line naming it says the same
    with open(tmp_path / "gpt_plan.json") as f:
        report = json.load(f)
    before, after, budget = (
        format_bytes(report[k]) for k in ("unchunked_peak", "estimated_peak", "budget")
    )
    (fig,) = drawn
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0].startswith(f"unchunked: peak {before} at ")
    assert legend[1].startswith(f"AutoChunk: peak {after} at ")
    assert legend[2] == f"budget {budget} (50% of unchunked)"
    assert any(t.startswith("chunked: ") and " in blocks.0" in t for t in legend)
    assert (
        f"wrote {tmp_path / 'gpt_plan.png'}: predicted build footprint, {before} unchunked -> "
        f"{after} chunked" in out
    )
    assert f"{legend[2]} met" in out and "Relax-level profile" in out


def test_unreachable_budget_exits_3_with_the_reachable_minimum(program, capsys):
    path, _ = program
    assert cli.main(["plan", path, "--budget", "1KiB", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and "smallest peak" in err and "--allow-over-budget" in err


def test_allow_over_budget_plans_the_smallest_peak_found(program, tmp_path, capsys):
    path, _ = program
    args = ["plan", path, "--budget", "1KiB", "--allow-over-budget", "--out-dir", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said in the CLI's words, not as a Python warning
        assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "NOT met" in captured.out and "region(s) chunked" in captured.out
    (note,) = [ln for ln in captured.err.splitlines() if ln.startswith("autochunk-tvm: warning")]
    assert "budget 1KiB (1.00 KiB) is unreachable; --allow-over-budget: using the smallest" in note
    assert "strict=False" not in captured.err


def test_bad_paths_and_files_exit_2_saying_what_to_give(tmp_path, capsys):
    assert cli.main(["compile", str(tmp_path / "nope.pt2"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    not_pt2 = tmp_path / "model.pt2"
    not_pt2.write_text("not a program")
    assert cli.main(["compile", str(not_pt2), "--quiet"]) == 2
    assert "not a torch.export program" in capsys.readouterr().err
    assert cli.main(["compile", str(tmp_path), "--quiet"]) == 2  # once exit 1
    assert "is a directory" in capsys.readouterr().err


class Hypot(torch.nn.Module):
    """A linear layer and torch.hypot: an op the importer lacks, and torch's decomposition of
    it leaves prims.hypot, so only a converter helps."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.hypot(self.proj(x), x)


# A converters file as a user writes it, for the Hypot model.
HYPOT_CONVERTERS = """
from tvm import relax


def hypot(node, importer):
    emit = importer.block_builder.emit
    a, b = (importer.env[arg] for arg in node.args)
    return emit(relax.op.sqrt(emit(relax.op.add(emit(a * a), emit(b * b)))))


CONVERTERS = {"hypot.default": hypot}
"""


@pytest.fixture(scope="module")
def hypot_program(tmp_path_factory):
    """A saved program that the importer cannot import without a converter, and its inputs."""
    torch.manual_seed(0)
    model, x = Hypot().eval(), torch.randn(4, 8)
    path = tmp_path_factory.mktemp("pt2") / "hypot.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    with torch.no_grad():
        expected = model(x).numpy()
    return str(path), x, expected


def test_converters_file_makes_a_failing_import_plan_and_compile(hypot_program, tmp_path, capsys):
    path, x, expected = hypot_program
    plan = ["plan", path, "--budget", "1.0", "--out-dir", str(tmp_path), "--quiet"]
    assert cli.main(plan) == 2
    err = capsys.readouterr().err
    assert "aten.hypot.default, called as torch.hypot" in err
    assert "return torch.hypot(self.proj(x), x)" in err  # the line the user wrote
    assert 'CONVERTERS = {"hypot.default": fn}' in err and "--converters FILE" in err

    converters = tmp_path / "my_ops.py"
    converters.write_text(HYPOT_CONVERTERS)
    assert cli.main([*plan, "--converters", str(converters)]) == 0
    assert "AutoChunk plan for main (llvm)" in capsys.readouterr().out
    lib = tmp_path / "hypot.so"
    args = ["compile", path, "--converters", str(converters), "-o", str(lib), "--quiet"]
    assert cli.main(args) == 0
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()))
    got = got if isinstance(got, tvm.runtime.Tensor) else got[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_decompose_imports_an_op_torch_decomposes(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveMaxPool2d(2)).eval()
    path = str(tmp_path / "pool.pt2")
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 6, 6),)), path)
    compile_ = ["compile", path, "-o", str(tmp_path / "pool.so"), "--quiet"]
    assert cli.main(compile_) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "add --decompose aten.adaptive_max_pool2d.default" in err
    assert cli.main([*compile_, "--decompose", "aten.adaptive_max_pool2d.default"]) == 0
    assert (tmp_path / "pool.so").stat().st_size > 0


@pytest.mark.parametrize(
    "source, says",
    [
        (None, "does not exist"),
        (
            "CONVERTERS = {'hypot.default': fn",
            "is not valid Python: '{' was never closed at line 1",
        ),
        ("import math\nmath.sqrt(-1)", "raised ValueError at line 2 when run: math domain error"),
        ("OPS = {'hypot.default': print}", "defines no CONVERTERS (it defines OPS: name the table"),
        ("CONVERTERS = [print]", "CONVERTERS in"),
        ("CONVERTERS = {'hypot.default': 'hypot'}", "is a str, not a function fn(node, importer)"),
    ],
)
def test_bad_converters_files_exit_2_before_the_import(
    hypot_program, tmp_path, capsys, source, says
):
    path, _, _ = hypot_program
    converters = tmp_path / "my_ops.py"
    if source is not None:
        converters.write_text(source)
    assert cli.main(["compile", path, "--converters", str(converters), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autochunk-tvm: error: --converters: ") and says in err


def test_bad_decompose_exits_2_saying_what_to_do_instead(hypot_program, capsys):
    path, _, _ = hypot_program
    assert cli.main(["plan", path, "--budget", "1.0", "--decompose", "aten.cummax.default"]) == 2
    err = capsys.readouterr().err
    assert "--decompose: cannot decompose 'aten.cummax.default'" in err
    assert "no decomposition" in err and "--converters FILE" in err


def test_bench_finds_the_suite_of_the_checkout(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "throughput_memory" in out and "ablation" in out
    assert cli.main(["bench", "--only", "ablation", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"{sys.executable} " in err and "paper.py --target llvm" in err
    assert "--only ablation" in err


def test_bench_outside_a_checkout_exits_2(tmp_path, capsys):
    assert cli.main(["bench", "--bench-dir", str(tmp_path), "--list"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_the_console_script_is_installed():
    import shutil
    import subprocess

    exe = shutil.which("autochunk-tvm") or pytest.fail("pip install -e . installs autochunk-tvm")
    proc = subprocess.run([exe, "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("demo", "plan", "compile", "bench", "Exit status"):
        assert command in proc.stdout
    assert os.path.basename(exe) == "autochunk-tvm"


class _Terminal:
    """A stream that says it is a terminal, recording what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_redraws_the_running_step_on_a_terminal(monkeypatch):
    import time

    monkeypatch.setattr(cli, "TICK_S", 0.01)
    term = _Terminal()
    progress = cli.Progress(2, stream=term)
    with progress.step("searching"):
        time.sleep(0.1)
    with pytest.raises(RuntimeError), progress.step("building"):
        raise RuntimeError("boom")
    lines = term.text.split("\n")
    assert lines[0].startswith("[1/2] searching ...") and "\r[1/2] searching ... 0 s" in lines[0]
    assert lines[0].rstrip().endswith("s") and "done in" in lines[0]
    assert "[2/2] building ... failed after" in lines[1]


def test_progress_is_silent_when_quiet():
    term = _Terminal()
    with cli.Progress(1, quiet=True, stream=term).step("anything"):
        pass
    assert term.text == ""
