"""Reading run records back: one Row per finished run, cells of rows, and reference slices.

A Row takes the run's settings from its resolved config (what actually trained):

    K = head.num_prototypes, norm = head.norm, batch = optim.batch_size, seed = run.seed,
    regulariser, lam = the grid's regulariser axis and its koleo_lambda (0 for none) when the
                  record has them: the recipe itself may carry a regulariser in every run (the
                  demo's KoLeo-data 0.1), which does not make a run a KoLeo-data run; without
                  them, koleo-proto if method.koleo_proto > 0, koleo-data if method.koleo_data
                  > 0, else none, and lam = that weight,
    centering = the grid's centring name ('me-max' for runs with the ME-MAX penalty).

A cell is the rows that differ only by seed: mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("K", "regulariser", "lam", "norm", "centering", "batch")


@dataclass(frozen=True)
class Row:
    file: str
    run_id: str
    K: int
    regulariser: str
    lam: float
    norm: str
    centering: str
    batch: int
    seed: int
    unique: float
    knn: float
    linear: float | None
    share: dict[int, float] = field(default_factory=dict)

    def key(self, names: Iterable[str]) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in names)


@dataclass(frozen=True)
class Cell:
    """Rows with equal settings (all seeds): the mean, spread and where each number came from."""

    mean: float
    std: float
    n: int
    runs: tuple[str, ...]

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        if self.n == 0:
            return "–"
        spread = f" ± {self.std * scale:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean * scale:.{digits}f}{spread} (n={self.n})"


def load_records(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, record) for every run JSON in folder/results (or folder itself)."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory; pass the sweep's --out directory")
    files = sorted((folder / "results").glob("*.json")) or sorted(folder.glob("*.json"))
    out = []
    for path in files:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            hint = "delete it or rerun the sweep"
            raise ValueError(f"{path} is not valid JSON ({err}); {hint}") from err
        if isinstance(record, dict) and "run_id" in record:
            out.append((path.name, record))
    return out


def _knn(metrics: dict[str, Any]) -> float:
    """kNN top-1 at k = 20 (paper 1's protocol), else the largest k evaluated."""
    knn = metrics["knn_top1"]
    return float(knn["20"] if "20" in knn else knn[max(knn, key=int)])


def _regulariser(settings: dict[str, Any], method: dict[str, Any]) -> tuple[str, float]:
    """(regulariser, lambda) of a run: the grid's axis if recorded, else from the config."""
    if "regulariser" in settings:
        name = str(settings["regulariser"])
        return name, 0.0 if name == "none" else float(settings.get("koleo_lambda", 0.0))
    proto, data = float(method["koleo_proto"]), float(method["koleo_data"])
    if proto > 0:
        return "koleo-proto", proto
    return ("koleo-data", data) if data > 0 else ("none", 0.0)


def to_row(file: str, record: dict[str, Any]) -> Row:
    """A Row of a record with status ok (KeyError if the record misses a needed field)."""
    config, metrics = record["config"], record["metrics"]
    method = config["method"]
    regulariser, lam = _regulariser(record.get("settings", {}), method)
    linear = metrics.get("linear_top1")
    return Row(
        file=file,
        run_id=str(record["run_id"]),
        K=int(config["head"]["num_prototypes"]),
        regulariser=regulariser,
        lam=lam,
        norm=str(config["head"]["norm"]),
        centering=str(record.get("settings", {}).get("centering", method["centering"])),
        batch=int(config["optim"]["batch_size"]),
        seed=int(config["run"]["seed"]),
        unique=float(metrics["unique_prototypes"]),
        knn=_knn(metrics),
        linear=None if linear is None else float(linear),
        share={int(r): float(s) for r, s in metrics.get("data_share_by_redundancy", {}).items()},
    )


def cell(rows: list[Row], value: Callable[[Row], float | None]) -> Cell:
    """Mean and sample standard deviation of value(row) over rows (None values dropped)."""
    pairs = [(r.run_id, v) for r in rows if (v := value(r)) is not None]
    if not pairs:
        return Cell(math.nan, math.nan, 0, ())
    values = [v for _, v in pairs]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return Cell(mean, math.sqrt(var), len(values), tuple(run for run, _ in pairs))


def group(rows: list[Row], names: tuple[str, ...]) -> dict[tuple[Any, ...], list[Row]]:
    """Rows by their values of `names`, keys sorted (numbers numerically)."""
    out: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        out.setdefault(row.key(names), []).append(row)
    return dict(sorted(out.items(), key=lambda item: tuple(map(_order, item[0]))))


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order (32 before 128), then text."""
    if isinstance(value, int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def reference_slice(rows: list[Row], vary: tuple[str, ...]) -> tuple[list[Row], dict[str, Any]]:
    """Rows where every setting outside `vary` (and seed) is held at one reference value.

    For each other setting, the reference is the value under which the varied settings take
    the most distinct combinations (ties: more runs, then the smallest value as text), so a
    comparison uses the slice of the grid that was actually swept along those settings.
    """
    reference: dict[str, Any] = {}
    for name in FIELDS:
        if name in vary or not rows:
            continue
        combos: dict[Any, set[tuple[Any, ...]]] = {}
        counts = Counter(getattr(r, name) for r in rows)
        for r in rows:
            combos.setdefault(getattr(r, name), set()).add(r.key(vary))
        best = sorted(combos, key=lambda v: (-len(combos[v]), -counts[v], str(v)))[0]
        reference[name] = best
        rows = [r for r in rows if getattr(r, name) == best]
    return rows, reference
