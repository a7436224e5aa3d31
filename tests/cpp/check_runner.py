"""ctest checks of the C++ runner (``autochunk_run``, built by the top-level CMakeLists.txt).

    check_runner.py --runner PATH --target llvm|cuda --work-dir DIR   # runner vs Python VM
    check_runner.py --runner PATH --errors --work-dir DIR             # its error paths
    check_runner.py --runner PATH --dynamic --work-dir DIR            # one .so, many lengths

The model (``MODELS``) is compiled with AutoChunk at half its unchunked peak, so at least one
chunk loop is in the library. Its outputs from the C++ runner must equal those of the same ``.so`` loaded in Python (the same kernels run, so
the comparison is exact), and those must equal the unchunked build's (float32 tolerance).

On a machine without a GPU the CUDA check builds and exports the CUDA library and checks that
the runner refuses ``--device cuda`` with a message that names the missing CUDA driver.
Exit status 0 when every check holds; any failure raises.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

# Sizes at which half the unchunked peak is reachable by chunking and selection is quick: the
# Evoformer (two inputs, two outputs) on CPU; on CUDA, where selection replays the fusing GPU
# pipeline per plan (~3 min for this Evoformer), a one-block GPT (~20 s).
MODELS = {
    "llvm": ("evoformer", "tiny", {"n_res": 32, "n_seq": 16}),
    "cuda": ("gpt", "small", {"seq_len": 512, "n_layer": 1}),
}


def compile_model(target: str, work_dir: str):
    import autochunk_tvm as ac
    from autochunk_tvm.runtime.measure import save_inputs

    name, preset, sizes = MODELS[target]
    model, args = ac.models.FACTORIES[name](preset, **sizes)
    mod = ac.from_torch(model, args)
    selections = []
    ex = ac.build(mod, target=target, budget=0.5, on_selection=selections.append)
    n_regions = len(selections[0].plan.steps)
    assert n_regions >= 1, "AutoChunk at 50% chunked no region: the check would test nothing"
    lib = os.path.join(work_dir, f"{name}_{target}.so")
    ex.export_library(lib)
    inputs = save_inputs(args, work_dir)
    print(f"built {lib} for {target}: {n_regions} chunked region(s)")
    return mod, lib, inputs


def python_outputs(lib_or_ex, inputs, device) -> list[np.ndarray]:
    import tvm
    from autochunk_tvm.runtime import output_arrays
    from tvm import relax

    ex = tvm.runtime.load_module(lib_or_ex) if isinstance(lib_or_ex, str) else lib_or_ex
    vm = relax.VirtualMachine(ex, device)
    return output_arrays(vm["main"](*[tvm.runtime.tensor(np.load(p), device) for p in inputs]))


def run_runner(runner, lib, inputs, out_dir, device="cpu"):
    os.makedirs(out_dir, exist_ok=True)
    cmd = [runner, lib, "--device", device, "--out-dir", out_dir, "--repeat", "3", *inputs]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)


def check_matches(runner: str, target: str, work_dir: str) -> None:
    import tvm
    from autochunk_tvm.runtime.measure import cuda_available
    from tvm import relax

    mod, lib, inputs = compile_model(target, work_dir)
    out_dir = os.path.join(work_dir, "out")
    if target == "cuda" and not cuda_available():
        proc = run_runner(runner, lib, inputs, out_dir, device="cuda")
        assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
        assert "CUDA" in proc.stderr and "--device cpu" in proc.stderr, proc.stderr
        print(
            "no GPU here: the CUDA library built and exported; the runner refused --device "
            f"cuda with: {proc.stderr.strip().splitlines()[0]}"
        )
        return
    device = tvm.cuda(0) if target == "cuda" else tvm.cpu()
    expected = python_outputs(lib, inputs, device)
    unchunked = python_outputs(relax.build(mod, target=target), inputs, device)
    for e, u in zip(expected, unchunked, strict=True):
        np.testing.assert_allclose(e, u, rtol=1e-4, atol=1e-4)
    proc = run_runner(runner, lib, inputs, out_dir, device="cuda" if target == "cuda" else "cpu")
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout.strip())
    got = [np.load(os.path.join(out_dir, f"output{i}.npy")) for i in range(len(expected))]
    assert not os.path.exists(os.path.join(out_dir, f"output{len(expected)}.npy"))
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == e.shape and g.dtype == e.dtype, (i, g.shape, g.dtype, e.shape, e.dtype)
        np.testing.assert_array_equal(g, e)
    print(f"C++ runner outputs equal the Python VM's ({len(got)} outputs)")


def check_errors(runner: str, work_dir: str) -> None:
    def run(*args):
        return subprocess.run(
            [runner, *args], check=False, capture_output=True, text=True, timeout=120
        )

    proc = run()
    assert proc.returncode == 2 and "usage:" in proc.stderr, proc.stderr
    proc = run("model.so", "--device", "tpu")
    assert proc.returncode == 2 and "--device must be cpu or cuda" in proc.stderr, proc.stderr
    proc = run("model.so", "--repeat", "many")
    assert proc.returncode == 2 and "--repeat takes a count" in proc.stderr, proc.stderr
    missing = os.path.join(work_dir, "missing.so")
    proc = run(missing)
    assert proc.returncode == 1 and "missing.so" in proc.stderr, proc.stderr

    import autochunk_tvm as ac
    from tvm import relax

    model, args = ac.models.gpt("tiny")
    lib = os.path.join(work_dir, "gpt.so")
    relax.build(ac.from_torch(model, args), target="llvm").export_library(lib)
    not_npy = os.path.join(work_dir, "tokens.txt")
    with open(not_npy, "w") as f:
        f.write("1 2 3\n")
    proc = run(lib, not_npy)
    assert proc.returncode == 1 and "is not a .npy file" in proc.stderr, proc.stderr
    wrong = os.path.join(work_dir, "tokens_f32.npy")
    np.save(wrong, args[0].numpy().astype(np.float32))
    proc = run(lib, wrong)
    assert proc.returncode == 1 and "error" in proc.stderr, proc.stderr
    proc = run(lib, "--func", "decode", wrong)
    assert proc.returncode == 1 and "no function 'decode'" in proc.stderr, proc.stderr
    print(
        "runner error paths: usage (2), missing library, non-.npy input, wrong dtype, "
        "unknown function (1)"
    )


# A GPT exported with a dynamic sequence length up to DYNAMIC_BOUND; the lengths it is run at:
# one token, a length that no chunk length divides evenly, the bound.
DYNAMIC_BOUND = 256
DYNAMIC_LENGTHS = (1, 201, DYNAMIC_BOUND)


def check_dynamic(runner: str, work_dir: str) -> None:
    """One library chunked for every length up to the bound: the runner's outputs at several
    lengths equal the Python VM's, and a longer input is refused with a message naming the
    dim (exit 1), before any chunk loop runs."""
    import autochunk_tvm as ac
    import torch
    import tvm

    model, (tokens,) = ac.models.gpt(
        "small", seq_len=DYNAMIC_BOUND, n_layer=1, mask_from_positions=True
    )
    seq = torch.export.Dim("seq", min=1, max=DYNAMIC_BOUND)
    mod = ac.from_torch(model, (tokens[:, :64],), dynamic_shapes={"idx": {1: seq}})
    selections = []
    ex = ac.build(mod, target="llvm", budget=0.5, on_selection=selections.append)
    assert selections[0].plan.steps, "AutoChunk at 50% chunked no region: nothing to test"
    lib = os.path.join(work_dir, "gpt_dynamic.so")
    ex.export_library(lib)
    for length in DYNAMIC_LENGTHS:
        path = os.path.join(work_dir, f"tokens_{length}.npy")
        np.save(path, tokens[:, :length].numpy())
        expected = python_outputs(lib, [path], tvm.cpu())
        with torch.no_grad():
            np.testing.assert_allclose(
                expected[0], model(tokens[:, :length]).numpy(), rtol=1e-4, atol=1e-4
            )
        out_dir = os.path.join(work_dir, f"out_{length}")
        proc = run_runner(runner, lib, [path], out_dir)
        assert proc.returncode == 0, proc.stderr
        got = np.load(os.path.join(out_dir, "output0.npy"))
        np.testing.assert_array_equal(got, expected[0])
    too_long = os.path.join(work_dir, "tokens_too_long.npy")
    np.save(too_long, np.zeros((1, DYNAMIC_BOUND + 1), dtype=np.int64))
    proc = run_runner(runner, lib, [too_long], os.path.join(work_dir, "out_too_long"))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert f"seq is above {DYNAMIC_BOUND}" in proc.stderr, proc.stderr
    print(
        f"one library for seq <= {DYNAMIC_BOUND}: C++ runner outputs equal the Python VM's at "
        f"lengths {DYNAMIC_LENGTHS}; length {DYNAMIC_BOUND + 1} refused"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", required=True)
    parser.add_argument("--target", default="llvm", choices=["llvm", "cuda"])
    parser.add_argument("--errors", action="store_true")
    parser.add_argument("--dynamic", action="store_true")
    parser.add_argument("--work-dir", required=True)
    opts = parser.parse_args()
    os.makedirs(opts.work_dir, exist_ok=True)
    if opts.errors:
        check_errors(opts.runner, opts.work_dir)
    elif opts.dynamic:
        check_dynamic(opts.runner, opts.work_dir)
    else:
        check_matches(opts.runner, opts.target, opts.work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
