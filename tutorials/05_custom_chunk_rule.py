# %% [markdown]
# # Bring your own op: a chunk rule for an op the passes do not know
#
# The search knows each op through a *chunk rule*. An op without one is a barrier: a chunk
# flow stops there, and a region can not cross it. That is safe (nothing is ever guessed) but
# it can leave memory on the table. This tutorial takes a model that uses `torch.flip`, which
# has no rule, sees what AutoChunk can and cannot do with it, writes the rule, and checks it.
#
# `TUTORIAL_SEQ_LEN` sets the sequence length, `TUTORIAL_OUT` the folder for plots.

# %%
import os

import numpy as np
import torch
import tvm
from tvm import relax

import autochunk_tvm as ac
from autochunk_tvm.analysis import format_bytes
from autochunk_tvm.search.reference import chunk_with_reference

seq_len = int(os.environ.get("TUTORIAL_SEQ_LEN", "4096"))
out_dir = os.environ.get("TUTORIAL_OUT", "out")

# %% [markdown]
# ## 1. A model with an op the passes do not know
# A "mirror" MLP: the hidden activations are multiplied by themselves reversed along the
# feature axis. The hidden tensor is `(seq, 1024)`, the largest of the model.

# %%
class MirrorMLP(torch.nn.Module):
    def __init__(self, width: int = 64, hidden: int = 1024):
        super().__init__()
        self.up = torch.nn.Linear(width, hidden)
        self.down = torch.nn.Linear(hidden, width)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.up(x))
        return x + self.down(h * torch.flip(h, [-1]))


torch.manual_seed(0)
model = MirrorMLP().eval()
args = (torch.randn(1, seq_len, 64),)
mod = ac.from_torch(model, args)
(flipped,) = [b.var.name for b in mod["main"].body.blocks[0].bindings
              if isinstance(b.value, relax.Call) and b.value.op.name == "relax.flip"]
print(f"{flipped} = relax.flip(...)")

# %% [markdown]
# ## 2. Without a rule, `relax.flip` stops every chunk flow
# Regions still exist (for instance, the last matmul chunked over its 64 output features,
# reading the hidden tensor whole), but none that splits the hidden tensor by rows. So the
# smallest peak any plan reaches stays near the hidden tensor's size.

# %%
try:
    ac.select_plan(mod, 0.3, "llvm")
    raise AssertionError("expected the budget to be unreachable without a flip rule")
except ac.BudgetUnreachableError as err:
    without_rule = err.smallest_peak
    print(f"30% is unreachable; the smallest peak is {format_bytes(without_rule)}")

# %% [markdown]
# ## 3. The rule
# A rule answers one question: *a chunk of this call's output is taken along `out_axis`;
# which part of each argument does it need?* It returns, per argument, `flow(axis)` (the same
# chunk of that argument, along `axis`), `None` (the argument is used whole by every chunk),
# or raises `CantChunk` when the op mixes elements along `out_axis`.
#
# `flip(x, axis=a)` moves element `i` along `a` to `n - 1 - i` and leaves every other axis
# alone. Along any other axis, chunk `c` of the output is chunk `c` of the input. Along `a`
# itself it would be a *different* chunk of the input (counted from the end), which a chunk
# loop that reads every tensor at the same offset cannot express: a barrier, stated.

# %%
from autochunk_tvm.search.candidate import CantChunk
from autochunk_tvm.search.rules import flow, normalize_axis, register, shape_of


@register("relax.flip")
def flip_rule(call: relax.Call, out_axis: int):
    flipped = normalize_axis(int(call.attrs.axis), len(shape_of(call)))
    if flipped == out_axis:
        raise CantChunk("flip reverses the chunk axis: chunk c reads chunk n-1-c")
    return [flow(out_axis)]  # the one argument, chunked along the same axis

# %% [markdown]
# ## 4. Check the rule before trusting it
# The search now finds regions that cross the flip. The reference executor (slice, run at
# chunk shape, concatenate) must give the unchunked result for every such region, at chunk
# lengths that do and do not divide the extent.

# %%
def run(m):
    ex = relax.build(m, "llvm")
    (out,) = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(args[0].numpy()))
    return out.numpy()


expected = run(mod)
crossing = [c for c in ac.search_chunk_candidates(mod)
            if flipped in c.axes and c.axes[flipped].chunked]
print(f"{len(crossing)} regions chunk through the flip")
for cand in crossing[:3]:
    for units in (cand.extent // 3, 1000):
        got = run(chunk_with_reference(mod, cand, min(units, cand.extent)))
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-5)
print("all equal to the unchunked output")

# %% [markdown]
# Register rules in your own module and import it before compiling; a rule for an op that
# already has one is refused (`ValueError`), so two packages can not silently disagree.
#
# ## 5. AutoChunk with the rule

# %%
selection = ac.select_plan(mod, 0.3, "llvm")
report = ac.PlanReport.of(mod, selection)
print(report)
chunked = ac.build(mod, "llvm", budget=0.3)
(out,) = relax.VirtualMachine(chunked, tvm.cpu())["main"](tvm.runtime.tensor(args[0].numpy()))
with torch.no_grad():
    np.testing.assert_allclose(out.numpy(), model(*args).numpy(), rtol=1e-4, atol=1e-4)
measured = ac.measure_peak_memory(chunked, args).peak_bytes
print(f"with the rule: measured {format_bytes(measured)}; without it no plan went below "
      f"{format_bytes(without_rule)}")
print("wrote", report.plot(os.path.join(out_dir, "custom_rule_plan.png")))
