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
  (tau = method.teacher_temp);
- the training's per-epoch prototype history from metrics.jsonl: M, K, nearest-neighbour
  quantiles, used and effective prototypes, and the prototype decay clock (sum of lr x
  prototype weight decay) at each epoch's step, read from the step row of that step or the
  nearest one before it. The decay settings are not copied here: the run's record holds its
  whole config (optim.weight_decay(_end), optim.prototype_weight_decay(_end)), which
  fastproto.study.mechanism resolves.
"""

from __future__ import annotations

import bisect
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


# per epoch row of metrics.jsonl, what a record keeps (not the redundancy histogram: K numbers)
HISTORY_KEYS = (
    "step",
    "epoch",
    "unique_prototypes",
    "num_prototypes",
    "largest_duplicate_set",
    "prototype_movement",
    "nn_distance_quantiles",
    "nn_distance_below_eps",
    "used_prototypes",
    "effective_prototypes",
)
CLOCK = "prototype_decay_clock"


def clock_table(step_rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, prototype decay clock) of the step rows that carry it, by step; a step logged
    twice (a resumed run repeats the steps after its checkpoint) keeps its later row."""
    clocks = {
        int(row["step"]): float(row[CLOCK])
        for row in step_rows
        if isinstance(row.get(CLOCK), int | float) and isinstance(row.get("step"), int)
    }
    return sorted(clocks.items())


def clock_at(table: list[tuple[int, float]], step: Any) -> float | None:
    """The clock of the step row at `step`, else of the nearest one before it; None if none."""
    if not isinstance(step, int | float):
        return None
    i = bisect.bisect_right(table, step, key=lambda pair: pair[0])
    return table[i - 1][1] if i else None


def health_history(run_dir: Path, final_step: int | None = None) -> dict[str, Any]:
    """Per-epoch prototype health from metrics.jsonl (HISTORY_KEYS and the decay clock at
    each epoch's step), the last epoch's values, and the clock at `final_step`."""
    from fastproto.train.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    table = clock_table(read_metrics(path, "step"))
    history = []
    for row in read_metrics(path, "epoch"):
        kept = {k: row[k] for k in HISTORY_KEYS if k in row}
        if (clock := clock_at(table, row.get("step"))) is not None:
            kept[CLOCK] = clock
        history.append(kept)
    last = history[-1] if history else {}
    out = {"epochs": history, CLOCK: clock_at(table, final_step)}
    for key in (
        "prototype_movement",
        "nn_distance_quantiles",
        "used_prototypes",
        "effective_prototypes",
    ):
        out[key] = last.get(key)
    return out


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
    metrics |= protos | health_history(run_dir, metrics["step"])
    metrics["data_share_by_redundancy"] = _share(
        teacher, val[0], report, config.method.teacher_temp
    )
    return metrics
