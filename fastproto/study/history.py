"""A run's epoch history as its record keeps it, read the same way for old and new records.

`metrics["epochs"]` holds one dict per epoch row of the run's metrics.jsonl (see
`fastproto.study.evaluate`): step, epoch, unique_prototypes (M), num_prototypes (K),
nn_distance_quantiles {p0, p5, ..., p95}, prototype_movement, and in newer records
used_prototypes, effective_prototypes and prototype_decay_clock (the sum of lr x prototype
weight decay up to that step). Records written before a field existed lack it; every reader
here returns None for a missing or non-finite value (metrics.jsonl writes NaN as a string).
"""

from __future__ import annotations

import math
from typing import Any

History = list[dict[str, Any]]


def number(value: Any) -> float | None:
    """A finite int or float as float; None for anything else (missing, 'nan', bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def prototype_count(record: dict[str, Any]) -> int | None:
    """K of a finished run with a known M (None when not ok or either is missing): the
    evaluation's count, else the config's head.num_prototypes."""
    metrics = record.get("metrics") or {}
    if record.get("status") != "ok" or number(metrics.get("unique_prototypes")) is None:
        return None
    k = number(metrics.get("num_prototypes"))
    if k is None:
        k = number(record.get("config", {}).get("head", {}).get("num_prototypes"))
    return None if k is None or k <= 0 else int(k)


def history(record: dict[str, Any]) -> History:
    """The epoch rows of a record (empty when it has none)."""
    rows = record.get("metrics", {}).get("epochs") or []
    return [row for row in rows if isinstance(row, dict)]


def row_steps(rows: History) -> list[float]:
    """The training step of each row. Rows of old records carry only the epoch; epochs are
    equally long, so epoch + 1 sits at the same fraction of the run as the step would."""
    if all(number(row.get("step")) is not None for row in rows):
        return [float(row["step"]) for row in rows]
    return [float(row.get("epoch", i)) + 1.0 for i, row in enumerate(rows)]


def quantile(row: dict[str, Any], name: str) -> float | None:
    """A nearest-neighbour cosine-distance quantile ('p0', 'p5', ...) of one row."""
    quantiles = row.get("nn_distance_quantiles")
    return number(quantiles.get(name)) if isinstance(quantiles, dict) else None


def ratio(row: dict[str, Any], k: int) -> float | None:
    """M / K of one row (K from the row, else the run's K)."""
    unique = number(row.get("unique_prototypes"))
    total = number(row.get("num_prototypes")) or float(k)
    return None if unique is None or total <= 0 else unique / total


def last(rows: History, key: str) -> float | None:
    """The value of `key` in the last row that has it."""
    values = [v for row in rows if (v := number(row.get(key))) is not None]
    return values[-1] if values else None


def first_at_or_below(rows: History, k: int, threshold: float) -> dict[str, Any] | None:
    """The first row whose M / K <= threshold, or None."""
    return next((row for row in rows if (r := ratio(row, k)) is not None and r <= threshold), None)


def koleo_proto_lambda(record: dict[str, Any]) -> float:
    """The KoLeo-proto weight that trained: the resolved config's method.koleo_proto, else
    (records without a config) the grid's koleo_lambda for a koleo-proto run."""
    method = record.get("config", {}).get("method", {})
    if number(method.get("koleo_proto")) is not None:
        return float(method["koleo_proto"])
    settings = record.get("settings", {})
    if settings.get("regulariser", "koleo-proto") != "koleo-proto":
        return 0.0
    return float(settings.get("koleo_lambda", 0.0))


def teacher_temp(record: dict[str, Any]) -> float | None:
    """The teacher temperature the run ended with (its resolved config's method.teacher_temp)."""
    return number(record.get("config", {}).get("method", {}).get("teacher_temp"))


def usual_teacher_temp(records: list[dict[str, Any]]) -> float | None:
    """The teacher temperature most of the records ran with (the recipe's); None if none says."""
    temps = [t for r in records if (t := teacher_temp(r)) is not None]
    return max(set(temps), key=temps.count) if temps else None


def text(value: float | None, digits: int = 3) -> str:
    """A number for a table cell; '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}"
