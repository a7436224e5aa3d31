"""The C++ runner: CMakeLists.txt builds ``autochunk_run`` against the installed TVM runtime,
and its ctest checks (``tests/cpp/check_runner.py``) compile zoo models with AutoChunk, run the
exported ``.so`` from C++ and from Python, and compare. This test is how the README's test
command runs ctest."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on the PATH")
def test_cmake_builds_the_runner_and_ctest_passes(tmp_path):
    build = tmp_path / "build"

    def run(*cmd):
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, (
            f"{' '.join(cmd)}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
        return proc.stdout

    run("cmake", "-S", ROOT, "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}")
    run("cmake", "--build", str(build), "-j2")
    out = run("ctest", "--test-dir", str(build), "--output-on-failure")
    assert "100% tests passed, 0 tests failed out of 4" in out, out
