"""The third arm of the collapse study: prototypes fitted by online EM, beside the gradient arms.

Three arms per K, each read from the finished records:

- gradient: the recipe's own runs with KoLeo-proto lambda 0 (W learned by the loss's gradient);
- KoLeo-proto: the same at lambda = KNN_LAMBDA;
- EM: head.prototypes = "em" with the trainer's default choices (kappa fixed at 1 / tau,
  forgetting DEFAULT_FORGETTING, dead components kept, uncentred E-step, probability centring)
  and no regulariser. EM runs that change one of those choices are listed apart.

The rules, fixed before the runs, reuse the collapse questions' (fastproto.study.collapse):

- Q3, decoupled EM prevents the collapse: only where the gradient arm collapsed (Q1's K
  values). PREVENTS when at every such K the informative EM runs keep mean M / K >=
  PREVENT_RATIO; DOES NOT PREVENT when at one of them they do not; NOT DECIDED when some such
  K has no informative EM run. EM runs longer than the recipe's count here (they were added
  where the recipe-length runs had not reached their end state).
- Q4, EM's representation against the gradient arm, per K and run length with runs in both:
  the difference of the mean kNN (k = 20) counts only beyond the seed spread, the larger of
  the two arms' kNN ranges (at least SPREAD_FLOOR points, since one seed shows no spread):
  BETTER or WORSE at every such K, else NO DIFFERENCE BEYOND THE SEED SPREAD, or MIXED with
  the K of each verdict.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from fastproto.study import history as hist
from fastproto.study.collapse import (
    KNN_LAMBDA,
    PREVENT_RATIO,
    question_one,
    run_summary,
)
from fastproto.study.confirm import confirmation_lines
from fastproto.study.plots import Panel, panel_lines

DEFAULT_FORGETTING = 0.99
SPREAD_FLOOR = 1.0  # kNN points: the smallest seed spread a difference must beat
FIGURE = "em_arm.png"
ARMS = ("gradient", f"KoLeo-proto {KNN_LAMBDA:g}", "EM")


def em_choices(record: dict[str, Any], usual_temp: float | None = None) -> list[str]:
    """How an EM run departs from the trainer's default choices ([] for the EM arm itself);
    with `usual_temp`, a teacher temperature other than it is a departure too."""
    config = record.get("config", {})
    head, method = config.get("head", {}), config.get("method", {})
    found = []
    if head.get("em_concentration", "fitted") != "fixed":
        found.append("kappa fitted")
    if head.get("em_forgetting", DEFAULT_FORGETTING) != DEFAULT_FORGETTING:
        found.append(f"forgetting {head['em_forgetting']:g}")
    if head.get("em_dead_policy", "keep") != "keep":
        found.append(f"dead {head['em_dead_policy']}")
    if head.get("em_estep", "uncentred") != "uncentred":
        found.append(f"{head['em_estep']} E-step")
    if method.get("centering", "probability") != "probability":
        found.append(f"centring {method['centering']}")
    if hist.koleo_proto_lambda(record) != 0.0:
        found.append(f"KoLeo-proto {hist.koleo_proto_lambda(record):g}")
    temp = hist.teacher_temp(record)
    if usual_temp is not None and temp is not None and temp != usual_temp:
        found.append(f"teacher temp {temp:g}")
    return found


def fitted_by_em(record: dict[str, Any]) -> bool:
    return record.get("config", {}).get("head", {}).get("prototypes") == "em"


def epochs(record: dict[str, Any]) -> Any:
    """The run's length in epochs (its resolved config's optim.epochs; None when absent)."""
    return record.get("config", {}).get("optim", {}).get("epochs")


def arm_runs(
    recipe_runs: list[dict[str, Any]], all_records: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """{arm: run summaries}: the gradient arms from the recipe's runs, EM from every record.
    Runs of another length than the recipe's form arms of their own ("EM, N epochs", and
    "gradient, N epochs" for the other runs of that length by their KoLeo-proto lambda)."""
    summaries = [s for s in (run_summary(r) for r in recipe_runs) if s is not None]
    lengths = Counter(epochs(r) for r in recipe_runs)
    recipe_length = lengths.most_common(1)[0][0] if lengths else None
    usual = hist.usual_teacher_temp(all_records)
    arms: dict[str, list[dict[str, Any]]] = {
        ARMS[0]: [s for s in summaries if s["lam"] == 0.0],
        ARMS[1]: [s for s in summaries if s["lam"] == KNN_LAMBDA],
        ARMS[2]: [],
    }
    for record in all_records:
        length = epochs(record)
        if fitted_by_em(record):
            base = None if em_choices(record, usual) else ARMS[2]
        elif length != recipe_length and hist.teacher_temp(record) == usual:
            lam = hist.koleo_proto_lambda(record)
            base = {0.0: ARMS[0], KNN_LAMBDA: ARMS[1]}.get(lam)
        else:
            base = None  # a recipe run (already in) or an ablation of its own section
        summary = run_summary(record) if base is not None else None
        if base is not None and summary is not None:
            arm = base if length == recipe_length else f"{base}, {length} epochs"
            arms.setdefault(arm, []).append(summary)
    return arms


def em_arm_runs(arms: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every EM run of the arms, whatever its length."""
    return [r for arm, runs in arms.items() if arm.startswith(ARMS[2]) for r in runs]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def question_three(arms: dict[str, list[dict[str, Any]]], collapsed: list[int]) -> str:
    if not collapsed:
        return "NOTHING TO PREVENT"
    em = em_arm_runs(arms)
    kept = []
    for k in collapsed:
        runs = [r for r in em if r["K"] == k and r["informative"]]
        if not runs:
            return "NOT DECIDED"
        kept.append(_mean([r["ratio"] for r in runs]) >= PREVENT_RATIO)
    return "PREVENTS" if all(kept) else "DOES NOT PREVENT"


