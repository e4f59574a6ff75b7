"""The progress bar (images/s, the loss terms, M / K, the ETA) and the per-epoch line, rank 0
only (tqdm)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from fastproto.config import TrainConfig

_SHOWN = ("loss", "dino", "ibot", "koleo_proto", "teacher_entropy_per_sample", "lr", "images_per_s")
_SHORT = {"teacher_entropy_per_sample": "H_t"}  # the column title for long names


def epoch_summary(record: dict[str, Any]) -> str:
    """One line of an epoch record: M / K, the largest duplicate set, used and effective
    prototypes, nearest-neighbour p5 and kNN where the record has them."""
    m, k = record["unique_prototypes"], record["num_prototypes"]
    parts = [f"epoch {record['epoch']}: M {m}/{k} ({m / k:.2f})"]
    if "largest_duplicate_set" in record:
        parts.append(f"largest duplicate set {record['largest_duplicate_set']}")
    if "used_prototypes" in record:
        parts.append(f"used {record['used_prototypes']}")
        parts.append(f"effective {record['effective_prototypes']:.0f}")
    if "nn_distance_quantiles" in record:
        parts.append(f"nn p5 {record['nn_distance_quantiles']['p5']:.3f}")
    if "knn_top1" in record:
        parts.append(f"kNN k=20 {100 * record['knn_top1']['20']:.1f}%")
    return ", ".join(parts)


class Progress:
    """A tqdm bar over the run's total steps, starting at the resumed step."""

    def __init__(
        self, config: TrainConfig, steps_per_epoch: int, start_step: int, enabled: bool
    ) -> None:
        total = config.optim.epochs * steps_per_epoch
        if config.run.max_steps > 0:
            total = min(total, config.run.max_steps)
        self.enabled = enabled
        self.last: dict[str, Any] = {}
        self.unique_share = ""  # M / K of the last epoch end, shown on the bar
        self.bar = (
            tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True)
            if enabled and config.run.progress
            else None
        )

    def update(self, record: dict[str, Any]) -> None:
        self.last = record
        if self.bar is None:
            return
        shown = {
            _SHORT.get(k, k): f"{record[k]:.4g}" for k in _SHOWN if isinstance(record.get(k), float)
        }
        if self.unique_share:
            shown["M/K"] = self.unique_share
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def epoch_line(self, record: dict[str, Any]) -> None:
        """Print the epoch's summary line (above the bar) and put its M / K on the bar."""
        self.unique_share = f"{record['unique_prototypes'] / record['num_prototypes']:.2f}"
        if self.enabled:
            tqdm.write(epoch_summary(record), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
