"""The partial-collapse questions, answered only from runs whose prototypes reached their end state.

A run stopped while its prototypes are still closing in on each other shows a state on the
way, not where training leads: its M / K can read 1 although the nearest-neighbour distances
are still falling. How far the prototypes travelled from initialisation cannot tell the two
apart (a run can move far and still be on its way), so every run is first classed by whether
its nearest-neighbour distances settled, and the two questions are decided on the
informative runs alone. The rules, fixed before any run:

- informative: the prototypes reached their end state. Either the run collapsed (final
  M / K <= COLLAPSED_RATIO), or its nearest-neighbour p5 (the 5th percentile over prototypes
  of the cosine distance to the nearest other prototype) settled: over the epoch rows at or
  after END_FROM_PCT % of the last step (the last END_WINDOW_PCT % of the run; at least two
  rows), the largest relative change of p5 against its last value,
  max |p5_i - p5_last| / p5_last, is < END_CHANGE_PCT %. The mean cosine distance of the
  prototypes from their initial values (moved) is reported beside it and decides nothing.
- Q1, partial collapse without KoLeo-proto (lambda = 0): SEEN when at some K the mean M / K
  of informative baseline runs is <= SEEN_RATIO; NOT SEEN when informative baseline runs exist
  at >= 2 values of K and every one keeps M / K > KEPT_RATIO; otherwise NOT DECIDED.
- Q2, KoLeo-proto (lambda > 0) prevents it: only when Q1 is SEEN; PREVENTS when at every K
  where the baseline collapsed, informative KoLeo-proto runs keep mean M / K >= PREVENT_RATIO.
  When Q1 is NOT SEEN there is nothing to prevent and Q2 says so.
Beside them: how close the nearest pair came (the p0 and p5 nearest-neighbour distances),
the prototypes the data uses (used, effective; fastproto.train.usage), and kNN / linear probe
of KoLeo-proto against the baseline per K.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from fastproto.study import history as hist

END_WINDOW = 0.2  # the end state is judged over this last fraction of the run's steps
END_CHANGE = 0.1  # largest relative change of nn p5 over that window, against its last value
KNN_LAMBDA = 0.1  # the KoLeo-proto weight of the per-K kNN table; other weights: the lambda table
COLLAPSED_RATIO = 0.9  # final M / K at or below this: collapsed, an end state in itself
SEEN_RATIO = 0.9
KEPT_RATIO = 0.99
PREVENT_RATIO = 0.95


def p5_change(rows: hist.History) -> float | None:
    """max |p5_i - p5_last| / p5_last over the rows in the last END_WINDOW of the steps;
    None when fewer than two rows there have a p5 (the window cannot show a trend)."""
    pairs = [
        (s, p)
        for s, row in zip(hist.row_steps(rows), rows, strict=True)
        if (p := hist.quantile(row, "p5")) is not None
    ]
    if not pairs:
        return None
    start = (1.0 - END_WINDOW) * pairs[-1][0]
    window = [p for s, p in pairs if s >= start - 1e-9 * abs(start)]
    if len(window) < 2:
        return None
    end = window[-1]
    if end <= 0.0:  # every duplicate's distance is 0: settled only if it stayed there
        return 0.0 if all(p == end for p in window) else math.inf
    return max(abs(p - end) for p in window) / end


def reached_end_state(rows: hist.History, final_ratio: float) -> bool:
    """The informativeness rule: collapsed, or the nearest-neighbour p5 settled."""
    if final_ratio <= COLLAPSED_RATIO:
        return True
    change = p5_change(rows)
    return change is not None and change < END_CHANGE


def run_summary(record: dict[str, Any]) -> dict[str, Any] | None:
    """The fields the questions need from one ok record; None when they are missing."""
    k = hist.prototype_count(record)
    if k is None:
        return None
    metrics = record["metrics"]
    rows, ratio = hist.history(record), metrics["unique_prototypes"] / k
    quantiles = metrics.get("nn_distance_quantiles") or {}
    return {
        "run_id": record["run_id"],
        "K": k,
        "lam": hist.koleo_proto_lambda(record),
        "seed": record.get("settings", {}).get("seed", 0),
        "ratio": ratio,
        "M": metrics["unique_prototypes"],
        "knn": metrics["knn_top1"]["20"],
        "linear": metrics.get("linear_top1"),
        "movement": hist.number(metrics.get("prototype_movement")),
        **{q: hist.number(quantiles.get(q)) for q in ("p0", "p5", "p50")},
        "m_epochs": [e.get("unique_prototypes") for e in rows],
        "p5_change": p5_change(rows),
        "informative": reached_end_state(rows, ratio),
        "used": hist.last(rows, "used_prototypes"),
        "effective": hist.last(rows, "effective_prototypes"),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _by_k(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["K"]].append(run)
    return dict(sorted(groups.items()))


def question_one(baseline: list[dict[str, Any]]) -> tuple[str, list[int]]:
    """-> (verdict, the K values at which the baseline collapsed)."""
    by_k = _by_k([r for r in baseline if r["informative"]])
    collapsed = [k for k, rs in by_k.items() if _mean([r["ratio"] for r in rs]) <= SEEN_RATIO]
    if collapsed:
        return "SEEN", collapsed
    if len(by_k) >= 2 and all(r["ratio"] > KEPT_RATIO for rs in by_k.values() for r in rs):
        return "NOT SEEN", []
    return "NOT DECIDED", []


def question_two(regularised: list[dict[str, Any]], collapsed: list[int]) -> str:
    if not collapsed:
        return "NOTHING TO PREVENT"
    by_k = _by_k([r for r in regularised if r["informative"]])
    if any(k not in by_k for k in collapsed):
        return "NOT DECIDED"
    kept = all(_mean([r["ratio"] for r in by_k[k]]) >= PREVENT_RATIO for k in collapsed)
    return "PREVENTS" if kept else "DOES NOT PREVENT"


def _table(runs: list[dict[str, Any]]) -> list[str]:
    window = f"{100 * END_WINDOW:g} %"
    lines = [
        f"| run | K | lambda | seed | moved | p5 change, last {window} | informative "
        "| M over epochs (first, mid, last) | nn p0 / p5 / p50 | used | effective | kNN | linear |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["K"], r["lam"], r["seed"])):
        m = [v for v in r["m_epochs"] if v is not None]
        path = f"{m[0]}, {m[len(m) // 2]}, {m[-1]}" if m else "-"
        linear = f"{100 * r['linear']:.1f}" if isinstance(r["linear"], float) else "-"
        change = r["p5_change"]
        change_text = "-" if change is None else f"{100 * change:.1f} %"
        lines.append(
            f"| {r['run_id']} | {r['K']} | {r['lam']:g} | {r['seed']} "
            f"| {hist.text(r['movement'])} | {change_text} "
            f"| {'yes' if r['informative'] else 'NO'} | {path} "
            f"| {' / '.join(hist.text(r[q]) for q in ('p0', 'p5', 'p50'))} "
            f"| {hist.text(r['used'], 0)} "
            f"| {hist.text(r['effective'], 1)} | {100 * r['knn']:.1f} | {linear} |"
        )
    return lines


def _knn_lines(baseline: list[dict[str, Any]], regularised: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"| K | kNN baseline | kNN KoLeo-proto {KNN_LAMBDA:g} | NN median baseline "
        f"| NN median KoLeo-proto {KNN_LAMBDA:g} |",
        "|---:|---:|---:|---:|---:|",
    ]
    base_k = _by_k(baseline)
    reg_k = _by_k([r for r in regularised if r["lam"] == KNN_LAMBDA])
    for k in sorted(set(base_k) & set(reg_k)):

        def text(rs: list[dict[str, Any]], key: str, scale: float) -> str:
            values = [scale * r[key] for r in rs if r[key] is not None]
            if not values:
                return "-"
            spread = max(values) - min(values)
            return f"{_mean(values):.2f} (range {spread:.2f}, n {len(values)})"

        lines.append(
            f"| {k} | {text(base_k[k], 'knn', 100)} | {text(reg_k[k], 'knn', 100)} "
            f"| {text(base_k[k], 'p50', 1)} | {text(reg_k[k], 'p50', 1)} |"
        )
    return lines


def rules_text() -> str:
    """The rules of the module docstring with the thresholds written in."""
    text = (__doc__ or "").split("fixed before any run:", 1)[1].split("Beside them", 1)[0]
    values = {
        "END_FROM_PCT": 100 * (1.0 - END_WINDOW),
        "END_WINDOW_PCT": 100 * END_WINDOW,
        "END_CHANGE_PCT": 100 * END_CHANGE,
        "COLLAPSED_RATIO": COLLAPSED_RATIO,
        "PREVENT_RATIO": PREVENT_RATIO,
        "SEEN_RATIO": SEEN_RATIO,
        "KEPT_RATIO": KEPT_RATIO,
    }
    for name, value in values.items():
        text = text.replace(name, f"{value:g}")
    return text.strip()


def collapse_section(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the rules, the two verdicts and the per-run table."""
    runs = [r for r in (run_summary(rec) for rec in records) if r is not None]
    if not runs:
        return ["## Partial collapse", "", "No finished run records its prototypes.", ""]
    baseline = [r for r in runs if r["lam"] == 0.0]
    regularised = [r for r in runs if r["lam"] > 0.0]
    q1, collapsed = question_one(baseline)
    q2 = question_two(regularised, collapsed)
    informative = sum(r["informative"] for r in runs)
    closest = min((r["p0"] for r in runs if r["p0"] is not None), default=None)
    return [
        "## Partial collapse, from runs whose prototypes reached their end state",
        "",
        rules_text(),
        "",
        f"{informative} of {len(runs)} finished runs are informative (collapsed, or nn p5 "
        f"settled to within {100 * END_CHANGE:g} % over the last {100 * END_WINDOW:g} % of "
        "their steps).",
        f"The closest pair of prototypes in any run is at cosine distance {hist.text(closest)} "
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
