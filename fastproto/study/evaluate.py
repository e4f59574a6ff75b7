"""Evaluate one finished study run from its newest checkpoint, extracting features once.

`fastproto.train.reports.evaluate_checkpoint` rebuilds the teacher and the features for every
protocol; a sweep evaluates many runs, so this adapter loads the teacher once, takes the teacher
CLS features of both splits ([N, E]) once, and runs on them

- weighted kNN (k in eval.knn_k, temperature 0.07), the linear probe and few-shot regression;
- unique prototypes M of the CLS head at eps (paper 1, def. 4.1), the redundancy histogram
  (count of unique prototypes per redundancy factor r_m) and the largest duplicate set;
- the share of data by redundancy factor (paper 1, fig. 1): the val CLS features go through the
  head (y = h(x) / ||h(x)||, [N, D]) and each sample is assigned to the best of the M
  representatives, with the vMF term log C_D(||w_k|| / tau) added for vmf heads
  (tau = method.teacher_temp).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastproto.models import head_is_vmf, head_prototypes


def _share(teacher: Any, val_features: torch.Tensor, report: Any, temp: float) -> dict[str, float]:
    from fastproto.prototypes import data_share_by_redundancy
    from fastproto.vmf import log_normalizer

    head = teacher.cls_head
    weights = head_prototypes(head).detach().float()  # [K, D]
    with torch.no_grad():
        y = head(val_features.to(weights.device).float())  # [N, D], unit rows
    bias = None
    if head_is_vmf(head):
        bias = log_normalizer(weights.norm(dim=1).double() / temp, weights.shape[1]).float()
    share = data_share_by_redundancy(y, weights, report, bias=bias, temperature=temp)
    return {str(r): s for r, s in share.items()}


def _prototype_metrics(teacher: Any, eps: float) -> tuple[dict[str, Any], Any]:
    from fastproto.prototypes import unique_prototypes

    weights = head_prototypes(teacher.cls_head).detach().float().cpu()  # [K, D]
    report = unique_prototypes(weights, eps=eps)
    histogram = torch.bincount(report.redundancy.long()).tolist()
    metrics = {
        "eps": eps,
        "num_prototypes": int(weights.shape[0]),
        "unique_prototypes": int(report.num_unique),
        "largest_duplicate_set": int(report.largest_duplicate_set),
        "redundancy_histogram": {str(r): n for r, n in enumerate(histogram) if n},
    }
    return metrics, report


def _health_history(run_dir: Path) -> dict[str, Any]:
    """Per-epoch M, prototype movement and nearest-neighbour quantiles from metrics.jsonl."""
    from fastproto.train.metrics import read_metrics

    epochs = read_metrics(run_dir / "metrics.jsonl", "epoch")
    keys = ("epoch", "unique_prototypes", "prototype_movement", "nn_distance_quantiles")
    history = [{k: row[k] for k in keys if k in row} for row in epochs]
    last = history[-1] if history else {}
    return {
        "epochs": history,
        "prototype_movement": last.get("prototype_movement"),
        "nn_distance_quantiles": last.get("nn_distance_quantiles"),
    }


def evaluate_run_dir(
    run_dir: Path, data_path: str, device: torch.device, options: dict[str, Any]
) -> dict[str, Any]:
    """Metrics of the newest checkpoint in `run_dir` (options: the grid's [eval] table)."""
    from fastproto import evaluation
    from fastproto.train.checkpoint import latest_checkpoint
    from fastproto.train.features import network_from_checkpoint, split_features

    path = latest_checkpoint(run_dir)
    if path is None:
        raise ValueError(f"no checkpoint in {run_dir} to evaluate; the training did not save one")
    config, teacher, saved = network_from_checkpoint(path, device)
    train = split_features(teacher, config, data_path, "train", device)  # [N, E], [N]
    val = split_features(teacher, config, data_path, "val", device)
    knn = evaluation.knn_classify(*train, *val, k=tuple(options["knn_k"]), temperature=0.07)
    metrics: dict[str, Any] = {
        "checkpoint": path.name,
        "step": int(saved["step"]),  # type: ignore[call-overload]
        "knn_top1": {str(k): v for k, v in knn.items()},
    }
    if options["linear"]:
        metrics["linear_top1"] = evaluation.linear_probe(
            *train, *val, epochs=int(options["linear_epochs"])
        )
    if options["fewshot"]:
        shots = evaluation.few_shot(*train, *val, shots=tuple(options["fewshot_shots"]))
        metrics["fewshot"] = {str(n): v for n, v in shots.items()}
    protos, report = _prototype_metrics(teacher, float(options["eps"]))
    metrics |= protos | _health_history(run_dir)
    metrics["data_share_by_redundancy"] = _share(
        teacher, val[0], report, config.method.teacher_temp
    )
    return metrics
