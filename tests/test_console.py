"""What reaches the user's console: TVM's and torch's messages that a user cannot act on are
held back around our calls, and nothing else is (console.py)."""

import os
import re
import subprocess
import sys
import warnings

import autochunk_tvm as ac
from autochunk_tvm import console

NOISE = (
    b"[20:01:46] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:\n"
    b"[20:01:46] /project/include/tvm/topi/transform.h:1261: Warning: Fast mode segfaults when "
    b"there are out-of-bounds indices. Make sure input indices are in bound\n"
)
REAL = b"[20:01:47] /project/src/relax/x.cc:1: Warning: something a user should see\n"


def test_native_noise_is_dropped_and_every_other_line_kept_in_order(capfd):
    with console.native_stderr_filtered():
        os.write(2, b"first\n" + NOISE + REAL + b"last, without a line end")
    err = capfd.readouterr().err
    assert err == "first\n" + REAL.decode() + "last, without a line end"


def test_python_writes_inside_the_filter_reach_stderr_directly(capfd):
    with console.native_stderr_filtered() as stream:
        print("progress", file=sys.stderr, end="")  # no line end: a redrawn progress line
        assert stream is sys.stderr
    assert capfd.readouterr().err == "progress"


def test_show_everything_turns_the_filter_off(capfd):
    shown = console.show_everything(True)
    try:
        with console.native_stderr_filtered():
            os.write(2, NOISE)
    finally:
        console.show_everything(shown)
    assert capfd.readouterr().err == NOISE.decode()


def test_a_nested_filter_is_the_outer_one(capfd):
    with console.native_stderr_filtered(), console.native_stderr_filtered():
        os.write(2, NOISE + REAL)
    with console.native_stderr_filtered():
        os.write(2, NOISE)
    assert capfd.readouterr().err == REAL.decode()


def test_import_holds_back_torchs_deprecation_of_its_own_pytree_path():
    model, args = ac.models.gpt("tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ac.from_torch(model, args)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


STEP = re.compile(r"\[\d/\d\] .+ \.\.\.")
STEP_END = re.compile(r" {6}(done in|failed after) \d+\.\d s")
OURS = re.compile(r"autochunk-tvm: (warning|error): ")


def test_the_demo_prints_only_our_progress_and_messages_on_stderr(tmp_path):
    # A budget no plan reaches with --allow-over-budget: every step runs (import, selection,
    # both builds, the fresh-process measurement whose export logged "Scope Saving" once per
    # constant), and the over-budget note is ours, in the CLI's words.
    cmd = [sys.executable, "-m", "autochunk_tvm", "demo", "--preset", "tiny"]
    cmd += ["--set", "seq_len=512", "--budget", "0.05", "--allow-over-budget", "--repeats", "1"]
    cmd += ["--plot", str(tmp_path / "profile.png")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    strangers = [ln for ln in lines if not (STEP.fullmatch(ln) or STEP_END.fullmatch(ln))]
    assert all(OURS.match(ln) for ln in strangers), strangers
    (note,) = strangers
    assert "unreachable; --allow-over-budget: using the smallest plan found" in note
    assert "strict=False" not in proc.stderr
    assert sum(bool(STEP.fullmatch(ln)) for ln in lines) == 8