def knn_difference(base: list[dict[str, Any]], em: list[dict[str, Any]]) -> tuple[float, float]:
    """(mean kNN of EM - mean kNN of the gradient arm, the seed spread), in points."""
    b, e = [100 * r["knn"] for r in base], [100 * r["knn"] for r in em]
    spread = max(max(b) - min(b), max(e) - min(e), SPREAD_FLOOR)
    return _mean(e) - _mean(b), spread


def question_four(arms: dict[str, list[dict[str, Any]]]) -> str:
    """EM against the gradient arm of the same length, per K: see the module docstring."""
    signs: dict[str, int] = {}
    for em_arm in (a for a in arms if a.startswith(ARMS[2])):
        length = em_arm[len(ARMS[2]) :]  # "" or ", N epochs"
        for k in sorted({r["K"] for r in arms[em_arm]}):
            base = [r for r in arms.get(ARMS[0] + length, []) if r["K"] == k]
            em = [r for r in arms[em_arm] if r["K"] == k]
            if base and em:
                diff, spread = knn_difference(base, em)
                signs[f"{k}{length}"] = 0 if abs(diff) <= spread else (1 if diff > 0 else -1)
    if not signs:
        return "NOT DECIDED"
    verdicts = {1: "BETTER", -1: "WORSE", 0: "NO DIFFERENCE BEYOND THE SEED SPREAD"}
    if len(set(signs.values())) == 1:
        return verdicts[next(iter(signs.values()))]
    parts = [
        f"{verdicts[s].lower()} at K = {', '.join(k for k in signs if signs[k] == s)}"
        for s in (1, -1, 0)
        if s in signs.values()
    ]
    return "MIXED: " + "; ".join(parts)


