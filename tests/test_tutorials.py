"""Every tutorial notebook runs top to bottom (at small sizes) in a fresh interpreter, and
every notebook is what its ``# %%`` script generates, so none can rot or drift."""

import json
import os
import subprocess
import sys

import pytest

TUTORIALS = os.path.join(os.path.dirname(__file__), "..", "tutorials")
sys.path.insert(0, TUTORIALS)
import _notebook  # the generator beside the tutorials, not an installed module

SOURCES = [os.path.basename(p) for p in _notebook.tutorial_sources()]
# Sequence lengths that keep each run to well under a minute on CI's two cores (the deploying
# tutorial also builds for CUDA and compiles the C++ runner).
SEQ_LEN = {"01_quickstart.py": "512", "04_deploying.py": "512"}


def test_there_are_five_tutorials_in_order():
    assert [s[:3] for s in SOURCES] == ["01_", "02_", "03_", "04_", "05_"]


def _committed(name: str) -> dict:
    with open(os.path.join(TUTORIALS, name[:-3] + ".ipynb")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_code_is_its_script(name):
    assert _notebook.code_matches(_committed(name), os.path.join(TUTORIALS, name)), (
        "run python tutorials/_notebook.py --execute"
    )


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_ships_with_the_outputs_of_one_run(name):
    notebook = _committed(name)
    assert _notebook.is_executed(notebook), "run python tutorials/_notebook.py --execute"
    outputs = [o for c in notebook["cells"] for o in c.get("outputs", [])]
    assert any(o["output_type"] == "stream" and o["name"] == "stdout" for o in outputs)
    with open(os.path.join(TUTORIALS, name)) as f:
        plots = ".plot(" in f.read()
    shown = any("image/png" in o.get("data", {}) for o in outputs)
    assert shown == plots, "every plot a tutorial draws is shown in its notebook"


def test_outputs_are_kept_while_the_code_is_unchanged_and_dropped_when_it_changes(tmp_path):
    source = tmp_path / "01_x.py"
    source.write_text("# %% [markdown]\n# # T\n\n# %%\nprint(1)\n")
    ran = _notebook.to_notebook(source.read_text())
    ran["cells"][1].update(
        execution_count=1, outputs=[{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]
    )
    ran["metadata"]["autochunk_tvm"] = {"executed": "2026-12-06"}
    assert _notebook.code_matches(ran, str(source)) and _notebook.is_executed(ran)
    source.write_text("# %% [markdown]\n# # T\n\n# %%\nprint(2)\n")
    assert not _notebook.code_matches(ran, str(source))
    ran["cells"][1]["outputs"].append({"output_type": "error", "ename": "E", "evalue": ""})
    assert not _notebook.is_executed(ran)


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_is_valid_nbformat(name):
    import nbformat

    notebook = nbformat.read(os.path.join(TUTORIALS, name[:-3] + ".ipynb"), as_version=4)
    nbformat.validate(notebook)
    assert [c.cell_type for c in notebook.cells][:2] == ["markdown", "code"]


def test_cells_split_on_percent_markers():
    source = "# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n# %%\nprint(x)\n"
    assert _notebook.split_cells(source) == [
        ("markdown", "# Title\ntext"),
        ("code", "x = 1"),
        ("code", "print(x)"),
    ]
    with pytest.raises(ValueError, match="before the first"):
        _notebook.split_cells("import os\n# %%\n")


@pytest.mark.parametrize("name", SOURCES)
def test_notebook_runs(name, tmp_path):
    notebook = os.path.join(TUTORIALS, name[:-3] + ".ipynb")
    env = dict(os.environ, TUTORIAL_SEQ_LEN=SEQ_LEN.get(name, "1024"), TUTORIAL_OUT=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, os.path.join(TUTORIALS, "_notebook.py"), "--run", notebook],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    written = {p.suffix for p in tmp_path.iterdir()}
    assert written & {".png", ".so"}, f"{name} wrote nothing to TUTORIAL_OUT"
