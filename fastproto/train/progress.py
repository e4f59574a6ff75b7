"""The progress bar: images/s, the loss terms and the ETA (tqdm, rank 0 only)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from fastproto.config import TrainConfig

_SHOWN = ("loss", "dino", "ibot", "koleo_proto", "teacher_entropy_per_sample", "lr", "images_per_s")
_SHORT = {"teacher_entropy_per_sample": "H_t"}  # the column title for long names


class Progress:
    """A tqdm bar over the run's total steps, starting at the resumed step."""

    def __init__(
        self, config: TrainConfig, steps_per_epoch: int, start_step: int, enabled: bool
    ) -> None:
        total = config.optim.epochs * steps_per_epoch
        if config.run.max_steps > 0:
            total = min(total, config.run.max_steps)
        self.last: dict[str, Any] = {}
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
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
