"""The command line: `demo` (the README's main job), `plan`, `compile`, `bench`, and the exit
codes and messages of its error paths. Sizes are the smallest at which half the unchunked
peak is reachable (a one-block GPT at sequence 512)."""

import os
import sys

import autochunk_tvm as ac
import numpy as np
import pytest
import torch
import tvm
from autochunk_tvm import cli
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
    assert (tmp_path / "profile_plan.png").read_bytes()[:4] == b"\x89PNG"


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


def test_plan_writes_the_report_and_plots_without_building(program, tmp_path, capsys):
    path, _ = program
    assert cli.main(["plan", path, "--budget", "50%", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "AutoChunk plan for main (llvm)" in out and "budget" in out and "met" in out
    for name in ("gpt_profile.png", "gpt_plan.png", "gpt_plan.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob("*.so"))


def test_unreachable_budget_exits_3_with_the_reachable_minimum(program, capsys):
    path, _ = program
    assert cli.main(["plan", path, "--budget", "1KiB", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and "smallest peak" in err and "--allow-over-budget" in err


def test_allow_over_budget_plans_the_smallest_peak_found(program, tmp_path, capsys):
    path, _ = program
    args = ["plan", path, "--budget", "1KiB", "--allow-over-budget", "--out-dir", str(tmp_path)]
    with pytest.warns(UserWarning, match="smallest"):
        assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "NOT met" in out and "region(s) chunked" in out


def test_bad_paths_and_files_exit_2_saying_what_to_give(tmp_path, capsys):
    assert cli.main(["compile", str(tmp_path / "nope.pt2"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    not_pt2 = tmp_path / "model.pt2"
    not_pt2.write_text("not a program")
    assert cli.main(["compile", str(not_pt2), "--quiet"]) == 2
    assert "not a torch.export program" in capsys.readouterr().err
    assert cli.main(["compile", str(tmp_path), "--quiet"]) == 2  # once exit 1
    assert "is a directory" in capsys.readouterr().err


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
