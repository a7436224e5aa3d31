"""Every zoo model imports through the frontend, builds for llvm and matches PyTorch on the VM."""

import numpy as np
import pytest
import torch
from conftest import assert_close, run_on_vm, torch_outputs

import autochunk_tvm as ac

ZOO = [
    ("gpt", {}),
    ("gpt", {"fused_attention": True}),
    ("vit", {}),
    ("evoformer", {}),
    ("evoformer", {"hand_chunked": True}),
    ("unet", {}),
]


@pytest.mark.parametrize("name, kwargs", ZOO, ids=lambda v: str(v) if v else "plain")
def test_zoo_model_matches_pytorch_on_the_vm(name, kwargs):
    model, args = ac.models.FACTORIES[name]("tiny", **kwargs)
    mod = ac.from_torch(model, args)
    assert_close(run_on_vm(mod, args), torch_outputs(model, args))


# Largest error relative to the output's scale that a half-precision build may show against
# PyTorch running in the same dtype. Both accumulate contractions in float32 (NOTE [accumulation
# dtype] in frontend/converters.py) but round intermediates at different points; measured worst
# cases on the tiny zoo are 0.24% (fp16) and 0.97% (bf16), both UNet.
HALF_TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 2e-2}


# LLVM takes 70-90 s to compile these fp16 CPU kernels for x86 (at VM creation); bf16 is
# computed in float32 and compiles in seconds. They run with `-m slow`.
SLOW_FP16_COMPILE = pytest.mark.slow


def _half_cases():
    for name in sorted(ac.models.FACTORIES):
        for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
            marks = SLOW_FP16_COMPILE if (tag == "fp16" and name in ("gpt", "unet")) else ()
            yield pytest.param(name, dtype, marks=marks, id=f"{name}-{tag}")


@pytest.mark.parametrize("name, dtype", list(_half_cases()))
def test_half_precision_model_matches_pytorch_in_the_same_dtype(name, dtype):
    model, args = ac.models.FACTORIES[name]("tiny", dtype=dtype)
    mod = ac.from_torch(model, args)
    out = run_on_vm(mod, args)
    with torch.no_grad():
        expected = model(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(out) == len(expected)
    for o, e in zip(out, expected):
        assert str(o.dtype) == str(e.dtype).replace("torch.", "")
        e = e.float().numpy()
        err = np.abs(o.astype(np.float32) - e).max()
        assert err <= HALF_TOLERANCE[dtype] * np.abs(e).max(), (err, np.abs(e).max())


def test_hand_chunked_evoformer_is_the_same_function():
    # chunk 5 divides neither the 8 MSA rows nor the 12 residues: short last chunks included
    plain, args = ac.models.evoformer("tiny", seed=3)
    chunked, _ = ac.models.evoformer("tiny", seed=3, hand_chunked=True, chunk_size=5)
    for a, b in zip(torch_outputs(plain, args), torch_outputs(chunked, args)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ac.models.FACTORIES))
def test_presets_and_overrides(name):
    factory = ac.models.FACTORIES[name]
    with pytest.raises(ValueError, match="preset"):
        factory("enormous")
    with pytest.raises(ValueError, match="no field"):
        factory("tiny", not_a_field=1)
    m1, a1 = factory("tiny", seed=7)
    m2, a2 = factory("tiny", seed=7)
    for x, y in zip(a1, a2):
        assert torch.equal(x, y)  # deterministic inputs
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)  # deterministic weights


def test_gpt_overrides_change_the_shape():
    _, (idx,) = ac.models.gpt("tiny", seq_len=40, batch=2)
    assert idx.shape == (2, 40)
