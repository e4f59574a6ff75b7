"""The `sweep` and `report` subcommands, added to the `fastproto` command by `add_study_commands`.

    fastproto sweep --grid docs/results/grid_cpu.toml --out runs/study_cpu
    fastproto sweep --grid docs/results/grid_cpu.toml --out runs/study_cpu   # resumes
    fastproto report runs/study_cpu                    # -> runs/study_cpu/report.md + figures/

Handlers return the exit code: 0 when every run is ok (sweep) or the report was written;
1 when some runs failed or the sweep was interrupted; 2 for bad input (the message says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def sweep_command(args: argparse.Namespace) -> int:
    """Run the grid; exit 1 if a run failed or the sweep stopped early."""
    from fastproto.study.grid import load_grid
    from fastproto.study.runner import run_sweep

    try:
        grid = load_grid(args.grid)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec in grid.runs:
            print(f"{spec.run_id}  groups={','.join(spec.groups)}  {' '.join(spec.overrides)}")
        print(f"{len(grid.runs)} runs")
        return 0
    try:
        shard = _parse_shard(args.shard)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = run_sweep(grid, Path(args.out), progress=not args.no_progress, shard=shard)
    print(
        f"{len(summary.ran)} run(s) ran, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed"
        + (" (stopped early; rerun to resume)" if summary.stopped else "")
    )
    for run in summary.failed:
        print(f"failed: {run} (see {Path(args.out) / 'results' / (run + '.json')})")
    return 1 if summary.failed or summary.stopped else 0


def _parse_shard(text: str) -> tuple[int, int]:
    """ "i/n" -> (i, n) with 0 <= i < n."""
    head, sep, tail = text.partition("/")
    if not sep or not head.isdigit() or not tail.isdigit() or not int(head) < int(tail):
        raise ValueError(f"--shard {text!r} must look like i/n with 0 <= i < n, e.g. 0/2")
    return int(head), int(tail)


def report_command(args: argparse.Namespace) -> int:
    """Write the markdown report and its PNGs from the run JSON files."""
    from fastproto.study.report import build_report

    try:
        path = build_report(Path(args.dir), Path(args.out) if args.out else None)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    """Add `sweep` and `report`; each parser sets `func` to its handler, as cli.py expects."""
    sweep = sub.add_parser("sweep", help="train and evaluate every run of a study grid")
    sweep.add_argument(
        "--grid", required=True, help="grid TOML file (see docs/results/grid_cpu.toml)"
    )
    sweep.add_argument("--out", required=True, help="sweep directory; rerun into it to resume")
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the runs and their overrides only"
    )
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    sweep.add_argument(
        "--shard",
        default="0/1",
        help="i/n: run only every n-th run starting at i, so n processes share one sweep",
    )
    sweep.set_defaults(func=sweep_command)
    report = sub.add_parser("report", help="markdown report with plots from a sweep directory")
    report.add_argument("dir", help="sweep directory (holding results/*.json) or a folder of JSONs")
    report.add_argument("--out", default=None, help="report path (default DIR/report.md)")
    report.set_defaults(func=report_command)
