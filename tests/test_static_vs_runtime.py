"""The static prediction of what a build allocates agrees with a runtime measurement (5%)."""

import pytest

import autochunk_tvm as ac

MIB = 1024 * 1024


def _agreement(name, overrides):
    model, args = ac.models.FACTORIES[name]("small", **overrides)
    mod = ac.from_torch(model, args)
    static = ac.static_allocation(mod, "llvm")
    measured = ac.measure_peak_memory(mod, args, target="llvm")
    assert measured.peak_bytes > 64 * MIB, "case too small to test agreement meaningfully"
    assert abs(static.peak_bytes - measured.peak_bytes) <= 0.05 * measured.peak_bytes, (
        static.peak_bytes / MIB,
        measured.peak_bytes / MIB,
    )
    return static, measured


def test_gpt_static_prediction_matches_runtime_rss():
    static, _ = _agreement("gpt", {"seq_len": 2048})
    # the legalized softmax keeps its full-size exponentials: workspace must be counted
    assert static.workspace_bytes >= 4 * 2048 * 2048 * 4


def test_evoformer_static_prediction_matches_runtime_rss():
    # many kernels with several workspace buffers each: exercises the workspace-pool replay
    _agreement("evoformer", {"n_res": 128})


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("gpt", {"seq_len": 4096}),
        ("vit", {"image_size": 448}),
        ("evoformer", {"n_res": 192}),
        ("unet", {"image_size": 448}),
    ],
)
def test_zoo_static_prediction_matches_runtime_rss(name, overrides):
    _agreement(name, overrides)


def test_static_allocation_rejects_unknown_target():
    mod = ac.from_torch(*ac.models.gpt("tiny"))
    with pytest.raises(ValueError, match="llvm"):
        ac.static_allocation(mod, "ext_dev")  # neither a CPU nor a GPU target


def test_cuda_build_plan_is_predicted_without_a_gpu():
    # dlight-scheduled kernels keep their intermediates on chip: no global workspace expected
    mod = ac.from_torch(*ac.models.gpt("tiny"))
    static = ac.static_allocation(mod, "cuda")
    assert static.target == "cuda" and static.peak_bytes > 0


def test_measuring_cuda_without_gpu_is_a_clear_error():
    from autochunk_tvm.runtime import DeviceUnavailableError, cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    mod = ac.from_torch(*ac.models.gpt("tiny"))
    with pytest.raises(DeviceUnavailableError, match="GPU"):
        ac.measure_peak_memory(mod, ac.models.gpt("tiny")[1], target="cuda")


def test_symbolic_module_is_predicted_at_its_bound():
    import torch

    model = torch.nn.Sequential(
        torch.nn.Linear(64, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 64)
    ).eval()
    seq = torch.export.Dim("seq", min=2, max=16384)
    mod = ac.from_torch(model, (torch.randn(32, 64),), dynamic_shapes={"input": {0: seq}})
    static = ac.static_allocation(mod, "llvm")  # sizes at the export's upper bound
    measured = ac.measure_peak_memory(mod, (torch.randn(16384, 64),))
    assert measured.peak_bytes > 64 * MIB
    assert abs(static.peak_bytes - measured.peak_bytes) <= 0.05 * measured.peak_bytes
