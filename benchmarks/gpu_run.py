"""AutoChunk on a real GPU: what the static estimate promised against what the device allocates,
outputs equal, and the speed ratio, for CUDA builds selected and compiled on a machine without
a GPU.

Three steps, because the machine that builds (TVM, torch, nvcc; no GPU) is not the one that
runs (a GPU and the TVM runtime alone):

    python benchmarks/gpu_run.py prepare DIR [--only NAME ...]   # here: select, build, export
    python benchmarks/gpu_worker.py run DIR                      # there: TVM runtime only
    python benchmarks/gpu_run.py report DIR                      # here: results/gpu_run.{json,md}

``prepare`` writes, per model, the unchunked build and one chunked build per budget as CUDA
(sm_90) shared libraries, the inputs, and what selection predicted (``DIR/parts/NAME.json``,
merged into ``DIR/manifest.json``). ``gpu_worker.py`` measures each library in a fresh process
(device memory in use around one call, after a warm-up call and with the VM's pool emptied)
and all of a model's builds in one process (outputs against the unchunked build; time,
interleaved rounds, median). ``report`` joins the two. ``prepare --arch llvm`` builds for the
CPU instead, to try the whole path on a machine without a GPU (``gpu_worker.py run DIR
--device cpu``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))

import autochunk_tvm as ac  # noqa: E402
import numpy as np  # noqa: E402
from autochunk_tvm.analysis.planned import as_target  # noqa: E402
from autochunk_tvm.pipeline import cuda_kernels_compile_at_build  # noqa: E402
from autochunk_tvm.runtime import to_numpy  # noqa: E402
from common import MIB, RESULTS, Subject, revision  # noqa: E402

# GPU sizes: each unchunked peak is hundreds of MiB (the driver counts memory in 2 MiB pages),
# weights stay small (they are compiled into the library, which must travel).
MODELS: dict[str, tuple[str, dict]] = {
    # name: (zoo factory or corpus entry, size)
    "gpt-12": ("zoo:gpt", {"n_layer": 12, "seq_len": 4096}),
    "gpt2": ("corpus:gpt2", {"seq_len": 4096}),
    "gpt2_masked": ("corpus:gpt2_masked", {"seq_len": 4096}),
    "llama": ("corpus:llama", {"seq_len": 4096}),
    "bert": ("corpus:bert", {"seq_len": 4096}),
    "vit": ("corpus:vit", {"image_size": 512}),
    "esmfold_block": ("corpus:esmfold_block", {"n_res": 384}),
    "evoformer-2": ("zoo:evoformer", {"n_res": 384}),
    "openfold_evoformer": ("corpus:openfold_evoformer", {"n_res": 384}),
    "openfold_pairformer": ("corpus:openfold_pairformer", {"n_res": 384}),
    "unet2d": ("corpus:unet2d", {"latent": 96}),
    "sd3_transformer": ("corpus:sd3_transformer", {"latent": 128}),
}
BUDGETS = (0.3, 0.2)
SAVED_INPUT_BYTES = 8 * MIB  # larger float inputs travel as a spec and are drawn there


def _model(name: str):
    source, size = MODELS[name]
    kind, entry = source.split(":")
    if kind == "zoo":
        return ac.models.FACTORIES[entry]("small", **size)
    from autochunk_tvm.models.corpus import corpus_model

    return corpus_model(entry, **size)


def _target(arch: str):
    return as_target("llvm" if arch == "llvm" else {"kind": "cuda", "arch": arch})


def _input_specs(args, folder: str, name: str) -> list[dict]:
    specs = []
    for k, arg in enumerate(args):
        arr = to_numpy(arg)
        spec = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        if arr.nbytes <= SAVED_INPUT_BYTES or not np.issubdtype(arr.dtype, np.floating):
            spec["file"] = f"{name}.input{k}.npy"
            np.save(os.path.join(folder, spec["file"]), arr)
        elif arr.size and np.all(arr == arr.flat[0]):
            spec["fill"] = float(arr.flat[0])
        else:
            spec.update(mean=float(arr.mean()), std=float(arr.std()))
        specs.append(spec)
    return specs


def prepare_model(name: str, folder: str, arch: str, budgets) -> dict:
    target = _target(arch)
    began = time.perf_counter()
    model, args = _model(name)
    subject = Subject(name, ac.from_torch(model, args), tuple(args), target, None)
    static = ac.static_allocation(subject.mod, target)
    part: dict = {
        "name": name,
        "source": MODELS[name][0],
        "size": MODELS[name][1],
        "inputs": _input_specs(args, folder, name),
        "builds": [],
    }

    def export(label: str, plan, extra: dict) -> None:
        t0 = time.perf_counter()
        lib = f"{name}.{label.replace('%', 'pc')}.so"
        with target:  # the kernels' compiler reads the arch from the current target
            subject.build(plan).export_library(os.path.join(folder, lib))
        part["builds"].append(
            {"label": label, "lib": lib, "build_seconds": round(time.perf_counter() - t0, 1)}
            | extra
        )

    export("unchunked", None, {"predicted_peak": static.peak_bytes})
    for fraction in budgets:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sel = subject.select(fraction)
        extra = {
            "budget_fraction": fraction,
            "budget_bytes": sel.budget,
            "reached": sel.reached,
            "predicted_peak": sel.plan.estimated_peak,
            "unchunked_estimate": sel.unchunked_peak,
            "regions": len(sel.plan.steps),
            "chunks": [s.n_chunks for s in sel.plan.steps],
            "plans_estimated": sel.evaluated,
            "selection_seconds": round(time.perf_counter() - t0, 1),
        }
        if not sel.plan.steps:
            part.setdefault("no_plan", []).append(fraction)
            print(f"  {name} at {fraction:.0%}: no plan lowers the peak", flush=True)
            continue
        export(f"{round(fraction * 100)}%", sel.plan, extra)
        print(
            f"  {name} at {fraction:.0%}: {'met' if sel.reached else 'NOT met'}, "
            f"{sel.plan.estimated_peak / sel.unchunked_peak:.1%} of "
            f"{sel.unchunked_peak / MIB:.0f} MiB, {len(sel.plan.steps)} regions, "
            f"{extra['selection_seconds']} s",
            flush=True,
        )
    part["prepare_seconds"] = round(time.perf_counter() - began, 1)
    return part


def merge_manifest(folder: str, arch: str) -> dict:
    parts = []
    for path in sorted(glob.glob(os.path.join(folder, "parts", "*.json"))):
        with open(path) as f:
            parts.append(json.load(f))
    order = list(MODELS)
    parts.sort(key=lambda p: order.index(p["name"]) if p["name"] in order else len(order))
    manifest = {"func": "main", "arch": arch, "models": parts}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


# NOTE [kernels compiled at build time]: TVM compiles CUDA kernels to a binary when the library
# is built only if its CUDA runtime library is loaded, and that needs the CUDA driver
# (libcuda.so.1). Without it, codegen keeps the CUDA *source* in the exported library and the
# loader compiles it when the library is loaded, through TVM's Python compiler, which the TVM
# runtime alone (the device machine here, the C++ runner, a deployment) does not have. On a
# machine without the driver, `prepare` therefore gives the build a stand-in driver whose every
# call fails (no kernel is launched while building) and has nvcc compile the kernels.
DRIVER_STUB = """
#define STUB(name) int name(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }
STUB(cuDeviceGetName) STUB(cuFuncSetAttribute) STUB(cuGetErrorName) STUB(cuGetErrorString)
STUB(cuLaunchKernelEx) STUB(cuModuleGetFunction) STUB(cuModuleLoadData) STUB(cuModuleUnload)
STUB(cuTensorMapEncodeTiled)
"""


def _reexec_with_driver_stub(folder: str) -> int:
    stub_dir = os.path.join(os.path.abspath(folder), "driver_stub")
    os.makedirs(stub_dir, exist_ok=True)
    with open(os.path.join(stub_dir, "stub.c"), "w") as f:
        f.write(DRIVER_STUB)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", os.path.join(stub_dir, "libcuda.so.1"), "stub.c"],
        check=True,
        cwd=stub_dir,
    )
    env = dict(os.environ, TVM_CUDA_COMPILE_MODE="nvcc", AUTOCHUNK_DRIVER_STUB="1")
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [stub_dir, env.get("LD_LIBRARY_PATH")]))
    print(f"no CUDA driver here: building with the stand-in in {stub_dir}", flush=True)
    return subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode


def prepare(opts) -> int:
    if opts.arch != "llvm" and not cuda_kernels_compile_at_build():
        if os.environ.get("AUTOCHUNK_DRIVER_STUB"):
            raise SystemExit("TVM's CUDA runtime does not load even with the stand-in driver")
        return _reexec_with_driver_stub(opts.folder)
    os.makedirs(os.path.join(opts.folder, "parts"), exist_ok=True)
    for name in opts.only or list(MODELS):
        print(f"{name}:", flush=True)
        part = prepare_model(name, opts.folder, opts.arch, opts.budgets)
        part["run"] = revision()
        part["machine"] = f"{platform.platform()}, {os.cpu_count()} cores"
        with open(os.path.join(opts.folder, "parts", f"{name}.json"), "w") as f:
            json.dump(part, f, indent=1)
    merge_manifest(opts.folder, opts.arch)
    return 0


# -- report ---------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def report(opts) -> int:
    with open(os.path.join(opts.folder, "manifest.json")) as f:
        manifest = json.load(f)
    path = os.path.join(opts.folder, "measured.json")
    if os.path.exists(path):
        with open(path) as f:
            measured = json.load(f)
    else:  # prepared, not run yet: the table shows what selection predicted
        measured = {"device": "none yet (prepared only)", "models": {}}
    rows = []
    for model in manifest["models"]:
        got = measured["models"].get(model["name"], {"builds": {}})
        plain = got["builds"].get("unchunked", {})
        for build in model["builds"]:
            m = got["builds"].get(build["label"], {})
            row = {"model": model["name"], "size": model["size"], "run": model.get("run")}
            row.update({k: v for k, v in build.items() if k != "lib"})
            row.update(m)
            if "peak_bytes" in m and m["peak_bytes"] > 0:
                row["prediction_error"] = (build["predicted_peak"] - m["peak_bytes"]) / m[
                    "peak_bytes"
                ]
                if plain.get("peak_bytes"):
                    row["measured_fraction"] = m["peak_bytes"] / plain["peak_bytes"]
            if "error" in got:
                row["error"] = got["error"]
            rows.append(row)
    info = {
        "command": "python benchmarks/gpu_run.py prepare DIR; python benchmarks/gpu_worker.py "
        "run DIR; python benchmarks/gpu_run.py report DIR",
        "device": measured.get("gpu", measured["device"]),
        "arch": manifest["arch"],
    }
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, "gpu_run")
    with open(base + ".json", "w") as f:
        json.dump({"meta": info, "rows": rows}, f, indent=1)
    gpu = measured.get("gpu", {})
    device = f"{gpu.get('name', measured['device'])} (compute {gpu.get('compute_version', '-')})"
    lines = [
        "# AutoChunk on a GPU: the static estimate against the device, outputs, speed",
        "",
        (
            f"Device: {device}; builds for `{manifest['arch']}`, selected and compiled on a "
            f"machine without a GPU (static estimate). Reproduce: `{info['command']}`."
        ),
        "",
        (
            "Measured: device memory in use across one call (after a warm-up call, with the "
            "VM's pool emptied; the driver counts in 2 MiB pages). Predicted: the static "
            "estimate the selection used (unchunked: `static_allocation`). Speed: time over "
            "the unchunked build's, same process, interleaved, median. Output error: largest "
            "absolute difference from the unchunked build's outputs / largest output magnitude."
        ),
        "",
        (
            "| model | size | build | reached | predicted | measured | error | of unchunked | "
            "speed | output error | regions | selection |"
        ),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = ", ".join(f"{k} {v}" for k, v in r["size"].items())
        measured_cell = f"{r['peak_bytes'] / MIB:.1f} MiB" if "peak_bytes" in r else "-"
        frac = f"{r['measured_fraction']:.1%}" if "measured_fraction" in r else "-"
        speed = f"x{r['speed_ratio']:.3f}" if "speed_ratio" in r else "-"
        err = f"{r['max_abs_error']:.1e} / {r['output_scale']:.1e}" if "max_abs_error" in r else "-"
        reached = "-" if "reached" not in r else ("yes" if r["reached"] else "**no**")
        sel = f"{r['selection_seconds']:.0f} s" if "selection_seconds" in r else "-"
        lines.append(
            f"| `{r['model']}` | {size} | {r['label']} | {reached} | "
            f"{r['predicted_peak'] / MIB:.1f} MiB | {measured_cell} | "
            f"{_pct(r.get('prediction_error'))} | {frac} | {speed} | {err} | "
            f"{r.get('regions', '-')} | {sel} |"
        )
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_prep = sub.add_parser("prepare")
    p_prep.add_argument("folder")
    p_prep.add_argument("--only", nargs="+", choices=list(MODELS))
    p_prep.add_argument("--arch", default="sm_90", help="CUDA arch, or llvm (a CPU trial)")
    p_prep.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    p_merge = sub.add_parser("merge")
    p_merge.add_argument("folder")
    p_merge.add_argument("--arch", default="sm_90")
    p_rep = sub.add_parser("report")
    p_rep.add_argument("folder")
    opts = parser.parse_args(argv)
    if opts.cmd == "prepare":
        return prepare(opts)
    if opts.cmd == "merge":
        merge_manifest(opts.folder, opts.arch)
        return 0
    return report(opts)


if __name__ == "__main__":
    sys.exit(main())
