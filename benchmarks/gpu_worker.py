"""The device half of ``benchmarks/gpu_run.py``: runs prepared builds on a GPU and measures them.

It needs the TVM *runtime* alone (``TVM_USE_RUNTIME_LIB=1``; no compiler, no autochunk_tvm, no
torch), so that it runs on a machine that has a GPU but no TVM wheel: ``gpu_run.py prepare``
builds and exports every library here, this script loads them there.

    python gpu_worker.py run DIR [--device cuda|cpu] [--repeats N]     # every model of DIR
    python gpu_worker.py peak DIR MODEL BUILD [--device ...]            # one build's memory
    python gpu_worker.py model DIR MODEL [--device ...]                 # one model, one process

``run`` writes ``DIR/measured.json`` after each model (a cut-off run keeps what it measured).
On CUDA each model runs in a fresh process (``model``; a kernel fault there cannot end the run):
per build, the device memory in use across one call, after a first call has loaded the kernels
and the VM's pooled allocator has been emptied (so the growth is the call's own allocations:
what the static plan predicts); then every chunked build's outputs against the unchunked
build's, and its time over the unchunked one (interleaved rounds, median). On CPU (a trial of
the path without a GPU) each build's memory is a fresh process's high-water mark (``peak``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

import tvm  # noqa: E402
from tvm.runtime.vm import VirtualMachine  # noqa: E402

MANIFEST = "manifest.json"
MEASURED = "measured.json"


def _device(kind: str):
    if kind == "cuda":
        _load_cuda_runtime()
        return tvm.cuda(0)
    return tvm.cpu(0)


def _load_cuda_runtime() -> None:
    """TVM loads its CUDA runtime library on import when it can (tvm.backend.cuda) and stays
    silent when it cannot: load it here so that a missing dependency is an error that says so."""
    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    import ctypes

    lib = os.path.join(os.path.dirname(_LOADED_LIBS["tvm_runtime"]._name), "libtvm_runtime_cuda.so")
    _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1)) * 1024


def _growth(call, dev, kind: str) -> tuple[int, int]:
    """(bytes ``call`` allocated at its peak, bytes in use before it). CUDA: device memory in
    use (total minus free, as the driver reports it) after the call minus before it: the pooled
    allocator gives nothing back during a call. CPU: the resident set's high-water mark."""
    dev.sync()
    if kind == "cuda":
        before = dev.total_global_memory - dev.available_global_memory
        out = call()
        dev.sync()
        after = dev.total_global_memory - dev.available_global_memory
    else:
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        out = call()
        after = _status_bytes("VmHWM")
    del out
    return after - before, before


def _inputs(folder: str, model: dict, dev) -> list:
    """The model's inputs on ``dev``: saved arrays, or drawn from their spec (large floats)."""
    out = []
    for k, spec in enumerate(model["inputs"]):
        if "file" in spec:
            arr = np.load(os.path.join(folder, spec["file"]))
        elif "fill" in spec:
            arr = np.full(spec["shape"], spec["fill"], dtype=spec["dtype"])
        else:
            rng = np.random.default_rng(k)
            arr = rng.normal(spec["mean"], spec["std"], spec["shape"]).astype(spec["dtype"])
        out.append(tvm.runtime.tensor(arr, dev))
    return out


def _outputs(out) -> list[np.ndarray]:
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    arrays: list[np.ndarray] = []
    for item in out:
        arrays.extend(_outputs(item))
    return arrays


def _vm(folder: str, build: dict, dev) -> VirtualMachine:
    return VirtualMachine(tvm.runtime.load_module(os.path.join(folder, build["lib"])), dev)


def _build_memory(folder: str, build: dict, args: list, func_name: str, dev, kind: str) -> dict:
    """One build's memory: a first call loads the kernels and fills the VM's pooled allocator;
    the pool is then emptied, and the growth across the next call is what the call allocates."""
    clear = tvm.get_global_func("vm.builtin.memory_manager.clear")
    vm = _vm(folder, build, dev)
    func = vm[func_name]
    first, _ = _growth(lambda: func(*args), dev, kind)
    clear()
    growth, baseline = _growth(lambda: func(*args), dev, kind)
    vm = func = None  # the VM and its constants go before the next build is measured
    clear()
    if kind == "cpu":
        growth = first  # freed heap pages stay resident on CPU: only a first call's growth counts
    return {"peak_bytes": growth, "first_call_bytes": first, "baseline_bytes": baseline}


def peak(folder: str, model_name: str, build_label: str, kind: str) -> dict:
    """One build's memory, measured in this (fresh) process."""
    manifest = _load(folder)
    model = next(m for m in manifest["models"] if m["name"] == model_name)
    build = next(b for b in model["builds"] if b["label"] == build_label)
    dev = _device(kind)
    return _build_memory(folder, build, _inputs(folder, model, dev), manifest["func"], dev, kind)


def measure_model(folder: str, model_name: str, kind: str, repeats: int) -> dict:
    """Every build of a model in this process: on CUDA its memory (the pool is emptied between
    builds, so each starts from the same device memory), then outputs and time."""
    manifest = _load(folder)
    model = next(m for m in manifest["models"] if m["name"] == model_name)
    result: dict = {}
    if kind == "cuda":
        dev = _device(kind)
        args = _inputs(folder, model, dev)
        for build in model["builds"]:
            result[build["label"]] = _build_memory(folder, build, args, manifest["func"], dev, kind)
        del args
    for label, values in compare(folder, model, manifest["func"], kind, repeats).items():
        result.setdefault(label, {}).update(values)
    return result


