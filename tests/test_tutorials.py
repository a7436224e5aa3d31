"""Every tutorial runs top to bottom (at small sizes), so none can rot."""

import os
import runpy

import pytest

TUTORIALS = os.path.join(os.path.dirname(__file__), "..", "tutorials")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(TUTORIALS) if f.endswith(".py")))
def test_tutorial_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_SEQ_LEN", "1024")
    monkeypatch.setenv("TUTORIAL_OUT", str(tmp_path))
    runpy.run_path(os.path.join(TUTORIALS, name), run_name="__main__")
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
