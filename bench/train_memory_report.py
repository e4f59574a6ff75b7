"""The markdown table and PNG of bench/train_memory.py, rebuilt from its CSV.

The latest row of each (op, impl, shape, metric) counts, so rerunning some points updates them.
CPU memory is the peak RSS growth of a step (MB), CUDA memory the peak allocated (GB); both
are shown in MB per 1024 prototypes for the slopes, beside paper 1 Table 12's.
"""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("reference", "auto", "head")
TITLES = {
    "reference": "reference (materialised)",
    "auto": "fused (auto)",
    "head": "head-only (auto)",
}


def _key(row: dict[str, str]) -> tuple[int, str, int]:
    shape = dict(part.split("=") for part in row["shape"].split(",")[:2])
    column = "head" if row["op"].endswith("_head_only") else row["impl"]
    return int(shape["B"]), column, int(shape["K"])


def load(csv_path: Path) -> tuple[dict[tuple[int, str, int], dict[str, float]], list[dict]]:
    """-> ({(B, column, K): {metric: value}}, the rows in file order)."""
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    table: dict[tuple[int, str, int], dict[str, float]] = {}
    for row in rows:  # later rows win
        table.setdefault(_key(row), {})[row["metric"]] = float(row["p50"])
    return table, rows


def memory_metric(table: dict) -> tuple[str, str, float]:
    """(metric, unit, MB per unit) of this file's memory column."""
    metrics = {m for cell in table.values() for m in cell}
    if "peak_rss_growth" in metrics:
        return "peak_rss_growth", "MB", 1.0
    return "peak_memory", "GB", 1e3


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope per prototype) of memory against K, >= 2 points."""
    n = len(points)
    mk = sum(k for k, _ in points) / n
    mm = sum(m for _, m in points) / n
    var = sum((k - mk) ** 2 for k, _ in points)
    slope = sum((k - mk) * (m - mm) for k, m in points) / var if var else 0.0
    return mm - slope * mk, slope


def slope_mb_per_1024(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope, MB per 1024 prototypes, of (K, MB) points."""
    return None if len(points) < 2 else fit_line(points)[1] * 1024


def _series(table: dict, batch: int, column: str, metric: str, scale: float):  # type: ignore[no-untyped-def]
    return sorted(
        (k, cell[metric] * scale)
        for (b, c, k), cell in table.items()
        if b == batch and c == column and metric in cell
    )


def markdown(table: dict, rows: list[dict], paper: dict[tuple[int, int], float]) -> str:
    metric, unit, scale = memory_metric(table)
    what = (
        "peak RSS growth of one step over the same process's RSS after build_state, MB"
        if metric == "peak_rss_growth"
        else "peak allocated memory over timed steps, GB"
    )
    machines: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for r in rows:  # per machine: its dates and commits in the order the rows were written
        dates, commits = machines.setdefault((r["device"], r["versions"]), ([], []))
        dates += [] if r["date"] in dates else [r["date"]]
        commits += [] if r["commit"] in commits else [r["commit"]]
    lines = ["# Memory of one iBOT ViT-S/16 training step against K (paper 1 Table 12 layout)", ""]
    lines += [
        f"- measured on {d}, {', '.join(days)}, commits {', '.join(cs)} ({v})"
        for (d, v), (days, cs) in machines.items()
    ]
    lines += [
        f"- ours: {what}; step time in seconds after the slash",
        "- paper: Table 12, iBOT ViT-S/16 fp16 on a GPU, peak memory in GB",
        "",
    ]
    for batch in sorted({b for b, _, _ in table}):
        ks = sorted({k for b, _, k in table if b == batch} | {k for b, k in paper if b == batch})
        head = [f"B = {batch}: K", "paper GB"] + [f"{TITLES[c]} {unit}" for c in COLUMNS]
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for k in ks:
            cells = [str(k), str(paper.get((batch, k), ""))]
            for column in COLUMNS:
                cell = table.get((batch, column, k), {})
                value = cell.get(metric)
                cells.append(
                    ""
                    if value is None
                    else f"{value:.0f} / {cell['step_time']:.0f} s"
                    if unit == "MB"
                    else f"{value:.2f} / {cell['step_time']:.2f} s"
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Least-squares slope, MB per 1024 prototypes (B = {batch}):", ""]
        paper_pts = sorted((k, v * 1e3) for (b, k), v in paper.items() if b == batch)
        for name, pts in [("paper 1 Table 12", paper_pts)] + [
            (TITLES[c], _series(table, batch, c, metric, scale)) for c in COLUMNS
        ]:
            s = slope_mb_per_1024(pts)
            span = f"K = {pts[0][0]}..{pts[-1][0]}" if pts else ""
            lines.append(f"- {name}: " + ("-" if s is None else f"**{s:.1f}**") + f" ({span})")
        lines.append("")
    return "\n".join(lines)


def plot(table: dict, paper: dict[tuple[int, int], float], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, unit, scale = memory_metric(table)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for batch in sorted({b for b, _, _ in table}):
        for column in COLUMNS:
            pts = _series(table, batch, column, metric, scale)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{TITLES[column]}, B={batch}")
        pp = sorted((k, v * 1e3) for (b, k), v in paper.items() if b == batch)
        if pp and unit == "GB":
            ax.plot(*zip(*pp, strict=True), "k--", marker="x", label=f"paper Table 12, B={batch}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prototypes K")
    ax.set_ylabel("peak RSS growth of a step (MB)" if unit == "MB" else "peak memory (MB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def write_report(csv_path: Path, paper: dict[tuple[int, int], float]) -> tuple[Path, Path]:
    """Write <csv stem>.md and .png beside the CSV; -> their paths."""
    table, rows = load(csv_path)
    md, png = csv_path.with_suffix(".md"), csv_path.with_suffix(".png")
    md.write_text(markdown(table, rows, paper) + "\n")
    try:
        plot(table, paper, png)
    except ImportError:  # a lent GPU machine may lack matplotlib: the table is what counts
        print("matplotlib is not installed here: no PNG (the markdown table is written)")
    return md, png
