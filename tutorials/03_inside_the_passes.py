# %% [markdown]
# # Inside the passes: candidates, the cost model, the plan, the TIR loop
#
# `AutoChunk(budget)` runs four stages. The first three only compute and return frozen
# records; the fourth rewrites the module. This tutorial calls each one by hand on a GPT
# prefill model and looks at what it returns:
#
# 1. **estimate**: activation liveness per binding, and the peak;
# 2. **search**: every legal chunk region around the peak;
# 3. **select**: the cost model and the beam search that meet a budget;
# 4. **lower**: each chosen region becomes one TIR loop over chunks.
#
# `TUTORIAL_SEQ_LEN` sets the sequence length, `TUTORIAL_OUT` the folder for plots.

# %%
import os

import numpy as np
import tvm
from tvm import relax

import autochunk_tvm as ac
from autochunk_tvm.analysis import format_bytes
from autochunk_tvm.search.flow import flat_bindings
from autochunk_tvm.search.reference import chunk_with_reference

seq_len = int(os.environ.get("TUTORIAL_SEQ_LEN", "2048"))
out_dir = os.environ.get("TUTORIAL_OUT", "out")
model, args = ac.models.gpt("small", seq_len=seq_len, n_layer=1)
mod = ac.from_torch(model, args)
bindings = flat_bindings(mod["main"])

# %% [markdown]
# ## 1. Estimate: where the peak is

# %%
profile = ac.estimate_activation_memory(mod)
peak = profile.binding(profile.peak_binding)
print(f"peak {format_bytes(profile.peak_bytes)} at binding {profile.peak_index}: {peak.op}")

# %% [markdown]
# ## 2. Search: the legal chunk regions around the peak
# Tracing starts from a region's outputs and asks each op's *chunk rule* which axis of each
# argument a chunk of its output needs (or that the op computes across that axis, which ends
# the flow). A candidate records, per tensor, the axis the chunk flows through, the inputs it
# reads whole (weights, broadcast operands), and the bindings that do not depend on the chunk
# at all, which are hoisted out of the loop.

# %%
candidates = ac.search_chunk_candidates(mod, profile)
print(f"{len(candidates)} legal regions contain binding {profile.peak_index}")
best = max(candidates, key=lambda c: c.end - c.start)
ops = [getattr(b.value.op, "name", "?") for b in bindings[best.start : best.end + 1]
       if isinstance(b.value, relax.Call)]
print(f"the longest: bindings {best.start}-{best.end}, {best.extent} chunk units")
print("  ops:", ", ".join(o.removeprefix("relax.") for o in ops))
print("  outputs:", best.outputs)
print("  read whole:", [name for name, axis in best.inputs if not axis.chunked])
print("  hoisted:", best.hoistable)

# %% [markdown]
# Legality is decided on these high-level ops, never by whether a schedule happens to apply.
# A slow but obviously correct check is the *reference executor*: slice the inputs, run the
# region at chunk shape in Relax, concatenate. Any chunk length works, including one that
# does not divide the extent (the last chunk is then shorter).

# %%
def run(m):
    ex = ac.build(m, "llvm")  # relax.build, with TVM's noise held back
    (out,) = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(args[0].numpy()))
    return out.numpy()


expected = run(mod)
for units in (97, best.extent // 2):
    got = run(chunk_with_reference(mod, best, units))
    print(f"chunks of {units:>4}: max abs difference {np.max(np.abs(got - expected)):.2e}")

# %% [markdown]
# ## 3. Select: what chunking costs, and a plan that meets the budget
# Chunking adds kernel launches and splits work into smaller calls. The cost model has the
# paper's four terms (kernels added, share of FLOPs chunked, compute density, strided I/O),
# weighted by a least-squares fit to measured speed ratios.

# %%
from autochunk_tvm.selection import CostModel, ModelTotals, step_features

cost_model = CostModel.default()
totals = ModelTotals.of(mod["main"])
print("fitted weights:", dict(cost_model.weights))
for chunk_len in (best.extent // 2, best.extent // 16, 1):
    feats = step_features(mod["main"], best, chunk_len, totals)
    terms = {k: round(v, 4) for k, v in feats.terms().items()}
    print(f"{feats.n_chunks:>5} chunks: terms {terms}, cost {cost_model.step_cost(feats):.4f}")

# %% [markdown]
# The weights come from CPU measurements, where chunking barely changes speed: the fit keeps
# only the FLOP-share term (`benchmarks/results/cost_model_fit.md`), so the cost above does
# not grow with the number of chunks. A fit on GPU measurements, where extra kernel launches
# do cost time, is still to be done.
#
# `select_plan` estimates each plan on the module it produces (the plan is lowered and TVM's
# memory plan replayed), searches where that footprint first exceeds the budget, and keeps the
# cheapest plans that fit, giving each region the longest chunk the budget allows.

# %%
selection = ac.select_plan(mod, 0.3, "llvm")
report = ac.PlanReport.of(mod, selection)
print(report)
print("wrote", report.plot(os.path.join(out_dir, "inside_plan.png")))

# %% [markdown]
# ## 4. Lower: one TIR loop over chunks per region
# `LowerChunkPlan` replaces each region with one `call_tir` to a *composite* PrimFunc. Its body
# is a serial loop over chunk indices; inside, the region's ops, legalized (and on GPUs
# scheduled) at chunk shape, read and write the full tensors through views at `c * chunk_len`.
# Intermediates live in chunk-sized storages (`storage0`, ...) that are extra outputs of the
# `call_tir`, so Relax's memory planner sees them. When the chunk length does not divide the
# extent, the stages run once more after the loop for the shorter last chunk.

# %%
from autochunk_tvm.transform import LowerChunkPlan

chunked = LowerChunkPlan(selection.plan, target="llvm")(mod)
composite = next(gv for gv in chunked.get_global_vars() if gv.name_hint.startswith("chunked"))
lines = chunked[composite].script().splitlines()
for line in lines[4:22]:
    print(line if len(line) < 118 else line[:114] + " ...")
views = sum("T.match_buffer" in line and "c * " in line for line in lines)
print(f"... {len(lines)} lines: {views} views into full tensors at offset c * chunk_len")

# %% [markdown]
# In `main`, the region's bindings are now one call:

# %%
call = next(ln for ln in chunked["main"].script().splitlines() if f"R.call_tir({composite.name_hint}" in ln)
print(call.strip()[:400])

# %% [markdown]
# The chunked module builds like any other and computes the same result.

# %%
print(f"max abs difference: {np.max(np.abs(run(chunked) - expected)):.2e}")
