"""Decay ablation: runs that differ by which parameters weight decay acts on, side by side.

Each run's decay is read from the resolved config in its record: the network's schedule
optim.weight_decay -> optim.weight_decay_end, and the prototype matrix's
optim.prototype_weight_decay -> optim.prototype_weight_decay_end (-1 for both: the network's
schedule; 0 for both: undecayed). Configs from before the prototype matrix had a schedule of its
own hold a switch, head.prototype_weight_decay: off reads as 0, on as the network's schedule.

The section tabulates and decides nothing: per run the two schedules, the KoLeo-proto weight,
the final M / K, the first epoch step with M / K <= COLLAPSED_RATIO and the prototype decay
clock (sum of lr x prototype weight decay) there, the final clock, nn p5, used prototypes,
kNN and linear probe. It lists every finished run at each K whose runs differ in which
parameters decay at all (the network, the prototype matrix), ordered by the two schedules.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fastproto.config import FOLLOW_NETWORK
from fastproto.study import history as hist
from fastproto.study.collapse import COLLAPSED_RATIO
from fastproto.study.em_arm import em_choices, epochs

COLUMNS = (
    "run",
    "K",
    "network decay",
    "prototype decay",
    "KoLeo-proto lambda",
    "final M / K",
    f"first step M / K <= {COLLAPSED_RATIO:g}",
    "clock there",
    "final clock",
    "nn p5",
    "used",
    "kNN",
    "linear",
)


Schedule = tuple[float, float]  # (start, end) of a cosine weight-decay schedule


@dataclass(frozen=True)
class Decay:
    """A run's weight decay: the network's schedule and the prototype matrix's (the network's
    when it follows it); None where the config does not say."""

    network: Schedule | None
    prototypes: Schedule | None
    follows: bool = False
    em: str = ""  # head.prototypes = "em" (fitted by EM, never decayed): its settings

    def decayed(self) -> tuple[bool | None, bool | None]:
        """Which parameters decay at all: (network, prototype matrix)."""
        return _on(self.network), _on(self.prototypes)

    def texts(self) -> tuple[str, str]:
        """(network decay, prototype decay) as table text; '-' if unknown."""
        prototypes = _text(self.prototypes)
        if self.em:
            return _text(self.network), f"none (EM: {self.em})"
        return _text(self.network), f"{prototypes} (network's)" if self.follows else prototypes


def _on(schedule: Schedule | None) -> bool | None:
    return None if schedule is None else max(schedule) > 0.0


def _text(schedule: Schedule | None) -> str:
    if schedule is None:
        return "-"
    start, end = schedule
    return f"{start:g}" if start == end else f"{start:g} -> {end:g}"


def _pair(table: dict[str, Any], start: str, end: str) -> Schedule | None:
    first, last = hist.number(table.get(start)), hist.number(table.get(end))
    return None if first is None or last is None else (first, last)


def decay_settings(config: dict[str, Any]) -> Decay:
    """The decay of a resolved config (the dict a record holds)."""
    optim = config.get("optim", {})
    network = _pair(optim, "weight_decay", "weight_decay_end")
    head = config.get("head", {})
    if head.get("prototypes") == "em":
        return Decay(network, (0.0, 0.0), em=em_settings(config))
    own = _pair(optim, "prototype_weight_decay", "prototype_weight_decay_end")
    if own is None:  # the old switch, on unless set off
        if config.get("head", {}).get("prototype_weight_decay", True) is False:
            return Decay(network, (0.0, 0.0))
        own = (FOLLOW_NETWORK, FOLLOW_NETWORK)
    if own == (FOLLOW_NETWORK, FOLLOW_NETWORK):
        return Decay(network, network, follows=network is not None)
    return Decay(network, own)


def em_settings(config: dict[str, Any]) -> str:
    """An EM run's choices as table text: the concentration, the dead-component policy, then
    any other departure from the defaults (defaults where a record predates a key)."""
    head = config.get("head", {})
    text = (
        f"kappa {head.get('em_concentration', 'fitted')}, dead {head.get('em_dead_policy', 'keep')}"
    )
    others = [c for c in em_choices({"config": config}) if not c.startswith(("kappa", "dead"))]
    return ", ".join([text, *others])


def _final_clock(record: dict[str, Any]) -> float | None:
    """The prototype decay clock at the run's end; 0 for EM prototypes, which take no decay
    (records from before the trainer logged 0 for them hold the network's clock)."""
    if record.get("config", {}).get("head", {}).get("prototypes") == "em":
        return 0.0
    found = hist.number(record["metrics"].get("prototype_decay_clock"))
    return found if found is not None else hist.last(hist.history(record), "prototype_decay_clock")


def _clock_at(record: dict[str, Any], row: dict[str, Any] | None) -> float | None:
    """The clock at an epoch row; 0 for EM prototypes, as in _final_clock."""
    if row is None:
        return None
    if record.get("config", {}).get("head", {}).get("prototypes") == "em":
        return 0.0
    return hist.number(row.get("prototype_decay_clock"))


def _where(row: dict[str, Any] | None) -> str:
    """The step of an epoch row (its epoch in records from before steps were kept)."""
    if row is None:
        return "-"
    return str(row["step"]) if "step" in row else f"epoch {row.get('epoch', '?')}"


def mechanism_row(record: dict[str, Any], k: int) -> dict[str, str]:
    """The table cells (COLUMNS) of one ok record of a run with K = k prototypes."""
    metrics = record["metrics"]
    rows = hist.history(record)
    network, prototypes = decay_settings(record.get("config", {})).texts()
    first = hist.first_at_or_below(rows, k, COLLAPSED_RATIO)
    knn, linear = metrics.get("knn_top1", {}).get("20"), metrics.get("linear_top1")
    quantiles = metrics.get("nn_distance_quantiles") or {}
    cells = (
        record["run_id"],
        str(k),
        network,
        prototypes,
        f"{hist.koleo_proto_lambda(record):g}",
        f"{metrics['unique_prototypes'] / k:.3f}",
        _where(first),
        hist.text(_clock_at(record, first)),
        hist.text(_final_clock(record)),
        hist.text(hist.number(quantiles.get("p5"))),
        hist.text(hist.last(rows, "used_prototypes"), 0),
        hist.text(None if knn is None else 100 * knn, 1),
        hist.text(None if linear is None else 100 * linear, 1),
    )
    return dict(zip(COLUMNS, cells, strict=True))


def _order(record: dict[str, Any]) -> tuple[float, ...]:
    decay = decay_settings(record.get("config", {}))
    numbers = [*(decay.network or (math.inf,) * 2), *(decay.prototypes or (math.inf,) * 2)]
    return (*numbers, float(decay.follows), hist.koleo_proto_lambda(record))


def ablation_runs(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """(record, K) of the finished runs at every K whose runs differ in which parameters decay,
    ordered by the two schedules, KoLeo-proto lambda and run id. Only runs of the most common
    length (optim.epochs) and teacher temperature take part: the ablation compares schedules
    of one length and one temperature."""
    usual = hist.usual_teacher_temp(records)
    found = [
        (r, k)
        for r in records
        if (k := hist.prototype_count(r)) is not None and hist.teacher_temp(r) == usual
    ]
    lengths = Counter(epochs(r) for r, _ in found)
    if lengths:
        found = [(r, k) for r, k in found if epochs(r) == lengths.most_common(1)[0][0]]
    patterns: dict[int, set[tuple[bool | None, bool | None]]] = {}
    for record, k in found:
        pattern = decay_settings(record.get("config", {})).decayed()
        if None not in pattern:  # a config that does not say cannot make an ablation
            patterns.setdefault(k, set()).add(pattern)
    picked = [(r, k) for r, k in found if len(patterns.get(k, ())) >= 2]
    return sorted(picked, key=lambda pair: (*_order(pair[0]), pair[1], str(pair[0]["run_id"])))


def mechanism_section(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the decay ablation table, or one line when there is no such ablation."""
    picked = ablation_runs(records)
    lines = ["## Decay ablation: which parameters weight decay acts on", ""]
    if not picked:
        decays = [decay_settings(r.get("config", {})) for r in records if hist.prototype_count(r)]
        held = sorted({"network {}, prototypes {}".format(*d.texts()) for d in decays})
        return lines + [
            f"No K has runs that differ in which parameters decay "
            f"({'; '.join(held) or 'no finished run'}): no ablation.",
            "",
        ]
    doc = (__doc__ or "").split("\n\n", 1)[1].strip()
    lines += [
        doc.replace("COLLAPSED_RATIO", f"{COLLAPSED_RATIO:g}"),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" + "---|---|" + "---:|" * (len(COLUMNS) - 4),
    ]
    lines += ["| " + " | ".join(mechanism_row(r, k).values()) + " |" for r, k in picked]
    return lines + [""]
