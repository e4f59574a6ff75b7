"""Q3 on the EM arm's confirmation runs, under the trend rule fixed before they ran.

The collapse questions' end-state rule (fastproto.study.collapse) asks nn p5 to stay within
END_CHANGE_PCT % of its last value over the last END_WINDOW_PCT % of the steps. The first EM runs at
K = 256 and 1024 never met it, for reasons that are not an approach to collapse: at K = 256 p5
sits inside the 4-6 % of duplicates that form in the first 250 steps (a number near 0 whose
relative change is large), and at K = 1024 over 20000 steps p5 wobbles between 0.09 and 0.17
while M rises. A rule asking only that the prototypes are no longer closing in was therefore
written into docs/results/grid_collapse.toml (commit 244c34a) before fresh seeds of those runs
started, and it is applied to those runs alone (the groups CONFIRMATION_GROUPS):

- a run that collapsed (final M / K <= COLLAPSED_RATIO) reached its end state;
- otherwise it reached it when neither M nor p5 is falling over the last END_WINDOW_PCT % of
  its steps: on least-squares lines through the epoch rows of that window, p5 changes by at
  least P5_TREND_PCT % of its mean there and M by at least M_TREND_PCT % of K.
- Q3 on these runs, at each K where the gradient arm collapsed and a confirmation run exists:
  PREVENTS when the confirmation runs that reached their end state keep mean M / K >=
  PREVENT_RATIO, DOES NOT PREVENT when they keep less, NOT DECIDED when none reached it.
"""

from __future__ import annotations

from typing import Any

from fastproto.study import history as hist
from fastproto.study.collapse import COLLAPSED_RATIO, END_CHANGE, END_WINDOW, PREVENT_RATIO

CONFIRMATION_GROUPS = ("em_long_confirm", "em_confirm")
P5_TREND = -0.10  # p5's fitted change across the window, as a fraction of its mean there
M_TREND = -0.005  # M's fitted change across the window, as a fraction of K


def fitted_change(xs: list[float], ys: list[float]) -> float:
    """The least-squares line's rise from xs[0] to xs[-1] (0 for fewer than two points)."""
    if len(xs) < 2 or xs[-1] == xs[0]:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return slope * (xs[-1] - xs[0])


def trends(rows: hist.History, k: int) -> tuple[float, float] | None:
    """(p5's change / its mean, M's change / K) over the last END_WINDOW of the steps, from the
    rows that have both; None when fewer than two rows fall in the window."""
    points = [
        (s, p, m)
        for s, row in zip(hist.row_steps(rows), rows, strict=True)
        if (p := hist.quantile(row, "p5")) is not None
        and (m := hist.number(row.get("unique_prototypes"))) is not None
    ]
    if not points:
        return None
    start = (1.0 - END_WINDOW) * points[-1][0]
    window = [pt for pt in points if pt[0] >= start - 1e-9 * abs(start)]
    if len(window) < 2:
        return None
    steps = [s for s, _, _ in window]
    p5s, ms = [p for _, p, _ in window], [m for _, _, m in window]
    p5_rise, mean_p5 = fitted_change(steps, p5s), sum(p5s) / len(p5s)
    # p5 >= 0, so a mean of 0 is p5 = 0 throughout: flat
    p5_trend = p5_rise / mean_p5 if mean_p5 > 0 else 0.0
    return p5_trend, fitted_change(steps, ms) / k


def reached_end_state(rows: hist.History, ratio: float, k: int) -> bool:
    """The confirmation rule: collapsed, or neither M nor p5 falling at the end."""
    if ratio <= COLLAPSED_RATIO:
        return True
    found = trends(rows, k)
    return found is not None and found[0] >= P5_TREND and found[1] >= M_TREND


