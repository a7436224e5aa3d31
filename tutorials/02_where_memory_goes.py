# %% [markdown]
# # Where activation memory goes
#
# Long-sequence models run out of *activation* memory (inputs, outputs and intermediate tensors
# of one inference call), not weight memory. This tutorial imports a GPT prefill model, finds
# the binding at which activation memory peaks, draws the profile, and checks the prediction of
# what a TVM build allocates against a measurement of one real call.
#
# Run it as a script (`python tutorials/02_where_memory_goes.py`) or cell by cell in an editor that
# understands `# %%` cells. `TUTORIAL_SEQ_LEN` picks the sequence length (the test suite uses a
# short one).

# %%
import os

import autochunk_tvm as ac
from autochunk_tvm.analysis import format_bytes

seq_len = int(os.environ.get("TUTORIAL_SEQ_LEN", "2048"))
out_dir = os.environ.get("TUTORIAL_OUT", "out")

# %% [markdown]
# ## 1. Import a model
# `ac.models.gpt` builds a small GPT (2 layers, width 128) with deterministic weights;
# `ac.from_torch` runs `torch.export` and TVM's importer and returns a Relax IRModule.

# %%
model, args = ac.models.gpt("small", seq_len=seq_len)
mod = ac.from_torch(model, args)
print(f"{len(ac.estimate_activation_memory(mod).bindings)} Relax bindings in main")

# %% [markdown]
# ## 2. The activation-memory profile
# For every binding: the bytes it allocates and the bytes live while it runs. Inputs belong to
# the caller and stay live; reshapes are views and cost nothing; weights are reported apart.

# %%
profile = ac.estimate_activation_memory(mod)
print(profile.summary(top=6))

# %% [markdown]
# The peak sits in the attention block: the `(heads, seq, seq)` score tensor, its masked copy
# and its softmax are alive together. Everything else is small next to them, which is the
# paper's observation: reduce a few consecutive bindings and the whole peak comes down.

# %%
peak = profile.binding(profile.peak_binding)
share_small = sum(b.live_bytes < 0.3 * profile.peak_bytes for b in profile.bindings)
print(f"peak {format_bytes(peak.live_bytes)} at {peak.name} ({peak.op})")
print(f"{share_small / len(profile.bindings):.0%} of bindings use < 30% of the peak")

# %% [markdown]
# ## 3. Draw it (the paper's Figure 4)

# %%
path = profile.plot(os.path.join(out_dir, "gpt_profile.png"), title=f"GPT, sequence {seq_len}")
print("wrote", path)

# %% [markdown]
# ## 4. What TVM will allocate, and what it really does
# The Relax-level profile counts tensors. A build allocates storages planned by
# `StaticPlanBlockMemory`, plus buffers that kernels allocate internally (the legalized softmax
# keeps its exponentials), through allocators that cache what they free. `static_allocation`
# predicts that number; `measure_peak_memory` runs one call in a fresh process and measures the
# growth of its peak RSS.

# %%
static = ac.static_allocation(mod, "llvm")
measured = ac.measure_peak_memory(mod, args, target="llvm")
print(f"predicted {format_bytes(static.peak_bytes)}, measured {format_bytes(measured.peak_bytes)}")
print(f"kernel workspace inside the prediction: {format_bytes(static.workspace_bytes)}")
assert abs(static.peak_bytes - measured.peak_bytes) <= 0.05 * measured.peak_bytes
