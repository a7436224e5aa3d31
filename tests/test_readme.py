"""Every Python block of the README runs, in order and in one namespace, as a reader would
paste them into one session: the README cannot drift from the API.

An HTML comment on the line before a block (not shown on the rendered page) tells this runner
how to run it; ``;`` separates several:

    <!-- readme-test: seq_len=2048 -> seq_len=512 -->   run at a smaller size (the text OLD is
                                                         replaced by NEW; OLD must be there)
    <!-- readme-test: gpu -->                             needs a CUDA GPU: skipped without one
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
DIRECTIVE = re.compile(r"<!--\s*readme-test:(.*?)-->")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced Python block of the README and how to run it."""

    line: int  # of the opening fence, 1-based
    code: str
    replacements: tuple[tuple[str, str], ...] = ()
    needs_gpu: bool = False

    @property
    def runnable(self) -> str:
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise AssertionError(
                    f"README line {self.line}: the readme-test directive replaces {old!r}, "
                    "which the block no longer contains"
                )
            code = code.replace(old, new)
        return code


def parse_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, with the directive on the line before each."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        replacements: list[tuple[str, str]] = []
        needs_gpu = False
        found = DIRECTIVE.search(lines[start - 1]) if start else None
        for part in found.group(1).split(";") if found else []:
            part = part.strip()
            if part == "gpu":
                needs_gpu = True
            elif "->" in part:
                old, new = (s.strip() for s in part.split("->", 1))
                replacements.append((old, new))
            else:
                raise ValueError(f"README line {start}: unknown readme-test directive {part!r}")
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(start + 1, code, tuple(replacements), needs_gpu))
        i = end + 1
    return blocks


with open(README) as _f:
    BLOCKS = parse_blocks(_f.read())


def test_the_parser_reads_directives_and_refuses_unknown_ones():
    text = "x\n<!-- readme-test: a=1 -> a=2; gpu -->\n```python\nf(a=1)\n```\n```python\ng()\n```\n"
    first, second = parse_blocks(text)
    assert (first.line, first.runnable, first.needs_gpu) == (3, "f(a=2)\n", True)
    assert (second.runnable, second.needs_gpu) == ("g()\n", False)
    with pytest.raises(ValueError, match="unknown readme-test directive"):
        parse_blocks("<!-- readme-test: fast -->\n```python\npass\n```\n")
    stale = parse_blocks("<!-- readme-test: b=1 -> b=2 -->\n```python\npass\n```\n")[0]
    with pytest.raises(AssertionError, match="no longer contains"):
        _ = stale.runnable


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One namespace for all blocks, run in a scratch folder (the blocks write files)."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))
    state = {"namespace": {"__name__": "__readme__"}, "failed": None}
    yield state
    os.chdir(here)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_block_runs(block, session):
    if block.needs_gpu:
        from autochunk_tvm.runtime.measure import cuda_available

        if not cuda_available():
            pytest.skip("needs a CUDA GPU")
    if session["failed"] is not None:
        pytest.skip(f"the block at README line {session['failed']} failed, and this one uses it")
    session["failed"] = block.line
    exec(compile(block.runnable, f"README.md:{block.line}", "exec"), session["namespace"])  # noqa: S102
    session["failed"] = None
