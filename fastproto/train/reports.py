"""What `fastproto eval` and `fastproto prototypes` compute from a checkpoint.

eval: teacher CLS features of the train and val splits, then weighted kNN (k 10/20, T 0.07),
a linear probe, or few-shot logistic regression (1/2/5 shots); results are JSON.
prototypes: M unique prototypes at eps, redundancy factors r_m, the largest duplicate set,
and two PNGs (M against eps; histogram of r_m), drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fastproto.models import head_prototypes

EVAL_KINDS = ("knn", "linear", "fewshot")
EPS_GRID = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3)


def evaluate_checkpoint(
    kind: str, checkpoint: Path, data: str, backend: str | None, device: torch.device
) -> dict[str, Any]:
    """Evaluate the teacher of `checkpoint` on the data at `data` with the protocol `kind`."""
    from fastproto import evaluation
    from fastproto.train.features import network_from_checkpoint, split_features

    if kind not in EVAL_KINDS:
        raise ValueError(f"unknown evaluation {kind!r}; choose one of {EVAL_KINDS}")
    config, teacher, saved = network_from_checkpoint(checkpoint, device)
    if backend:
        config.data.backend = backend
    train = split_features(teacher, config, data, "train", device)
    val = split_features(teacher, config, data, "val", device)
    result: Any
    if kind == "knn":
        knn = evaluation.knn_classify(*train, *val, k=(10, 20), temperature=0.07)
        result = {f"top1_k{k}": v for k, v in knn.items()}
    elif kind == "linear":
        result = {"top1": evaluation.linear_probe(*train, *val)}
    else:
        shots = evaluation.few_shot(*train, *val)
        result = {f"{n}_shot": v for n, v in shots.items()}
    return {
        "eval": kind,
        "checkpoint": str(checkpoint),
        "step": saved["step"],
        "data": data,
        "result": result,
    }


def describe_result(kind: str, result: dict[str, Any]) -> str:
    """One readable line of an evaluation result, accuracies in percent."""
    if kind == "fewshot":
        parts = [f"{n}: {100 * v['mean']:.1f}% +- {100 * v['std']:.1f}" for n, v in result.items()]
    else:
        names = {"top1": "top-1"} | {f"top1_k{k}": f"k={k}" for k in (10, 20)}
        parts = [f"{names.get(n, n)}: {100 * v:.1f}%" for n, v in result.items()]
    label = {"knn": "kNN top-1", "linear": "linear probe", "fewshot": "few-shot top-1"}[kind]
    return f"{label}: " + ", ".join(parts)


def prototype_report(checkpoint: Path, eps: float = 0.025) -> dict[str, Any]:
    """Unique prototypes of the teacher's CLS head (and patch head when separate)."""
    from fastproto.prototypes import unique_prototypes, unique_prototypes_curve
    from fastproto.train.features import network_from_checkpoint

    config, teacher, saved = network_from_checkpoint(checkpoint, torch.device("cpu"))
    heads = {"cls": teacher.cls_head} | ({} if teacher.shared else {"patch": teacher.patch_head})
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "step": saved["step"], "eps": eps}
    for name, head in heads.items():
        weights = head_prototypes(head).detach().float()
        report = unique_prototypes(weights, eps=eps)
        out[name] = {
            "num_prototypes": int(weights.shape[0]),
            "unique": report.num_unique,
            "largest_duplicate_set": report.largest_duplicate_set,
            "redundancy": report.redundancy.tolist(),
            "eps_grid": list(EPS_GRID),
            "unique_by_eps": unique_prototypes_curve(weights, EPS_GRID),
        }
    return out


def plot_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Two PNGs per head: M against eps, and the histogram of redundancy factors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in ("cls", "patch"):
        if name not in report:
            continue
        head = report[name]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx(head["eps_grid"], head["unique_by_eps"], marker="o")
        ax.axhline(head["num_prototypes"], color="grey", linestyle="--", label="K")
        ax.set(xlabel="eps (cosine distance)", ylabel="unique prototypes M", title=f"{name} head")
        ax.legend()
        written.append(_save(fig, out_dir / f"unique_vs_eps_{name}.png"))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(head["redundancy"], bins=50, log=True)
        ax.set(
            xlabel="redundancy factor r_m",
            ylabel="unique prototypes",
            title=f"{name} head, eps={report['eps']}",
        )
        written.append(_save(fig, out_dir / f"redundancy_{name}.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path
