"""Do the committed throughput-vs-memory results still describe what selection chooses?

    python benchmarks/check_plans.py [--models gpt vit evoformer unet]

Re-runs selection (no build, no measurement) for every cell of
``results/throughput_memory.json`` and compares the plan with the committed row: estimated
peak, number of regions and chunk counts. A change to selection that leaves every plan the
same leaves every measured number of that benchmark standing; one that changes a plan means
the benchmark must be re-run. Exit status 1 when a plan differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    opts = parser.parse_args(argv)
    with open(os.path.join(common.RESULTS, "throughput_memory.json")) as f:
        data = json.load(f)
    preset, target = data["meta"].get("preset", "small"), data["meta"].get("target", "llvm")
    rows = [r for r in data["rows"] if opts.models is None or r["model"] in opts.models]
    subjects: dict[str, common.Subject] = {}
    changed = 0
    for row in rows:
        name = row["model"]
        if name not in subjects:
            subjects[name] = common.load(name, preset, common.sizes_for(preset)[name], target)
        began = time.time()
        sel = subjects[name].select(row["fraction"])
        now = {
            "estimated_peak": sel.plan.estimated_peak,
            "regions": len(sel.plan.steps),
            "chunks": [s.n_chunks for s in sel.plan.steps],
        }
        then = {k: row[k] for k in now}
        same = now == then
        changed += not same
        print(
            f"{name:9s} {row['fraction']:4.0%}: {'same' if same else 'CHANGED'} "
            f"({now if same else f'{then} -> {now}'}; {time.time() - began:.0f} s)",
            flush=True,
        )
    print(f"{len(rows) - changed} of {len(rows)} plans as committed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