def confirmation_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished records of CONFIRMATION_GROUPS, with K and what the rule reads."""
    runs = []
    for record in records:
        k = hist.prototype_count(record)
        if k is None or not set(record.get("groups") or ()) & set(CONFIRMATION_GROUPS):
            continue
        rows, ratio = hist.history(record), record["metrics"]["unique_prototypes"] / k
        found = trends(rows, k)
        runs.append(
            {
                "run_id": record["run_id"],
                "K": k,
                "seed": record.get("settings", {}).get("seed", 0),
                "steps": hist.row_steps(rows)[-1] if rows else None,
                "ratio": ratio,
                "p5_trend": None if found is None else found[0],
                "m_trend": None if found is None else found[1],
                "end_state": reached_end_state(rows, ratio, k),
            }
        )
    return sorted(runs, key=lambda r: (r["K"], r["seed"]))


def question_three_confirmed(runs: list[dict[str, Any]], collapsed: list[int]) -> str:
    """Q3 on the confirmation runs (module docstring); NOT DECIDED without any."""
    verdicts = []
    for k in collapsed:
        at_k = [r for r in runs if r["K"] == k]
        if not at_k:
            continue
        ended = [r["ratio"] for r in at_k if r["end_state"]]
        if not ended:
            return "NOT DECIDED"
        verdicts.append(sum(ended) / len(ended) >= PREVENT_RATIO)
    if not verdicts:
        return "NOT DECIDED"
    return "PREVENTS" if all(verdicts) else "DOES NOT PREVENT"


def per_k_lines(runs: list[dict[str, Any]], collapsed: list[int]) -> list[str]:
    """One bullet per K of the confirmation runs: how many ended, their mean M / K, the call."""
    lines = []
    for k in sorted({r["K"] for r in runs}):
        at_k = [r for r in runs if r["K"] == k]
        ended = [r["ratio"] for r in at_k if r["end_state"]]
        if k not in collapsed:
            call = "the gradient arm did not collapse here"
        elif not ended:
            call = "not decided"
        else:
            call = "prevents" if sum(ended) / len(ended) >= PREVENT_RATIO else "does not prevent"
        mean = f", mean M / K {sum(ended) / len(ended):.3f}" if ended else ""
        lines.append(
            f"- K = {k}: {len(ended)} of {len(at_k)} runs reached their end state{mean}: {call}"
        )
    return lines


def confirmation_lines(records: list[dict[str, Any]], collapsed: list[int]) -> list[str]:
    """Markdown: the rule, the verdict at the K values it covers, one row per run."""
    runs = confirmation_runs(records)
    if not runs:
        return []
    _, rules = (__doc__ or "").split("\n\n", 1)
    for name, value in {
        "COLLAPSED_RATIO": f"{COLLAPSED_RATIO:g}",
        "END_WINDOW_PCT": f"{100 * END_WINDOW:g}",
        "END_CHANGE_PCT": f"{100 * END_CHANGE:g}",
        "P5_TREND_PCT": f"{100 * P5_TREND:g}",
        "M_TREND_PCT": f"{100 * M_TREND:g}",
        "PREVENT_RATIO": f"{PREVENT_RATIO:g}",
        "CONFIRMATION_GROUPS": ", ".join(CONFIRMATION_GROUPS),
    }.items():
        rules = rules.replace(name, value)
    covered = sorted({r["K"] for r in runs} & set(collapsed))
    lines = [
        "### Q3 on the confirmation runs",
        "",
        rules.strip(),
        "",
        f"**Q3 on the confirmation runs (K = {covered}): "
        f"{question_three_confirmed(runs, collapsed)}**",
        "",
        *per_k_lines(runs, collapsed),
        "",
        "| run | K | seed | steps | M / K | p5 trend | M trend (of K) | end state |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        p5 = "-" if r["p5_trend"] is None else f"{100 * r['p5_trend']:+.1f} %"
        m = "-" if r["m_trend"] is None else f"{100 * r['m_trend']:+.2f} %"
        lines.append(
            f"| {r['run_id']} | {r['K']} | {r['seed']} | {hist.text(r['steps'], 0)} "
            f"| {r['ratio']:.3f} | {p5} | {m} | {'yes' if r['end_state'] else 'NO'} |"
        )
    return [*lines, ""]
