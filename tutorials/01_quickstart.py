# %% [markdown]
# # Quickstart: a model, a budget, a build, the memory saved
#
# A GPT prefill at a long sequence spends most of its activation memory on attention scores.
# This tutorial compiles one with TVM twice, as it is and with AutoChunk under a budget of 20%
# of its unchunked peak, then checks that both give the same output and measures what each
# really allocates.
#
# Run it as a script (`python tutorials/01_quickstart.py`) or as the notebook next to it.
# `TUTORIAL_SEQ_LEN` sets the sequence length (the test suite uses a short one) and
# `TUTORIAL_OUT` the folder for plots.

# %%
import os

import numpy as np
import tvm
from tvm import relax

import autochunk_tvm as ac
from autochunk_tvm.analysis import format_bytes

seq_len = int(os.environ.get("TUTORIAL_SEQ_LEN", "2048"))
out_dir = os.environ.get("TUTORIAL_OUT", "out")

# %% [markdown]
# ## 1. Import
# `ac.models.gpt` builds a small GPT (2 layers, width 128) with deterministic weights;
# `ac.from_torch` runs `torch.export` and TVM's importer. The result is an ordinary Relax
# `IRModule`.

# %%
model, args = ac.models.gpt("small", seq_len=seq_len)
mod = ac.from_torch(model, args)

# %% [markdown]
# ## 2. Build with a budget
# `ac.build(mod, target, budget)` is `relax.build` with the AutoChunk pass in front of the
# target's default pipeline. A budget is bytes (`512 * 2**20`), a string (`"512MiB"`,
# `"20%"`) or a fraction of the unchunked peak (`0.2`). `on_selection` hands us what the pass
# chose, which `PlanReport` prints.

# %%
selections = []
chunked = ac.build(mod, "llvm", budget=0.2, on_selection=selections.append)
plain = ac.build(mod, "llvm")  # no budget: the same pipeline without AutoChunk
report = ac.PlanReport.of(mod, selections[0])
print(report)

# %% [markdown]
# Each row is one region of consecutive operators that now runs as a loop over chunks of the
# sequence; "memory before -> after" is the predicted allocation up to the region's end.

# %% [markdown]
# ## 3. Same output

# %%
def run(ex):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    (out,) = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    return out.numpy()


difference = np.max(np.abs(run(chunked) - run(plain)))
print(f"max abs difference: {difference}")
assert difference <= 1e-5

# %% [markdown]
# ## 4. The memory saved, measured
# `measure_peak_memory` exports each build, runs one call in a fresh process and reports the
# growth of its peak memory (RSS on CPU, device memory on CUDA).

# %%
before = ac.measure_peak_memory(plain, args).peak_bytes
after = ac.measure_peak_memory(chunked, args).peak_bytes
print(f"unchunked {format_bytes(before)}, AutoChunk {format_bytes(after)} ({after / before:.0%})")
assert after <= selections[0].budget

# %% [markdown]
# And the cost: chunked time over unchunked time, calls interleaved in this process.

# %%
from autochunk_tvm.runtime.measure import vm_callable

ratio = ac.speed_ratio(vm_callable(chunked, args), vm_callable(plain, args), repeats=5)
print(f"chunked / unchunked time: {ratio:.3f}")
path = report.plot(os.path.join(out_dir, "quickstart_plan.png"))
print("wrote", path)

# %% [markdown]
# ## 5. In your own pipeline
# The same pass, `ac.transform.AutoChunk(budget)`, drops into any TVM pass sequence; it runs
# on high-level Relax, before legalization, and reads the target from the scope. TVM's own
# `LegalizeOps` logs "Fast mode segfaults when there are out-of-bounds indices" for the
# embedding lookup: the importer gathers without bounds checks, and the model's token ids are
# in bound. `ac.build` and our passes hold that line back; a pass of yours shows it.

# %%
seq = tvm.transform.Sequential([ac.transform.AutoChunk("25%"), relax.transform.LegalizeOps()])
with tvm.target.Target("llvm"):
    lowered = seq(mod)
loops = [gv.name_hint for gv in lowered.get_global_vars() if gv.name_hint.startswith("chunked")]
print(f"{len(loops)} chunk loop(s): {loops}")
