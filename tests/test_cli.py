"""The README's main job, `autochunk-tvm demo`, at a tiny size; and its error path."""

from autochunk_tvm.cli import main


def test_demo_prints_profile_prediction_measurement_and_writes_plot(tmp_path, capsys):
    plot = tmp_path / "profile.png"
    assert main(["demo", "--model", "vit", "--preset", "tiny", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "predicted", "measured"):
        assert step in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_demo_bad_preset_exits_2_with_what_to_do(capsys):
    assert main(["demo", "--preset", "huge", "--no-measure"]) == 2
    assert "choose one of" in capsys.readouterr().err
