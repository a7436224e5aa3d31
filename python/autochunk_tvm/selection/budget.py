"""Memory budgets: how users state them, and the error for one that cannot be met.

A budget bounds the bytes one call of the built function allocates: intermediates, outputs
and kernel workspace, what :func:`~autochunk_tvm.static_allocation` predicts and
:func:`~autochunk_tvm.measure_peak_memory` measures. Inputs exist before the call and are not
part of it; weights are constants of the module and not part of it either.
"""

from __future__ import annotations

import numbers
import re

import numpy as np
import tvm_ffi

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


class OverBudgetWarning(UserWarning):
    """The budget is unreachable and ``strict=False`` returns the smallest plan found.

    A category of its own, so that a caller (the CLI's ``--allow-over-budget``) can say it in
    its own words.

    Attributes
    ----------
    smallest_peak
        The peak (bytes) of the plan returned.
    budget
        The budget asked for, in bytes.
    """

    def __init__(self, message: str, smallest_peak: int, budget: int):
        super().__init__(message)
        self.smallest_peak = smallest_peak
        self.budget = budget


@tvm_ffi.register_error
class BudgetUnreachableError(ValueError):
    """No chunk plan brings the peak under the budget.

    Attributes
    ----------
    smallest_peak
        The smallest peak (bytes) a plan found by the search reaches: a budget at least this
        large is reachable.
    budget
        The budget asked for, in bytes.
    """

    def __init__(self, message: str, smallest_peak: int | None = None, budget: int | None = None):
        # NOTE [errors across the FFI]: raised inside a module pass, the error is rebuilt from
        # its message alone on the way out, so the numbers travel in the message too.
        if smallest_peak is not None and budget is not None:
            message = f"{message} [budget={budget} bytes, smallest_peak={smallest_peak} bytes]"
        else:
            found = _NUMBERS.search(message)
            if found:
                budget, smallest_peak = int(found.group(1)), int(found.group(2))
        super().__init__(message)
        self.smallest_peak = smallest_peak
        self.budget = budget


_NUMBERS = re.compile(r"\[budget=(\d+) bytes, smallest_peak=(\d+) bytes\]")


def parse_budget(budget: int | float | str, unchunked_peak: int | None = None) -> int:
    """A budget in bytes from what a user wrote.

    Parameters
    ----------
    budget
        ``int``: bytes. ``float`` in ``(0, 1]``: that fraction of ``unchunked_peak``.
        ``str``: a size with a unit, ``"2GiB"``, ``"512MB"``, ``"1.5 gib"`` (``KB/MB/GB`` are
        powers of 1000, ``KiB/MiB/GiB`` of 1024), or a percentage ``"20%"``.
    unchunked_peak
        Bytes the unchunked build allocates; needed for fractions and percentages.

    Raises
    ------
    ValueError
        For anything else, with what to write instead.
    """
    if isinstance(budget, bool | np.bool_):
        raise ValueError(_help(budget))
    if isinstance(budget, numbers.Integral):  # numpy integers too
        if budget <= 0:
            raise ValueError(f"a budget in bytes must be positive, got {budget}")
        return int(budget)
    if isinstance(budget, numbers.Real):  # numpy floating scalars too
        budget = float(budget)
        if not 0.0 < budget <= 1.0:
            raise ValueError(
                f"a float budget is a fraction of the unchunked peak and must be in (0, 1], "
                f"got {budget}; give bytes as an int or a string such as '2GiB'"
            )
        return _fraction(budget, unchunked_peak)
    if isinstance(budget, str):
        text = budget.strip()
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                raise ValueError(_help(budget)) from None
            return parse_budget(percent / 100.0, unchunked_peak)
        match = _PATTERN.match(text)
        if match is None or match.group(2).upper() not in _UNITS:
            raise ValueError(_help(budget))
        value = float(match.group(1)) * _UNITS[match.group(2).upper()]
        if value < 1:
            raise ValueError(f"budget {budget!r} is below one byte")
        return int(value)
    raise ValueError(_help(budget))


def check_budget(budget: int | float | str) -> None:
    """Raise the :func:`parse_budget` error now if ``budget`` is not a budget at all (the
    unchunked peak, which a fraction needs, is known only once the module is)."""
    parse_budget(budget, unchunked_peak=1)


def _fraction(fraction: float, unchunked_peak: int | None) -> int:
    if unchunked_peak is None:
        raise ValueError("a fractional budget needs the unchunked peak to be known")
    return max(1, int(fraction * unchunked_peak))


def _help(budget) -> str:
    return (
        f"cannot read budget {budget!r}: give bytes (int), a fraction of the unchunked peak "
        "(float in (0, 1]) or a string such as '2GiB', '512MB' or '20%'"
    )