def _cell(runs: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """'mean (a / b / ...)' over the runs, per seed in seed order; '-' when none has it."""
    values = [scale * r[key] for r in sorted(runs, key=lambda r: r["seed"]) if r[key] is not None]
    if not values:
        return "-"
    each = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{_mean(values):.{digits}f} ({each})" if len(values) > 1 else each


def _path(runs: list[dict[str, Any]]) -> str:
    """M over training of each run: (first, mid, last) epoch rows."""
    out = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        m = [v for v in r["m_epochs"] if v is not None]
        out.append(f"{m[0]}, {m[len(m) // 2]}, {m[-1]}" if m else "-")
    return " / ".join(out)


def arm_table(arms: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| K | arm | runs (informative) | M / K | M over training (first, mid, last) | nn p5 "
        "| used | kNN | linear |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for k in sorted({r["K"] for rs in arms.values() for r in rs}):
        for arm, runs in arms.items():
            at_k = [r for r in runs if r["K"] == k]
            if not at_k:
                continue
            lines.append(
                f"| {k} | {arm} | {len(at_k)} ({sum(r['informative'] for r in at_k)}) "
                f"| {_cell(at_k, 'ratio', digits=3)} | {_path(at_k)} "
                f"| {_cell(at_k, 'p5', digits=3)} | {_cell(at_k, 'used', digits=0)} "
                f"| {_cell(at_k, 'knn', 100)} | {_cell(at_k, 'linear', 100)} |"
            )
    return lines


def departures(record: dict[str, Any], usual_temp: float | None) -> list[str]:
    """An EM run's departures from the defaults (em_choices); for a gradient run, its teacher
    temperature when it is not `usual_temp` ([] otherwise: the gradient arm itself)."""
    if fitted_by_em(record):
        return em_choices(record, usual_temp)
    temp = hist.teacher_temp(record)
    if usual_temp is None or temp is None or temp == usual_temp:
        return []
    return ["gradient", f"teacher temp {temp:g}"]


def choices_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per EM run that departs from the default choices, and per gradient run at
    another teacher temperature than most runs."""
    usual = hist.usual_teacher_temp(records)
    picked = [(r, s) for r in records if departures(r, usual) and (s := run_summary(r))]
    if not picked:
        return []
    lines = [
        "",
        "Runs with one choice changed: EM runs beside the arm above, which holds the defaults, "
        "and gradient runs at another teacher temperature (commit: the code that trained, since "
        "the policies for dead components changed with it):",
        "",
        "| run | commit | K | seed | changed | M / K | informative (p5 change) | used | kNN "
        "| linear |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for record, s in sorted(
        picked, key=lambda p: (p[1]["K"], ", ".join(departures(p[0], usual)), p[1]["seed"])
    ):
        change = "-" if s["p5_change"] is None else f"{100 * s['p5_change']:.1f} %"
        linear = hist.text(None if s["linear"] is None else 100 * s["linear"], 1)
        lines.append(
            f"| {s['run_id']} | {str(record.get('commit') or '-')[:7]} | {s['K']} | {s['seed']} "
            f"| {', '.join(departures(record, usual))} "
            f"| {s['ratio']:.3f} | {'yes' if s['informative'] else 'NO'} ({change}) "
            f"| {hist.text(s['used'], 0)} | {100 * s['knn']:.1f} | {linear} |"
        )
    return lines


def _figure(
    arms: dict[str, list[dict[str, Any]]], records: list[dict[str, Any]], path: Path
) -> bool:
    """M / K over the steps, one panel per K, one line per run coloured by arm."""
    by_id = {r.get("run_id"): r for r in records}
    panels = []
    for k in sorted({r["K"] for r in em_arm_runs(arms)}):
        curves = []
        for arm, runs in arms.items():
            for run in (r for r in runs if r["K"] == k and r["run_id"] in by_id):
                rows = hist.history(by_id[run["run_id"]])
                points = [
                    (s, m)
                    for s, row in zip(hist.row_steps(rows), rows, strict=True)
                    if (m := hist.ratio(row, k)) is not None
                ]
                if points:
                    curves.append((arm, [s for s, _ in points], [m for _, m in points]))
        panels.append(
            Panel(
                f"M / K at K = {k}",
                curves,
                level=PREVENT_RATIO,
                level_label=f"M / K = {PREVENT_RATIO:g}",
            )
        )
    if not panels:
        return False
    panel_lines(panels, path, "step", "unique prototypes over training, by arm")
    return True


def _rules_text() -> list[str]:
    """The module docstring's arms and rules, with the constants written in."""
    _, arms, rules = (__doc__ or "").split("\n\n", 2)
    for name, value in {
        "DEFAULT_FORGETTING": DEFAULT_FORGETTING,
        "KNN_LAMBDA": KNN_LAMBDA,
        "PREVENT_RATIO": PREVENT_RATIO,
        "SPREAD_FLOOR": SPREAD_FLOOR,
    }.items():
        arms, rules = arms.replace(name, f"{value:g}"), rules.replace(name, f"{value:g}")
    return [arms.strip(), "", rules.strip()]


def em_arm_section(
    recipe_runs: list[dict[str, Any]], all_records: list[dict[str, Any]], figures: Path
) -> list[str]:
    """Markdown lines: the rules, Q3 and Q4, the per-K arm table, the choices and the figure."""
    arms = arm_runs(recipe_runs, all_records)
    lines = ["## The EM arm: prototypes fitted by online EM, no regulariser", ""]
    if not em_arm_runs(arms):
        return lines + ["No finished run fits its prototypes by EM with the default choices.", ""]
    _, collapsed = question_one(arms[ARMS[0]])
    lines += [
        *_rules_text(),
        "",
        f"- **Q3, decoupled EM prevents the collapse: {question_three(arms, collapsed)}**"
        + (f" (where the gradient arm collapsed: K = {collapsed})" if collapsed else ""),
        f"- **Q4, EM's kNN against the gradient arm: {question_four(arms)}**",
        "",
        "Cells: the mean over seeds, then each seed's value in seed order.",
        "",
        *arm_table(arms),
        "",
        *confirmation_lines(all_records, collapsed),
        *choices_table(all_records),
        "",
    ]
    if _figure(arms, all_records, figures / FIGURE):
        lines += [f"![M / K over training, by arm](figures/{FIGURE})", ""]
    return lines
