# %% [markdown]
# # Deploying: a `.so`, loaded from Python and from C++, for CPU and CUDA
#
# A build is a Relax executable. `export_library` writes it, kernels and weights included, as
# one shared library that TVM's runtime loads: from Python with `tvm.runtime.load_module`, from
# C++ with the runner this project builds against the TVM runtime of the installed wheel
# (`CMakeLists.txt`). This tutorial compiles a GPT with AutoChunk, exports it, and runs it
# three ways. The CUDA library builds with `nvcc` alone; it runs where there is a GPU.
#
# `TUTORIAL_SEQ_LEN` sets the sequence length, `TUTORIAL_OUT` the folder for the files.

# %%
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
import tvm
from tvm import relax

import autochunk_tvm as ac
from autochunk_tvm.runtime.measure import cuda_available, save_inputs

seq_len = int(os.environ.get("TUTORIAL_SEQ_LEN", "2048"))
out_dir = os.path.abspath(os.environ.get("TUTORIAL_OUT", "out"))
os.makedirs(out_dir, exist_ok=True)
here = os.path.dirname(os.path.abspath(globals().get("__file__", "tutorials/x")))
root = os.path.dirname(here)  # the source checkout: CMakeLists.txt is there

model, args = ac.models.gpt("small", seq_len=seq_len, n_layer=1)
with torch.no_grad():
    reference = model(*args).numpy()
mod = ac.from_torch(model, args)

# %% [markdown]
# ## 1. Compile for CPU and export

# %%
ex = ac.build(mod, "llvm", budget=0.5)
cpu_lib = os.path.join(out_dir, "gpt_cpu.so")
ex.export_library(cpu_lib)
print(f"wrote {cpu_lib} ({os.path.getsize(cpu_lib) / 2**20:.1f} MiB, weights included)")

# %% [markdown]
# ## 2. Load it back in Python
# A fresh `load_module` and a `VirtualMachine` on the device: this is all a deployment needs,
# no torch and no compiler.

# %%
vm = relax.VirtualMachine(tvm.runtime.load_module(cpu_lib), tvm.cpu())
(out,) = vm["main"](tvm.runtime.tensor(args[0].numpy()))
print(f"max abs difference against PyTorch: {np.max(np.abs(out.numpy() - reference)):.2e}")
assert np.allclose(out.numpy(), reference, rtol=1e-4, atol=1e-4)

# %% [markdown]
# ## 3. Run it from C++
# `autochunk_run MODEL.so INPUT0.npy ...` loads the library with the wheel's TVM runtime,
# creates the VM, calls `main` and writes `output<i>.npy`. Build it once with CMake:
#
# ```bash
# cmake -S . -B build && cmake --build build -j2
# ./build/autochunk_run gpt_cpu.so --out-dir out input0.npy
# ```

# %%
build_dir = os.path.join(out_dir, "cpp-build")
runner = os.path.join(build_dir, "autochunk_run")
(tokens,) = save_inputs(args, out_dir)  # out_dir/input0.npy, what the runner reads
if shutil.which("cmake") and os.path.exists(os.path.join(root, "CMakeLists.txt")):
    for cmd in (
        ["cmake", "-S", root, "-B", build_dir, f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", build_dir, "-j2"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    proc = subprocess.run(
        [runner, cpu_lib, "--out-dir", out_dir, "--repeat", "3", tokens],
        check=True, capture_output=True, text=True,
    )
    print(proc.stdout)
    from_cpp = np.load(os.path.join(out_dir, "output0.npy"))
    assert np.array_equal(from_cpp, out.numpy()), "C++ and Python ran the same kernels"
    print("C++ output equals the Python output")
else:
    print("cmake or the source checkout is missing: skipped the C++ runner")

# %% [markdown]
# ## 4. CUDA
# The same call with `target="cuda"` (sm_80 by default; `{"kind": "cuda", "arch": "sm_90"}`
# for Hopper) selects the plan against the CUDA pipeline's own memory plan, schedules every
# per-chunk kernel with the same dlight rules the default CUDA build uses, and exports a
# library whose host code loops over chunks and launches the kernels.

# %%
if shutil.which("nvcc"):
    cuda_ex = ac.build(mod, "cuda", budget=0.5)
    cuda_lib = os.path.join(out_dir, "gpt_cuda.so")
    cuda_ex.export_library(cuda_lib)
    device_code = cuda_ex.mod.imports[0].imports[0]
    kernels = device_code.inspect_source().count("__global__")
    print(f"wrote {cuda_lib}: {device_code.kind} module with {kernels} kernels")
    if cuda_available():
        gpu = tvm.cuda(0)
        vm = relax.VirtualMachine(tvm.runtime.load_module(cuda_lib), gpu)
        (out,) = vm["main"](tvm.runtime.tensor(args[0].numpy(), gpu))
        print(f"on the GPU, max abs difference: {np.max(np.abs(out.numpy() - reference)):.2e}")
        print(f"from C++: {runner} {cuda_lib} --device cuda {tokens}")
    else:
        print("no GPU here: copy the .so to a GPU machine with the same TVM runtime to run it")
else:
    print("nvcc is not on the PATH: skipped the CUDA build")

# %% [markdown]
# The memory a call takes on the device is measured the same way as on CPU:
# `ac.measure_peak_memory(cuda_ex, args, target="cuda")` runs one call in a fresh process and
# reports the growth of device memory.
