"""End to end on every zoo model: AutoChunk at half the unchunked peak gives the same outputs,
its build measures within the budget in a fresh process, and it chunks the regions expected.

Sizes are small enough for CI. The memory check allows ``SLACK``: the static estimate that
selection sizes plans with is within ~1% of measurement for unchunked builds and single
regions, but on some chunked plans the measurement is up to ~2 MiB above it (GPT: 30.9 MiB
measured against 29.0 estimated; evoformer +0.8 MiB; UNet, whose unchunked build is also
0.7 MiB above its estimate at this size, +1.0 MiB). The gap is an open bug in the estimate
(issue 5's note), not noise; the slack keeps the test meaningful (it still demands about half
the unchunked peak) without hiding that.
"""

import numpy as np
import pytest
import tvm
from tvm import relax

import autochunk_tvm as ac
from autochunk_tvm.runtime.measure import to_numpy

SLACK = int(2.5 * 2**20)

CASES = {
    # model: (preset overrides, regions AutoChunk chunks at 50%, and why)
    # one attention-scores region per block: the (S, S) scores are the peak of each block
    "gpt": ({"seq_len": 1024, "n_layer": 2}, 2),
    "vit": ({"image_size": 256}, 2),
    # MSA row attention with pair bias, MSA column attention, and the triangle attention
    # around the ending node: the three places where a (heads, N, N) tensor is live
    "evoformer": ({}, 3),
    # the attention scores over the 16x16 latent, then the transformer blocks' GEGLU and
    # norms at each level: the 1012-binding UNet has no single dominant region
    "unet": ({"image_size": 128}, 7),
}


def _run(ex, args):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(to_numpy(a)) for a in args])
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]


# Selection on the 361-binding Evoformer and the 1012-binding UNet takes 1.5 and 4 minutes on
# CI's machine: they run with -m slow.
SLOW = {"evoformer", "unet"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES]
)
def test_autochunk_at_half_the_peak(name):
    overrides, regions = CASES[name]
    model, args = ac.models.FACTORIES[name]("small", **overrides)
    mod = ac.from_torch(model, args)
    selections = []
    chunked = ac.build(mod, "llvm", budget=0.5, on_selection=selections.append)
    (sel,) = selections
    assert sel.reached and sel.plan.estimated_peak <= sel.budget
    if regions is not None:
        assert len(sel.plan.steps) == regions
    plain = relax.build(mod, "llvm")
    for got, want in zip(_run(chunked, args), _run(plain, args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    measured = ac.measure_peak_memory(chunked, args).peak_bytes
    unchunked = ac.measure_peak_memory(plain, args).peak_bytes
    print(
        f"{name}: budget {sel.budget / 2**20:.2f} MiB, estimated "
        f"{sel.plan.estimated_peak / 2**20:.2f}, measured {measured / 2**20:.2f} "
        f"(unchunked {unchunked / 2**20:.2f})"
    )
    assert measured <= sel.budget + SLACK
    assert measured <= 0.6 * unchunked
