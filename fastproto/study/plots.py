"""PNG figures of the study report, drawn with matplotlib's Agg backend (no display needed).

`line_plot` takes prepared series: {label: [(x, mean, std), ...]} with x increasing; error bars
are the standard deviation over seeds (0 with a single seed). `panel_lines` draws one line per
run in side-by-side panels that share their x axis, one colour per group of runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Series = dict[str, list[tuple[float, float, float]]]
Curve = tuple[str, list[float], list[float]]  # (group, xs, ys): one run's line


@dataclass(frozen=True)
class Panel:
    """One subplot of `panel_lines`: its y label, its lines, and an optional reference level."""

    ylabel: str
    curves: list[Curve] = field(default_factory=list)
    log_y: bool = False
    level: float | None = None
    level_label: str = ""


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
    series: Series,
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
    diagonal: bool = False,
) -> Path:
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


def panel_lines(panels: list[Panel], path: Path, xlabel: str, title: str) -> Path:
    """Panels side by side, one line per curve, coloured by group (each group named once)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    groups = sorted({group for panel in panels for group, _, _ in panel.curves})
    colours = {group: f"C{i}" for i, group in enumerate(groups)}
    for ax, panel in zip(axes[0], panels, strict=True):
        named: set[str] = set()
        for group, xs, ys in panel.curves:
            label = None if group in named else group
            named.add(group)
            ax.plot(xs, ys, color=colours[group], marker=".", linewidth=1, label=label)
        if panel.level is not None:
            ax.axhline(panel.level, color="grey", linestyle="--", label=panel.level_label)
        if panel.log_y:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=panel.ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
