"""All five of the paper's experiments in one run: the script for a GPU machine.

    python benchmarks/paper.py --target cuda --preset paper     # a GPU machine, paper sizes
    python benchmarks/paper.py                                  # CPU sizes, every experiment

Runs, in order, each experiment's ``main`` with the same target, preset and repeats:
throughput vs memory (Fig. 5), expert chunking (Figs. 7-8), fused attention (Fig. 6), the
longest input under a cap (§4.2) and the ablation (Table 1). Each writes its own
``benchmarks/results/<experiment>[_<target>].*``; ``--only`` picks some of them. A failing
experiment is reported and the others still run; the exit status is then 1.

On the device machine of this workplace (Python 3.12, its own torch), carry apache-tvm and
its dependencies as wheels in ``.whl`` (see the device tool's README) and start with
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
PYTHONPATH=/tmp/site:python python3 benchmarks/paper.py --target cuda --preset paper``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import ablation
import expert_chunking
import fused_attention
import longest_sequence
import throughput_memory

EXPERIMENTS = {
    "throughput_memory": throughput_memory.main,
    "expert_chunking": expert_chunking.main,
    "fused_attention": fused_attention.main,
    "longest_sequence": longest_sequence.main,
    "ablation": ablation.main,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--preset", default="small", choices=["small", "paper"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    opts = parser.parse_args()
    common = ["--target", opts.target, "--preset", opts.preset, "--repeats", str(opts.repeats)]
    failed = []
    for name in opts.only:
        began = time.time()
        print(f"=== {name}", flush=True)
        try:
            EXPERIMENTS[name](common)
        except Exception:  # noqa: BLE001 -- report and go on: one experiment's failure should not lose the rest
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.time() - began:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
