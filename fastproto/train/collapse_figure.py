"""One PNG of the collapse demo: both arms' prototypes over training, and what they learned.

Four panels: M / K (unique prototypes at eps 0.025 over all K) against the step; the
nearest-neighbour cosine distance quantiles p5 and p50 against the step (log scale: a
collapsing run falls through eps = 0.025 by decades); the used and the effective prototypes
(fastproto.train.usage) over K against the step; and the kNN top-1 (k = 20) of each trained
teacher beside the raw pixels and the network at initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastproto.train.metrics import read_metrics

EPS = 0.025  # paper 1's duplicate threshold, drawn on the distance panel


def _epoch_series(rows: list[dict[str, Any]], value: Any) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], value(r)) for r in rows]
    kept = [(s, v) for s, v in pairs if v is not None]
    return [s for s, _ in kept], [float(v) for _, v in kept]


def _quantile(name: str) -> Any:
    return lambda r: r.get("nn_distance_quantiles", {}).get(name)


def _share(key: str) -> Any:
    return lambda r: r[key] / r["num_prototypes"] if key in r else None


def plot_arms(run_dirs: dict[str, Path], summary: dict[str, Any], out: Path) -> Path:
    """Write the four-panel PNG for the arms `run_dirs` (name -> run directory) and the demo's
    `summary` (its kNN numbers) to `out`; -> `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    colours = dict(zip(run_dirs, ("tab:red", "tab:blue"), strict=False))
    for name, run_dir in run_dirs.items():
        rows = read_metrics(run_dir / "metrics.jsonl", "epoch")
        c = colours[name]
        axes[0, 0].plot(*_epoch_series(rows, _share("unique_prototypes")), color=c, label=name)
        for q, style in (("p5", "-"), ("p50", "--")):
            series = _epoch_series(rows, _quantile(q))
            axes[0, 1].plot(*series, color=c, linestyle=style, label=f"{name} {q}")
        for key, style in (("used_prototypes", "-"), ("effective_prototypes", ":")):
            series = _epoch_series(rows, _share(key))
            axes[1, 0].plot(*series, color=c, linestyle=style, label=f"{name}, {key[:-11]}")
    axes[0, 0].set_title("unique prototypes M / K (eps 0.025)")
    axes[0, 0].set_ylim(0, 1.05)
    axes[0, 1].axhline(EPS, color="grey", linestyle=":", linewidth=0.9, label="eps 0.025")
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_title("nearest-neighbour cosine distance")
    axes[1, 0].set_title("used (arg-max) and effective (exp H) prototypes / K")
    axes[1, 0].set_ylim(0, 1.05)
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    _knn_bars(axes[1, 1], summary, list(run_dirs), colours)
    fig.suptitle("Partial prototype collapse without KoLeo-proto, and with it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _knn_bars(ax: Any, summary: dict[str, Any], arms: list[str], colours: dict[str, str]) -> None:
    labels = ["raw pixels", "at init", *arms]
    values = [
        100 * summary["knn_top1_raw_pixels"]["20"],
        100 * summary["knn_top1_at_init"]["20"],
        *(100 * summary[name]["knn_top1"]["20"] for name in arms),
    ]
    bars = ax.bar(labels, values, color=["grey", "lightgrey", *(colours[n] for n in arms)])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylim(min(values) - 10, 100)
    ax.set_title("kNN top-1 on val (k = 20), %")
