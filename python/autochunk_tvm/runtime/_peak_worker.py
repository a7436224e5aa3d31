"""Worker process of :func:`autochunk_tvm.measure_peak_memory` (one call, then exit).

Usage: python -m autochunk_tvm.runtime._peak_worker LIB.so cpu|cuda FUNC ARG0.npy ...
Prints one JSON line: {"peak_bytes": ..., "baseline_bytes": ...}.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def main(argv: list[str]) -> int:
    import tvm
    from tvm import relax

    lib, device, func_name, *arg_paths = argv
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(lib), dev)
    func = vm[func_name]
    inputs = [tvm.runtime.tensor(np.load(p), dev) for p in arg_paths]
    dev.sync()
    if device == "cuda":
        before = dev.total_global_memory - dev.available_global_memory
        out = func(*inputs)
        dev.sync()
        after = dev.total_global_memory - dev.available_global_memory
        peak, baseline = after - before, before
    else:
        baseline = _status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        out = func(*inputs)
        peak = _status_kib("VmHWM") * 1024 - baseline
    del out
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": baseline}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
