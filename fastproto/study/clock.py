"""M / K and nearest-neighbour p5 against the prototype decay clock, one line per run.

The decay clock of a step is the sum, over the steps so far, of lr x the weight decay applied to
the prototype matrix: how far decoupled weight decay has shrunk the prototypes towards 0
(each step multiplies them by 1 - lr x wd). It puts runs of different lengths, learning rates
and decay schedules on one axis: if the shrinkage drives the collapse, their curves fall
together there where against the step they would not. Lines are coloured by KoLeo-proto
lambda (0 or > 0); runs whose records hold no clock (written before it was logged) are left
out and counted, and so are runs whose prototypes are fitted by EM (head.prototypes = "em"):
they take no decay, so the clock says nothing about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastproto.study import history as hist
from fastproto.study.collapse import COLLAPSED_RATIO
from fastproto.study.plots import Curve, Panel, panel_lines

CLOCK = "prototype_decay_clock"
DUPLICATE_EPS = 0.025  # cosine distance under which two prototypes are one (paper 1)
P5_FLOOR = 1e-4  # a p5 of 0 (duplicates) is drawn here: a log axis has no 0
FIGURE = "decay_clock.png"


def lambda_group(record: dict[str, Any]) -> str:
    """The colour group of a run: KoLeo-proto off or on."""
    return (
        "KoLeo-proto lambda = 0"
        if hist.koleo_proto_lambda(record) == 0.0
        else ("KoLeo-proto lambda > 0")
    )


def clock_curves(record: dict[str, Any], k: int) -> tuple[Curve, Curve] | None:
    """(M / K, nn p5) against the clock over the epoch rows that have all three; None if none."""
    points = [
        (c, r, p)
        for row in hist.history(record)
        if (c := hist.number(row.get(CLOCK))) is not None
        and (r := hist.ratio(row, k)) is not None
        and (p := hist.quantile(row, "p5")) is not None
    ]
    if not points:
        return None
    group = lambda_group(record)
    clocks = [c for c, _, _ in points]
    ratios = [r for _, r, _ in points]
    p5s = [max(p, P5_FLOOR) for _, _, p in points]
    return (group, clocks, ratios), (group, clocks, p5s)


def _fitted_by_em(record: dict[str, Any]) -> bool:
    return record.get("config", {}).get("head", {}).get("prototypes") == "em"


def clock_section(records: list[dict[str, Any]], figures: Path) -> list[str]:
    """Markdown lines and the figure figures/FIGURE (when at least one run has a clock)."""
    ok = [(r, k) for r in records if (k := hist.prototype_count(r)) is not None]
    em = [r for r, _ in ok if _fitted_by_em(r)]
    ok = [(r, k) for r, k in ok if not _fitted_by_em(r)]
    curves = [c for c in (clock_curves(r, k) for r, k in ok) if c is not None]
    lines = [
        "## Prototypes against the decay clock",
        "",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
    ]
    lines += [
        f"{len(curves)} of {len(ok)} finished runs with decayed prototypes record the clock "
        f"({len(em)} with EM prototypes left out).",
        "",
    ]
    if not curves:
        return lines
    ratio = Panel(
        "M / K",
        [c[0] for c in curves],
        level=COLLAPSED_RATIO,
        level_label=f"M / K = {COLLAPSED_RATIO:g}",
    )
    p5 = Panel(
        f"nn distance p5 (0 drawn at {P5_FLOOR:g})",
        [c[1] for c in curves],
        log_y=True,
        level=DUPLICATE_EPS,
        level_label=f"eps = {DUPLICATE_EPS:g}",
    )
    xlabel = "prototype decay clock (sum of lr x prototype weight decay)"
    panel_lines([ratio, p5], figures / FIGURE, xlabel, "prototypes against the decay clock")
    return lines + [f"![M / K and nn p5 against the decay clock](figures/{FIGURE})", ""]
