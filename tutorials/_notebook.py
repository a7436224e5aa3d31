"""The tutorials' notebooks: each ``NN_name.py`` (cells marked ``# %%``, the percent format
that VS Code, PyCharm, Spyder and jupytext read) is the source of ``NN_name.ipynb``.

    python tutorials/_notebook.py            # write every .ipynb from its .py
    python tutorials/_notebook.py --check    # exit 1 if a notebook differs from its source
    python tutorials/_notebook.py --run X.ipynb   # run a notebook's code cells in order, in
                                                  # one namespace, as a kernel would

Notebooks are stored without outputs, so that they change only when their source does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = "# %%"


def tutorial_sources() -> list[str]:
    """The tutorial scripts, in reading order."""
    return sorted(
        os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".py") and f[0].isdigit()
    )


def split_cells(source: str) -> list[tuple[str, str]]:
    """``(cell_type, text)`` for each ``# %%`` cell; markdown cells lose their ``# ``."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith(MARKER):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first {MARKER!r} cell marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def to_notebook(source: str) -> dict:
    """An nbformat 4.5 notebook (as JSON data) with the cells of ``source``."""
    cells = []
    for i, (kind, text) in enumerate(split_cells(source)):
        lines = text.splitlines(keepends=True)
        cell = {"cell_type": kind, "id": f"cell-{i}", "metadata": {}, "source": lines}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_text(source_path: str) -> str:
    with open(source_path) as f:
        return json.dumps(to_notebook(f.read()), indent=1, ensure_ascii=False) + "\n"


def run_notebook(path: str) -> None:
    """Execute the code cells of notebook ``path`` in order in one namespace."""
    with open(path) as f:
        notebook = json.load(f)
    namespace = {"__name__": "__main__", "__file__": path}
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])
            exec(compile(code, f"{os.path.basename(path)}[cell {i}]", "exec"), namespace)  # noqa: S102


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--run", metavar="NOTEBOOK")
    opts = parser.parse_args()
    if opts.run:
        run_notebook(opts.run)
        return 0
    stale = []
    for source in tutorial_sources():
        target = source[:-3] + ".ipynb"
        text = notebook_text(source)
        current = None
        if os.path.exists(target):
            with open(target) as f:
                current = f.read()
        if current != text:
            stale.append(os.path.basename(target))
            if not opts.check:
                with open(target, "w") as f:
                    f.write(text)
    if opts.check and stale:
        print(
            f"out of date: {', '.join(stale)}; run python tutorials/_notebook.py", file=sys.stderr
        )
        return 1
    print(("stale: " if opts.check else "written: ") + (", ".join(stale) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
