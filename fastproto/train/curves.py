"""One PNG of a run's health over training, from its metrics.jsonl.

Four panels against the step: the total and DINO losses beside log K; the per-sample and the
batch-mean teacher entropy beside log K (a per-sample entropy at log K is uniform collapse, a
batch-mean entropy near 0 is dimensional collapse); the teacher and student logit spread; and
the kNN top-1 of the teacher at the epochs where it was measured, with the run's baselines
(raw pixels, the network at initialisation) as horizontal lines when they are given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastproto.train.metrics import read_metrics


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _knn_series(epochs: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], 100 * r["knn_top1"]["20"]) for r in epochs if "knn_top1" in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_run_curves(
    run_dir: Path, out: Path, num_prototypes: int, baselines: dict[str, float] | None = None
) -> Path:
    """Write the four-panel PNG of `run_dir`/metrics.jsonl to `out`; -> `out`.

    `baselines`: label -> kNN top-1 in percent, drawn as horizontal lines on the kNN panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = read_metrics(run_dir / "metrics.jsonl", "step")
    epochs = read_metrics(run_dir / "metrics.jsonl", "epoch")
    if not steps:
        raise ValueError(f"{run_dir}/metrics.jsonl has no step records to plot")
    log_k = math.log(num_prototypes)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    panels = [
        (axes[0, 0], ("loss", "dino"), "loss (nats)"),
        (axes[0, 1], ("teacher_entropy_per_sample", "teacher_entropy"), "teacher entropy (nats)"),
        (axes[1, 0], ("teacher_logit_std", "student_logit_std"), "logit std over prototypes"),
    ]
    labels = {
        "teacher_entropy": "batch-mean teacher",
        "teacher_entropy_per_sample": "per-sample teacher",
    }
    for ax, keys, title in panels:
        for key in keys:
            ax.plot(*_series(steps, key), label=labels.get(key, key), linewidth=1)
        if ax is not axes[1, 0]:
            ax.axhline(log_k, color="grey", linestyle="--", linewidth=0.8, label="log K")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.plot(*_knn_series(epochs), marker="o", label="teacher (k = 20)")
    for (label, value), style in zip((baselines or {}).items(), (":", "-."), strict=False):
        ax.axhline(value, color="grey", linestyle=style, linewidth=0.9, label=label)
    ax.set_xlabel("step")
    ax.set_title("kNN top-1 on val (%)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{run_dir.name}: K = {num_prototypes}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
