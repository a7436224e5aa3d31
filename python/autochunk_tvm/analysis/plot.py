"""Draw memory profiles: live activation bytes per operator, peak marked (paper Fig. 4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .memory import MemoryProfile

MIB = 1024 * 1024


def plot_profiles(profiles: Sequence[MemoryProfile], path: str, title: str | None = None) -> str:
    """Write a PNG of live MiB per binding for each profile; returns ``path``.

    Profiles of different lengths (e.g. before/after chunking) share the x-axis as the fraction
    of the function executed, so their shapes can be compared.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    labels = ["unchunked", "chunked"] if len(profiles) == 2 else [p.function for p in profiles]
    for profile, label in zip(profiles, labels):
        n = max(1, len(profile.bindings) - 1)
        xs = [b.index / n if len(profiles) > 1 else b.index for b in profile.bindings]
        ys = [b.live_bytes / MIB for b in profile.bindings]
        (line,) = ax.plot(
            xs, ys, lw=1.2, label=f"{label} (peak {profile.peak_bytes / MIB:.1f} MiB)"
        )
        if profile.peak_index >= 0:
            px = xs[profile.peak_index]
            ax.plot([px], [profile.peak_bytes / MIB], "o", color=line.get_color())
            ax.annotate(
                profile.peak_binding,
                (px, profile.peak_bytes / MIB),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xlabel("operator (fraction of program)" if len(profiles) > 1 else "operator index")
    ax.set_ylabel("live activation memory (MiB)")
    first = profiles[0]
    ax.set_title(title or f"activation memory of {first.function}")
    return save_figure(fig, ax, path, legend="upper right")


def save_figure(fig, ax, path: str, legend: str) -> str:
    """Finish a memory plot (y from 0, grid, legend) and write it to ``path``."""
    import matplotlib.pyplot as plt

    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
