"""PNG figures of the study report, drawn with matplotlib's Agg backend (no display needed).

Every figure takes prepared series: {label: [(x, mean, std), ...]} with x increasing; error bars
are the standard deviation over seeds (0 with a single seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Series = dict[str, list[tuple[float, float, float]]]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def line_plot(
    series: Series, path: Path, xlabel: str, ylabel: str, title: str,
    log_x: bool = False, diagonal: bool = False,
) -> Path:  # fmt: skip
    """One line with error bars per series; `diagonal` adds y = x (M = K)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in series.items():
        xs, means, stds = zip(*points, strict=True)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    if diagonal and series:
        grid = sorted({x for points in series.values() for x, _, _ in points})
        ax.plot(grid, grid, color="grey", linestyle="--", label="M = K")
    if log_x:
        ax.set_xscale("log", base=2)
        if diagonal:  # M against K: both axes span powers of two
            ax.set_yscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)
