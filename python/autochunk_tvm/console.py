"""What reaches the user's console from the libraries we drive, and what is held back.

TVM's C++ runtime and compiler log warnings straight to the process's standard error (file
descriptor 2), and torch raises Python warnings about its own internals. Some of them carry no
information a user of autochunk-tvm can act on, and a run that prints dozens of them looks
broken. NOTE [quiet at the source]: each such message is named here, with why it is noise, and
is filtered only around the calls of ours that cause it (the CLI, :func:`autochunk_tvm.build`,
the memory measurement's export, the frontend's decomposition); everything else, our own
warnings and every error, passes through unchanged. ``show_everything(True)`` (the CLI's
``--verbose``) turns every filter off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Noise:
    """A message of another library that is held back, and why a user cannot act on it."""

    pattern: str  # a regular expression searched in one line of output
    why: str


# Native log lines (TVM's C++ ``LOG(WARNING)``), matched per line of file descriptor 2.
NATIVE_NOISE = (
    Noise(
        r"executable\.cc:\d+: Warning: Scope Saving:",
        "TVM 0.27's VM executable logs one empty line per constant when it is exported after "
        "a VirtualMachine ran it (a debugging leftover; nothing is wrong)",
    ),
    Noise(
        r"topi/transform\.h:\d+: Warning: Fast mode segfaults when there are out-of-bounds "
        r"indices",
        "the importer legalizes every gather (embedding lookups, position ids) in TVM's fast "
        "mode; the model's own indices are in bound, and the user has no switch for it",
    ),
)

# Python warnings raised by torch, matched on their message.
TORCH_NOISE = (
    Noise(
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "torch 2.13's own run_decompositions deep-copies a pytree spec through a deprecated "
        "path; nothing in the user's model causes it",
    ),
)

_show_everything = False
_depth = 0  # nested filters (the CLI around ac.build) install one pipe, at the outermost
_lock = threading.Lock()


def show_everything(on: bool = True) -> bool:
    """Turn every filter of this module off (``True``) or back on (the CLI's ``--verbose``);
    returns the setting it replaces, for the caller to restore."""
    global _show_everything
    previous, _show_everything = _show_everything, bool(on)
    return previous


def is_native_noise(line: str) -> bool:
    """Whether one line of native standard error is a message held back here."""
    return any(re.search(n.pattern, line) for n in NATIVE_NOISE)


@contextlib.contextmanager
def torch_warnings_filtered() -> Iterator[None]:
    """Hold back torch's warnings about its own internals (``TORCH_NOISE``) inside the block."""
    with warnings.catch_warnings():
        if not _show_everything:
            for noise in TORCH_NOISE:
                warnings.filterwarnings("ignore", message=noise.pattern, category=FutureWarning)
        yield


def holds_back_native_noise(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` inside :func:`native_stderr_filtered`: for our entry points that run TVM's
    passes (legalization logs a gather's warning) or export an executable."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with native_stderr_filtered():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[io.TextIOBase]:
    """Send native writes to file descriptor 2 through a filter that drops ``NATIVE_NOISE``.

    Python's own standard error is not filtered: inside the block ``sys.stderr`` writes to the
    real standard error directly (so a progress line redrawn in place on a terminal need not
    wait for a line end, and our messages keep their order), and the block yields that stream.
    Native lines (TVM's C++ log) are forwarded a line at a time. A nested use is a no-op: the
    outermost filter serves the whole block.
    """
    global _depth
    with _lock:
        outermost = _depth == 0 and not _show_everything
        _depth += 1
    if not outermost:
        try:
            yield sys.stderr
        finally:
            with _lock:
                _depth -= 1
        return
    python_stderr = sys.stderr
    with contextlib.suppress(Exception):
        python_stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(
        target=_forward, args=(read_end, real), name="autochunk-stderr-filter", daemon=True
    )
    forwarder.start()
    terminal = None
    if _writes_to_fd2(python_stderr):
        terminal = open(os.dup(real), "w", buffering=1, closefd=True)  # noqa: SIM115
        sys.stderr = terminal
    try:
        yield sys.stderr
    finally:
        if terminal is not None:
            sys.stderr = python_stderr
            terminal.close()
        os.dup2(real, 2)  # closes the pipe's last write end: the forwarder reads its end
        forwarder.join(timeout=10)
        os.close(real)
        with _lock:
            _depth -= 1


def _writes_to_fd2(stream) -> bool:
    """Whether ``stream`` writes to file descriptor 2 (not so under pytest's ``capsys``)."""
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _forward(read_end: int, real: int) -> None:
    """Copy lines from ``read_end`` to ``real`` until end of file, dropping noise."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [ln for ln in lines if not is_native_noise(ln.decode(errors="replace"))]
            if kept:
                _write_all(real, b"\n".join(kept) + b"\n")
    if pending and not is_native_noise(pending.decode(errors="replace")):
        _write_all(real, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
