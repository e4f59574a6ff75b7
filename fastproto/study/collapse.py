"""The partial-collapse questions, answered only from runs whose prototypes moved.

A run whose prototypes barely left their random initialisation cannot show collapse: random
unit vectors in 64-D sit at cosine distance ~0.5 from each other, far from the eps = 0.025 of
a duplicate. So every run is first classed by how far its prototypes travelled, and the two
questions are decided on the informative runs alone. The rules, fixed before any run:

- informative: mean cosine distance of the prototypes from their initial values, at the end
  of training, >= MIN_MOVEMENT.
- Q1, partial collapse without KoLeo-proto (lambda = 0): SEEN when at some K the mean M / K
  of informative baseline runs is <= SEEN_RATIO; NOT SEEN when informative baseline runs exist
  at >= 2 values of K and every one keeps M / K > KEPT_RATIO; otherwise NOT DECIDED.
- Q2, KoLeo-proto (lambda > 0) prevents it: only when Q1 is SEEN; PREVENTS when at every K
  where the baseline collapsed, informative KoLeo-proto runs keep mean M / K >= PREVENT_RATIO.
  When Q1 is NOT SEEN there is nothing to prevent and Q2 says so.
Beside them: how close the nearest pair came (the p0 and p5 nearest-neighbour distances),
and kNN / linear probe of KoLeo-proto against the baseline per K.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

MIN_MOVEMENT = 0.1
SEEN_RATIO = 0.9
KEPT_RATIO = 0.99
PREVENT_RATIO = 0.95


def _run(record: dict[str, Any]) -> dict[str, Any] | None:
    """The fields the questions need from one ok record; None when they are missing."""
    metrics, settings = record.get("metrics", {}), record.get("settings", {})
    movement = metrics.get("prototype_movement")
    if record.get("status") != "ok" or not isinstance(movement, int | float):
        return None
    quantiles = metrics.get("nn_distance_quantiles") or {}
    return {
        "run_id": record["run_id"], "K": int(metrics["num_prototypes"]),
        "lam": float(settings.get("koleo_lambda", 0.0)), "seed": settings.get("seed", 0),
        "ratio": metrics["unique_prototypes"] / metrics["num_prototypes"],
        "M": metrics["unique_prototypes"], "knn": metrics["knn_top1"]["20"],
        "linear": metrics.get("linear_top1"), "movement": float(movement),
        "p0": quantiles.get("p0", math.nan), "p5": quantiles.get("p5", math.nan),
        "p50": quantiles.get("p50", math.nan),
        "m_epochs": [e.get("unique_prototypes") for e in metrics.get("epochs", [])],
    }  # fmt: skip


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _by_k(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["K"]].append(run)
    return dict(sorted(groups.items()))


def question_one(baseline: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """-> (verdict, the K values at which the baseline collapsed)."""
    by_k = _by_k([r for r in baseline if r["movement"] >= MIN_MOVEMENT])
    collapsed = [k for k, rs in by_k.items() if _mean([r["ratio"] for r in rs]) <= SEEN_RATIO]
    if collapsed:
        return "SEEN", collapsed
    if len(by_k) >= 2 and all(r["ratio"] > KEPT_RATIO for rs in by_k.values() for r in rs):
        return "NOT SEEN", []
    return "NOT DECIDED", []


def question_two(regularised: list[dict[str, Any]], collapsed: list[int]) -> str:
    if not collapsed:
        return "NOTHING TO PREVENT"
    by_k = _by_k([r for r in regularised if r["movement"] >= MIN_MOVEMENT])
    if any(k not in by_k for k in collapsed):
        return "NOT DECIDED"
    kept = all(_mean([r["ratio"] for r in by_k[k]]) >= PREVENT_RATIO for k in collapsed)
    return "PREVENTS" if kept else "DOES NOT PREVENT"


def _table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| run | K | lambda | seed | moved | informative | M over epochs (first, mid, last) "
        "| nn p0 / p5 / p50 | kNN | linear |",
        "|---|---:|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["K"], r["lam"], r["seed"])):
        m = [v for v in r["m_epochs"] if v is not None]
        path = f"{m[0]}, {m[len(m) // 2]}, {m[-1]}" if m else "-"
        linear = f"{100 * r['linear']:.1f}" if isinstance(r["linear"], float) else "-"
        lines.append(
            f"| {r['run_id']} | {r['K']} | {r['lam']:g} | {r['seed']} | {r['movement']:.3f} "
            f"| {'yes' if r['movement'] >= MIN_MOVEMENT else 'NO'} | {path} "
            f"| {r['p0']:.3f} / {r['p5']:.3f} / {r['p50']:.3f} | {100 * r['knn']:.1f} "
            f"| {linear} |"
        )
    return lines


def _knn_lines(baseline: list[dict[str, Any]], regularised: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| K | kNN baseline | kNN KoLeo-proto | NN median baseline | NN median KoLeo-proto |",
        "|---:|---:|---:|---:|---:|",
    ]
    base_k, reg_k = _by_k(baseline), _by_k(regularised)
    for k in sorted(set(base_k) & set(reg_k)):

        def text(rs: list[dict[str, Any]], key: str, scale: float) -> str:
            values = [scale * r[key] for r in rs]
            spread = max(values) - min(values)
            return f"{_mean(values):.2f} (range {spread:.2f}, n {len(values)})"

        lines.append(
            f"| {k} | {text(base_k[k], 'knn', 100)} | {text(reg_k[k], 'knn', 100)} "
            f"| {text(base_k[k], 'p50', 1)} | {text(reg_k[k], 'p50', 1)} |"
        )
    return lines


def _rules_text() -> str:
    """The rules of the module docstring with the thresholds written in."""
    text = (__doc__ or "").split("fixed before any run:", 1)[1].split("Beside them", 1)[0]
    for name, value in (("MIN_MOVEMENT", MIN_MOVEMENT), ("SEEN_RATIO", SEEN_RATIO),
                        ("KEPT_RATIO", KEPT_RATIO), ("PREVENT_RATIO", PREVENT_RATIO)):  # fmt: skip
        text = text.replace(name, f"{value:g}")
    return text.strip()


def collapse_section(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the rules, the per-run table and the two verdicts."""
    runs = [r for r in (_run(rec) for rec in records) if r is not None]
    if not runs:
        return ["## Partial collapse", "", "No finished run records prototype movement.", ""]
    baseline = [r for r in runs if r["lam"] == 0.0]
    regularised = [r for r in runs if r["lam"] > 0.0]
    q1, collapsed = question_one(baseline)
    q2 = question_two(regularised, collapsed)
    informative = sum(r["movement"] >= MIN_MOVEMENT for r in runs)
    closest = min(r["p0"] for r in runs)
    return [
        "## Partial collapse, from runs whose prototypes moved",
        "",
        _rules_text(),
        "",
        f"{informative} of {len(runs)} finished runs are informative (moved >= {MIN_MOVEMENT}).",
        f"The closest pair of prototypes in any run is at cosine distance {closest:.3f} "
        "(a duplicate is < 0.025).",
        "",
        f"- **Q1, partial collapse without KoLeo-proto: {q1}**"
        + (f" (at K = {collapsed})" if collapsed else ""),
        f"- **Q2, KoLeo-proto prevents it: {q2}**",
        "",
        *_table(runs),
        *_knn_lines(baseline, regularised),
        "",
    ]
