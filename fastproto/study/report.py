"""`fastproto report DIR`: a markdown report with PNG plots, built from the run JSON files alone.

Sections (each on the slice of runs that varies only the settings it is about, the others held
at a reference value that the section states; see `results.reference_slice`):

- partial collapse: the decision rules, then the verdicts on informative runs and the per-run
  table (fastproto.study.collapse);
- M / K and nearest-neighbour p5 of every run against the prototype decay clock
  (fastproto.study.clock);
- the decay ablation table, when runs differ by which parameters are decayed
  (fastproto.study.mechanism);
- M against K per regulariser (paper 1, fig. 3 left) and kNN against K (fig. 3 right);
- the KoLeo-proto lambda ablation (paper 1, table 10; lambda = 0 is the baseline run);
- the average data share against the redundancy factor (paper 1, fig. 1);
- normalisation x centring (DINO-vMF, table 1 layout: rows norm, columns centring, kNN);
- centring against batch size (paper 1, fig. 2), when the grid has several batch sizes;
- the five hypotheses with their decision rules and verdicts (fastproto.study.claims);
- an appendix with every run record: file, status, M, kNN, error.

Numbers are mean ± sample standard deviation over seeds (n = number of runs); every table row
lists the run ids it averages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastproto.study import claims as hyp
from fastproto.study.clock import clock_section
from fastproto.study.collapse import collapse_section
from fastproto.study.em_arm import em_arm_section
from fastproto.study.grid import settings_overrides
from fastproto.study.mechanism import mechanism_section
from fastproto.study.plots import Series, line_plot
from fastproto.study.results import Row, cell, group, load_records, reference_slice, to_row


def _series_label(regulariser: str, lam: float) -> str:
    return regulariser if regulariser == "none" else f"{regulariser} (lambda={lam:g})"


def _reference_text(reference: dict[str, Any]) -> str:
    held = ", ".join(f"{k}={v}" for k, v in reference.items())
    return f"Held fixed: {held or 'nothing'}."


def _scaling(rows: list[Row], figures: Path) -> tuple[list[str], list[Row]]:
    """M and kNN against K per regulariser: a table, two PNGs."""
    sliced, reference = reference_slice(rows, ("K", "regulariser", "lam"))
    lines = [
        "## Prototypes and kNN against K (paper 1, figure 3)",
        "",
        _reference_text(reference),
        "",
        "| regulariser | K | M | M/K | kNN top-1 (%) | runs |",
        "|---|---|---|---|---|---|",
    ]
    m_series: Series = {}
    knn_series: Series = {}
    for (reg, lam, k), rs in group(sliced, ("regulariser", "lam", "K")).items():
        m, knn = cell(rs, lambda r: r.unique), cell(rs, lambda r: r.knn)
        label = _series_label(reg, lam)
        m_series.setdefault(label, []).append((k, m.mean, m.std))
        knn_series.setdefault(label, []).append((k, 100 * knn.mean, 100 * knn.std))
        lines.append(
            f"| {label} | {k} | {m.text()} | {m.mean / k:.3f} | {knn.text(100)} | "
            f"{', '.join(m.runs)} |"
        )
    for series in (m_series, knn_series):
        for points in series.values():
            points.sort()
    if sliced:
        line_plot(
            m_series,
            figures / "unique_vs_k.png",
            "K (initial prototypes)",
            "unique prototypes M",
            "M against K",
            log_x=True,
            diagonal=True,
        )
        line_plot(
            knn_series,
            figures / "knn_vs_k.png",
            "K (initial prototypes)",
            "kNN top-1 (%)",
            "kNN against K",
            log_x=True,
        )
        lines += [
            "",
            "![M against K](figures/unique_vs_k.png)",
            "",
            "![kNN against K](figures/knn_vs_k.png)",
        ]
    return lines + [""], sliced


def _lambda_table(rows: list[Row]) -> list[str]:
    """KoLeo-proto strength: lambda, M, kNN, linear (paper 1, table 10)."""
    picked = [r for r in rows if r.regulariser in ("none", "koleo-proto")]
    sliced, reference = reference_slice(picked, ("regulariser", "lam"))
    lines = [
        "## KoLeo-proto strength lambda (paper 1, table 10)",
        "",
        _reference_text(reference),
        "",
        "| lambda | M | M/K | kNN top-1 (%) | linear top-1 (%) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for (lam,), rs in sorted(group(sliced, ("lam",)).items(), key=lambda item: item[0][0]):
        m, knn = cell(rs, lambda r: r.unique), cell(rs, lambda r: r.knn)
        linear = cell(rs, lambda r: r.linear)
        lines.append(
            f"| {lam:g} | {m.text()} | {m.mean / rs[0].K:.3f} | {knn.text(100)} | "
            f"{linear.text(100)} | {', '.join(m.runs)} |"
        )
    return lines + [""]


def _share(rows: list[Row], figures: Path) -> list[str]:
    """Average data share of a unique prototype by its redundancy factor (paper 1, figure 1)."""
    sliced, reference = reference_slice(rows, ("regulariser", "lam"))
    lines = [
        "## Share of data by redundancy factor (paper 1, figure 1)",
        "",
        _reference_text(reference),
        "",
        "| regulariser | redundancy factor r | mean share | runs |",
        "|---|---|---|---|",
    ]
    series: Series = {}
    for (reg, lam), rs in group(sliced, ("regulariser", "lam")).items():
        label = _series_label(reg, lam)
        for r_factor in sorted({f for row in rs for f in row.share}):
            share = cell(rs, lambda row, f=r_factor: row.share.get(f))  # type: ignore[misc]
            series.setdefault(label, []).append((r_factor, share.mean, share.std))
            lines.append(f"| {label} | {r_factor} | {share.text(1, 4)} | {', '.join(share.runs)} |")
    if series:
        line_plot(
            series,
            figures / "share_vs_redundancy.png",
            "redundancy factor r_m",
            "average share of data",
            "data share by redundancy",
            log_x=True,
        )
        lines += ["", "![data share](figures/share_vs_redundancy.png)"]
    return lines + [""]


def _norm_centering(rows: list[Row]) -> tuple[list[str], list[Row]]:
    """kNN by head norm (rows) and centring (columns), DINO-vMF table 1 layout."""
    sliced, reference = reference_slice(rows, ("norm", "centering"))
    norms = sorted({r.norm for r in sliced})
    cents = sorted({r.centering for r in sliced})
    cells = group(sliced, ("norm", "centering"))
    lines = [
        "## Normalisation x centring, kNN top-1 % (DINO-vMF, table 1 layout)",
        "",
        _reference_text(reference),
        "",
        "| norm | " + " | ".join(cents) + " |",
        "|---" * (len(cents) + 1) + "|",
    ]
    sources = []
    for norm in norms:
        texts = []
        for cent in cents:
            c = cell(cells.get((norm, cent), []), lambda r: r.knn)
            texts.append(c.text(100))
            if c.n:
                sources.append(f"- {norm}/{cent}: {', '.join(c.runs)}")
        lines.append(f"| {norm} | " + " | ".join(texts) + " |")
    return lines + ["", "Runs per cell:", "", *sources, ""], sliced


def _batch(rows: list[Row], figures: Path) -> tuple[list[str], list[Row]]:
    """kNN against batch size per centring (paper 1, figure 2), if several batch sizes."""
    sliced, reference = reference_slice(rows, ("centering", "batch"))
    lines = [
        "## Centring against batch size (paper 1, figure 2)",
        "",
        _reference_text(reference),
        "",
        "| centring | batch | kNN top-1 (%) | runs |",
        "|---|---|---|---|",
    ]
    series: Series = {}
    for (cent, batch), rs in group(sliced, ("centering", "batch")).items():
        knn = cell(rs, lambda r: r.knn)
        series.setdefault(cent, []).append((batch, 100 * knn.mean, 100 * knn.std))
        lines.append(f"| {cent} | {batch} | {knn.text(100)} | {', '.join(knn.runs)} |")
    if len({r.batch for r in sliced}) > 1:
        for points in series.values():
            points.sort()
        line_plot(
            series,
            figures / "centering_vs_batch.png",
            "batch size",
            "kNN top-1 (%)",
            "centring against batch size",
            log_x=True,
        )
        lines += ["", "![centring against batch](figures/centering_vs_batch.png)"]
    else:
        lines += ["", "Only one batch size in the grid: no figure."]
    return lines + [""], sliced


def _claims_section(found: list[hyp.Claim]) -> list[str]:
    lines = ["## Hypotheses and verdicts", ""]
    for i, claim in enumerate(found, start=1):
        lines += [
            f"### H{i}: {claim.title}",
            "",
            f"- Decision rule: {claim.rule}.",
            f"- **Verdict: {claim.verdict}**",
            *(f"- {e}" for e in claim.evidence),
            "",
        ]
    return lines


def _appendix(records: list[tuple[str, dict[str, Any]]], rows: dict[str, Row]) -> list[str]:
    lines = [
        "## Appendix: every run",
        "",
        "| file | status | groups | M | kNN top-1 (%) | error |",
        "|---|---|---|---|---|---|",
    ]
    for file, record in records:
        row = rows.get(file)
        m = f"{row.unique:g}/{row.K}" if row else "–"
        knn = f"{100 * row.knn:.1f}" if row else "–"
        error = str(record.get("error", "")).replace("|", "/").splitlines()
        lines.append(
            f"| {file} | {record.get('status', '?')} | "
            f"{', '.join(record.get('groups', []))} | {m} | {knn} | "
            f"{error[0] if error else ''} |"
        )
    return lines + [""]


def _row(file: str, record: dict[str, Any]) -> Row:
    try:
        return to_row(file, record)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{file} says status ok but lacks a field the report needs ({err!r}); "
            "delete it and rerun the sweep to redo that run"
        ) from err


def is_ablation(record: dict[str, Any], common: set[str]) -> bool:
    """Whether the run's group added overrides beyond what its settings make and the overrides
    `common` to every run (the grid's base): a decay or an EM arm, not one of the recipe's own
    runs."""
    made = set(settings_overrides(record.get("settings", {})))
    return bool(set(record.get("overrides", [])) - made - common)


def build_report(folder: Path, out: Path | None = None) -> Path:
    """Write the markdown report (default folder/report.md) and its PNGs (next to it, figures/)."""
    records = load_records(folder)
    if not records:
        raise ValueError(f"no run JSON files in {folder}/results or {folder}; run a sweep first")
    out = out or folder / "report.md"
    figures = out.parent / "figures"
    rows = {file: _row(file, rec) for file, rec in records if rec.get("status") == "ok"}
    common = set.intersection(*(set(rec.get("overrides", [])) for _, rec in records))
    # the K and lambda questions are asked of the recipe's own runs; the ablations (a group's
    # extra overrides: where the decay acts, EM prototypes) have sections of their own
    ok = [rows[file] for file, rec in records if file in rows and not is_ablation(rec, common)]
    scaling, scaling_rows = _scaling(ok, figures)
    norm_cent, norm_rows = _norm_centering(ok)
    batch, batch_rows = _batch(ok, figures)
    found = [
        hyp.baseline_collapse(scaling_rows),
        hyp.koleo_keeps(scaling_rows),
        hyp.koleo_knn(scaling_rows),
        hyp.vmf_probability_best(norm_rows),
        hyp.probability_small_batch(batch_rows),
    ]
    counts = {s: sum(rec.get("status") == s for _, rec in records) for s in ("ok", "failed")}
    lines = [
        "# Prototype-scaling study",
        "",
        f"{len(records)} run records in {folder}: {counts['ok']} ok, {counts['failed']} "
        f"failed, {len(records) - sum(counts.values())} unfinished. Numbers are mean ± "
        "sample standard deviation over seeds (n runs); kNN is top-1 at k = 20, M is the "
        "number of unique prototypes at eps = 0.025 (paper 1, definition 4.1).",
        "",
    ]
    plain = [rec for _, rec in records]
    recipe_runs = [rec for rec in plain if not is_ablation(rec, common)]
    lines += collapse_section(recipe_runs) + clock_section(plain, figures)
    lines += mechanism_section(plain) + em_arm_section(recipe_runs, plain, figures)
    lines += _claims_section(found) + scaling + _lambda_table(ok) + _share(ok, figures)
    lines += norm_cent + batch + _appendix(records, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