def compare(folder: str, model: dict, func_name: str, kind: str, repeats: int) -> dict:
    """Outputs and time of every build of ``model`` against its unchunked build."""
    dev = _device(kind)
    args = _inputs(folder, model, dev)
    funcs = {b["label"]: _vm(folder, b, dev)[func_name] for b in model["builds"]}
    ref_label = model["builds"][0]["label"]
    ref = _outputs(funcs[ref_label](*args))
    result: dict = {}
    for label, func in funcs.items():
        outs = _outputs(func(*args))
        errors = [
            float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            for a, b in zip(outs, ref)
        ]
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0 for b in ref)
        finite = all(bool(np.all(np.isfinite(a))) for a in outs)
        result[label] = {"max_abs_error": max(errors), "output_scale": scale, "finite": finite}
    # Time: interleaved rounds; in each, every build runs `number` calls after one untimed call.
    dev.sync()
    t0 = time.perf_counter()
    funcs[ref_label](*args)
    dev.sync()
    once = time.perf_counter() - t0
    number = max(1, min(50, int(0.05 / max(once, 1e-6))))
    times: dict[str, list[float]] = {label: [] for label in funcs}
    for _ in range(repeats):
        for label, func in funcs.items():
            func(*args)
            dev.sync()
            t0 = time.perf_counter()
            for _ in range(number):
                out = func(*args)
            dev.sync()
            times[label].append((time.perf_counter() - t0) / number)
            del out
    base = statistics.median(times[ref_label])
    for label in funcs:
        med = statistics.median(times[label])
        result[label].update(
            {"median_seconds": med, "speed_ratio": med / base, "calls_per_round": number}
        )
    return result


def _child(cmd: list[str], timeout: float) -> dict:
    """Run one measurement in a fresh process (a kernel fault there cannot end the run): its
    last stdout line as JSON, or ``{"error": ...}``."""
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{cmd[2]}: over {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"{cmd[2]}: exit {proc.returncode}: {proc.stderr[-1500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load(folder: str) -> dict:
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)


def run(folder: str, kind: str, repeats: int, timeout: float, path: str | None, only=None) -> int:
    manifest = _load(folder)
    path = path or os.path.join(folder, MEASURED)
    measured = {"device": kind, "models": {}}
    if kind == "cuda":
        dev = _device(kind)
        if not dev.exist:
            print("no CUDA device visible to the TVM runtime", file=sys.stderr)
            return 1
        measured["gpu"] = {
            "name": dev.device_name,
            "compute_version": dev.compute_version,
            "total_memory": dev.total_global_memory,
        }
    for model in manifest["models"]:
        name = model["name"]
        if only and name not in only:
            continue
        entry: dict = {"builds": {}}
        began = time.perf_counter()
        if kind == "cpu":  # CPU memory is a process's high-water mark: one process per build
            for build in model["builds"]:
                cmd = [sys.executable, __file__, "peak", folder, name, build["label"]]
                entry["builds"][build["label"]] = _child([*cmd, "--device", kind], timeout)
        cmd = [sys.executable, __file__, "model", folder, name, "--device", kind]
        got = _child([*cmd, "--repeats", str(repeats)], timeout)
        if "error" in got:
            entry["error"] = got["error"]
        else:
            for label, values in got.items():
                if kind == "cpu":
                    values = {k: v for k, v in values.items() if "bytes" not in k}
                entry["builds"].setdefault(label, {}).update(values)
        entry["seconds"] = round(time.perf_counter() - began, 1)
        measured["models"][name] = entry
        with open(path, "w") as f:
            json.dump(measured, f, indent=1)
        summary = ", ".join(
            f"{label}: {b.get('peak_bytes', 0) / 2**20:.0f} MiB x{b.get('speed_ratio', 0):.3f}"
            for label, b in entry["builds"].items()
        )
        print(f"{name} ({entry['seconds']} s): {summary}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("folder")
    p_run.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p_run.add_argument("--repeats", type=int, default=10)
    p_run.add_argument("--timeout", type=float, default=120.0, help="per process, seconds")
    p_run.add_argument("--measured", help=f"where to write the results (default DIR/{MEASURED})")
    p_run.add_argument("--only", nargs="+", help="these models of DIR only")
    p_peak = sub.add_parser("peak")
    p_peak.add_argument("folder")
    p_peak.add_argument("model")
    p_peak.add_argument("build")
    p_peak.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p_cmp = sub.add_parser("model")
    p_cmp.add_argument("folder")
    p_cmp.add_argument("model")
    p_cmp.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p_cmp.add_argument("--repeats", type=int, default=10)
    opts = parser.parse_args(argv)
    if opts.cmd == "model":
        print(json.dumps(measure_model(opts.folder, opts.model, opts.device, opts.repeats)))
        return 0
    if opts.cmd == "peak":
        print(json.dumps(peak(opts.folder, opts.model, opts.build, opts.device)))
        return 0
    return run(opts.folder, opts.device, opts.repeats, opts.timeout, opts.measured, opts.only)


if __name__ == "__main__":
    sys.exit(main())
