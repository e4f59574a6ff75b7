"""The embedded demo: `fastproto train` with no --data.

Debian's Fashion-MNIST (package dataset-fashion-mnist) is converted on first use into a cache
directory ($FASTPROTO_CACHE, else ~/.cache/fastproto) with fastproto.data_prep (which writes
atomically and skips work already done), a small ViT trains on it with the `demo` recipe, and
the teacher is then evaluated: weighted kNN accuracy (train-split features against val-split
features, k = 10 and 20, temperature 0.07) and the number M of unique prototypes of K
(cosine distance eps = 0.025, paper 1, definition 4.1). The same kNN of the network the run
started from is printed beside it: a small ViT at initialisation already scores well above
chance, and that is the number training has to beat.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fastproto.config import TrainConfig
from fastproto.models import SSLNetwork, head_prototypes
from fastproto.train.checkpoint import latest_checkpoint

DEMO_IMAGES_PER_SPLIT = 8000


def cache_root() -> Path:
    env = os.environ.get("FASTPROTO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastproto"


def ensure_demo_data(backend: str, limit: int = DEMO_IMAGES_PER_SPLIT) -> Path:
    """The demo's Fashion-MNIST in `backend` layout, converted on first use."""
    from fastproto.data_prep.prepare import prepare_fashion_mnist

    if backend not in ("ffcv", "dali"):
        raise ValueError(f"the demo data is written for ffcv or dali, not {backend!r}")
    out = cache_root() / f"fashion-mnist-{backend}-{limit}"
    return prepare_fashion_mnist(out, backend, limit=limit)


def initial_network(config: TrainConfig, device: torch.device) -> SSLNetwork:
    """The network a fresh run of `config` starts from (the trainer's seeding, rank 0)."""
    from fastproto.train.loop import seed_step
    from fastproto.train.setup import build_student

    seed_step(config.run.seed, 0, 0)
    return build_student(config).to(device).eval()


def baseline_knn(config: TrainConfig, data_path: str, device: torch.device) -> dict[str, Any]:
    """kNN accuracy of what training has to beat: the raw pixels, and the network a fresh run
    of `config` starts from."""
    from fastproto.train.features import knn_accuracy

    return {
        "knn_top1_raw_pixels": knn_accuracy(None, config, data_path, device),
        "knn_top1_at_init": knn_accuracy(
            initial_network(config, device), config, data_path, device
        ),
    }


def teacher_summary(run_dir: Path, data_path: str, device: torch.device) -> dict[str, Any]:
    """The newest checkpoint's teacher in `run_dir`: kNN accuracy, unique prototypes M of K and
    the largest duplicate set."""
    from fastproto.prototypes import unique_prototypes
    from fastproto.train.features import knn_accuracy, network_from_checkpoint

    path = latest_checkpoint(run_dir)
    if path is None:
        raise ValueError(f"no checkpoint in {run_dir} to evaluate")
    config, teacher, saved = network_from_checkpoint(path, device)
    report = unique_prototypes(head_prototypes(teacher.cls_head).detach().float().cpu(), eps=0.025)
    return {
        "checkpoint": str(path),
        "step": int(saved["step"]),  # type: ignore[call-overload]
        "knn_top1": knn_accuracy(teacher, config, data_path, device),
        "unique_prototypes": report.num_unique,
        "num_prototypes": config.head.num_prototypes,
        "largest_duplicate_set": report.largest_duplicate_set,
    }


def evaluate_run(run_dir: Path, data_path: str, device: torch.device) -> dict[str, Any]:
    """kNN accuracy of the newest checkpoint's teacher and student in `run_dir`, beside the
    baselines to beat: the same network at initialisation and the raw pixels; and the unique
    prototypes M of the teacher."""
    from fastproto.train.features import knn_accuracy, network_from_checkpoint

    summary = teacher_summary(run_dir, data_path, device)
    config, student, _ = network_from_checkpoint(Path(summary["checkpoint"]), device, "student")
    return (
        summary
        | baseline_knn(config, data_path, device)
        | {"knn_top1_student": knn_accuracy(student, config, data_path, device)}
    )


def run_demo(
    config: TrainConfig,
    require_resume: bool = False,
    images: int = DEMO_IMAGES_PER_SPLIT,
    resume_from: str | None = None,
) -> dict[str, Any]:
    """Prepare the data if needed (`images` per split), train, evaluate, print and save
    demo_results.json."""
    from fastproto.train.curves import plot_run_curves
    from fastproto.train.loop import train

    if not config.data.path:
        config.data.path = str(ensure_demo_data(config.data.backend, images))
    result = train(config, require_resume, resume_from)
    if result.stopped_by_signal:  # the command line says where the checkpoint is
        return {"stopped_by_signal": result.signal_name, "step": result.step}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary = evaluate_run(result.run_dir, config.data.path, device)
    (result.run_dir / "demo_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    png = plot_run_curves(
        result.run_dir,
        result.run_dir / "curves.png",
        config.head.num_prototypes,
        {
            f"{text} ({100 * summary[key]['20']:.1f}%)": 100 * summary[key]["20"]
            for key, text in KNN_ROWS[:2]
        },
    )
    print(f"loss, entropies and kNN over the run: {png}")
    return summary


KNN_ROWS = (
    ("knn_top1_raw_pixels", "raw pixels"),
    ("knn_top1_at_init", "network at initialisation"),
    ("knn_top1_student", "trained student"),
    ("knn_top1", "trained teacher"),
)


def print_summary(summary: dict[str, Any]) -> None:
    """The demo's result lines: kNN of each feature set, then M of K."""
    print("kNN top-1 on Fashion-MNIST val (train split as memory):")
    for key, text in KNN_ROWS:
        knn = ", ".join(f"k={k}: {100 * v:.1f}%" for k, v in summary[key].items())
        print(f"  {text:<26} {knn}")
    print(
        f"unique prototypes M = {summary['unique_prototypes']} of K = {summary['num_prototypes']}"
    )
