"""Training feedback: metrics.jsonl, optional TensorBoard, and the numbers they hold.

Each line of ``metrics.jsonl`` is one JSON object with ``kind`` = "step" (loss terms, lr, wd,
temperatures, momentum, images/s, memory, entropy of the batch-mean teacher distribution) or
"epoch" (unique prototypes M at eps 0.025, its redundancy histogram, kNN accuracy if run).
Only rank 0 writes. TensorBoard is used when installed and silently skipped otherwise.
"""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of a distribution [K], 0-d float64 where `probs` is (not read);
    log K means every prototype is used evenly."""
    p = probs.detach().double().clamp_min(0)
    p = p / p.sum()
    return -(p * torch.log(p.clamp_min(1e-300))).sum()


def memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of the process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _clean(value: Any) -> Any:
    """JSON-safe: tensors to numbers, NaN/inf to strings (JSON has neither)."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Appends records to ``<run_dir>/metrics.jsonl`` (and TensorBoard when available)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._writer: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self._writer = None

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = _clean({"kind": kind, "step": step, **values})
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for name, value in record.items():
                if isinstance(value, int | float) and name != "step":
                    self._writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path, kind: str = "step") -> list[dict[str, Any]]:
    """The records of one kind from a metrics.jsonl file, in order."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("kind") == kind]
