"""The collapse demo (`fastproto demo`, `make demo`): two runs of one recipe side by side.

The arms differ in KoLeo-proto alone: the baseline (method.koleo_proto = 0) and KoLeo-proto
(0.1, paper 1). Each trains in a process of its own with one torch thread and one loader
worker, so on 2 cores both run at the speed of one alone. The parent shows a progress bar per
arm (read from the arms' metrics.jsonl), then evaluates: kNN (k = 20) of each trained teacher
beside the raw pixels and the network at initialisation (the same for both arms: same seed),
M of K and the largest duplicate set; it prints them, writes demo_results.json and one figure.

Interrupting (Ctrl-C, SIGTERM) stops both arms at their next step with a checkpoint; rerunning
the same command resumes both, and an arm that had finished is only evaluated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fastproto.config import TrainConfig, load_config
from fastproto.train.demo import baseline_knn, ensure_demo_data, teacher_summary

ARMS = {"baseline": 0.0, "koleo-proto": 0.1}  # arm name -> method.koleo_proto
POLL_S = 1.0


@dataclass
class Arm:
    name: str
    koleo_proto: float
    run_dir: Path
    process: subprocess.Popen[bytes] | None = None
    bar: Any = None
    read_at: int = 0  # bytes of metrics.jsonl already read


def arm_command(recipe: str, data: str, arm: Arm, overrides: list[str]) -> list[str]:
    """The `fastproto train` command line of one arm."""
    return [
        sys.executable,
        "-m",
        "fastproto",
        "train",
        "--config",
        recipe,
        "--data",
        data,
        "--out",
        str(arm.run_dir),
        "--koleo-proto",
        repr(arm.koleo_proto),
        "run.progress=false",
        "data.workers=1",
        *overrides,
    ]


def _one_thread_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _follow(arm: Arm) -> None:
    """Move the arm's bar to the newest step (and M / K) of its metrics.jsonl."""
    path = arm.run_dir / "metrics.jsonl"
    if not path.exists():
        return
    with path.open("rb") as handle:
        handle.seek(arm.read_at)
        chunk = handle.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for the next poll
    arm.read_at += len(complete)
    for line in complete.decode().splitlines():
        row = json.loads(line)
        if row.get("kind") == "step":
            arm.bar.n = row["step"]
        elif row.get("kind") == "epoch":
            share = row["unique_prototypes"] / row["num_prototypes"]
            arm.bar.set_postfix({"M/K": f"{share:.2f}"}, refresh=False)
    arm.bar.refresh()


def train_arms(arms: list[Arm], recipe: str, data: str, total: int, overrides: list[str]) -> int:
    """Run the arms in parallel to the end; -> 0, or the first non-zero exit status (a stop
    by signal included: 130 or 143). Logs go to <arm>/train.log."""
    for position, arm in enumerate(arms):
        arm.run_dir.mkdir(parents=True, exist_ok=True)
        log = (arm.run_dir / "train.log").open("ab")
        arm.process = subprocess.Popen(
            arm_command(recipe, data, arm, overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_one_thread_env(),
        )
        arm.bar = tqdm(total=total, desc=f"{arm.name:<12}", unit="step", position=position)
    try:
        while any(arm.process.poll() is None for arm in arms if arm.process):
            for arm in arms:
                _follow(arm)
            time.sleep(POLL_S)
    except KeyboardInterrupt:  # the children got the same SIGINT: they checkpoint and stop
        for arm in arms:
            if arm.process is not None:
                arm.process.wait()
    finally:
        for arm in arms:
            _follow(arm)
            arm.bar.close()
    codes = [arm.process.wait() for arm in arms if arm.process is not None]
    return next((code for code in codes if code != 0), 0)


def stop_arms_on_sigterm(arms: list[Arm]) -> None:
    """Pass a SIGTERM of the parent on to the arms (Ctrl-C reaches them directly)."""

    def forward(signum: int, _frame: object) -> None:
        for arm in arms:
            if arm.process is not None and arm.process.poll() is None:
                arm.process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)


def run_two_arm_demo(
    out: Path,
    seed: int = 0,
    overrides: list[str] | None = None,
    recipe: str = "demo",
    images: int | None = None,
) -> dict[str, Any]:
    """Train both arms of `recipe` into out/<arm>, evaluate, print, save
    out/demo_results.json and out/demo.png; -> the summary (or {"exit": code} if an arm
    stopped early)."""
    from fastproto.train.demo import DEMO_IMAGES_PER_SPLIT

    extra = [f"run.seed={seed}", *(overrides or [])]
    config = load_config(recipe, extra)
    data = str(ensure_demo_data(config.data.backend, images or DEMO_IMAGES_PER_SPLIT))
    config.data.path = data
    arms = [Arm(name, weight, out / name) for name, weight in ARMS.items()]
    stop_arms_on_sigterm(arms)
    code = train_arms(arms, recipe, data, total_steps(config, data), extra)
    if code != 0:
        return {"exit": code, "logs": [str(arm.run_dir / "train.log") for arm in arms]}
    summary = evaluate_arms(config, arms, data)
    (out / "demo_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_arms(summary)
    from fastproto.train.collapse_figure import plot_arms

    png = plot_arms({arm.name: arm.run_dir for arm in arms}, summary, out / "demo.png")
    print(f"M / K, nearest-neighbour distances and kNN of both arms: {png}")
    return summary


def total_steps(config: TrainConfig, data: str) -> int:
    """Steps of one arm's whole run (for the bars): epochs x images // batch."""
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    images = int(manifest["splits"]["train"]["count"])
    return config.optim.epochs * (images // config.optim.batch_size)


def evaluate_arms(config: TrainConfig, arms: list[Arm], data: str) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    summary: dict[str, Any] = baseline_knn(config, data, device)
    for arm in arms:
        summary[arm.name] = teacher_summary(arm.run_dir, data, device) | last_usage(arm.run_dir)
    return summary


def last_usage(run_dir: Path) -> dict[str, Any]:
    """Used and effective prototypes of the run's last epoch record (empty if it has none)."""
    from fastproto.train.metrics import read_metrics

    epochs = read_metrics(run_dir / "metrics.jsonl", "epoch")
    keys = ("used_prototypes", "effective_prototypes")
    return {k: epochs[-1][k] for k in keys if epochs and k in epochs[-1]}


def print_arms(summary: dict[str, Any]) -> None:
    """The demo's result lines: kNN of each feature set, then M of K per arm."""
    print("kNN top-1 (k = 20) on Fashion-MNIST val, train split as memory:")
    print(f"  {'raw pixels':<28} {100 * summary['knn_top1_raw_pixels']['20']:.1f}%")
    print(f"  {'network at initialisation':<28} {100 * summary['knn_top1_at_init']['20']:.1f}%")
    for name in ARMS:
        arm = summary[name]
        m, k = arm["unique_prototypes"], arm["num_prototypes"]
        used = f", used {arm['used_prototypes']}" if "used_prototypes" in arm else ""
        print(
            f"  {'trained teacher, ' + name:<28} {100 * arm['knn_top1']['20']:.1f}%   "
            f"M = {m} of K = {k} (M / K {m / k:.2f}), largest duplicate set "
            f"{arm['largest_duplicate_set']}{used}"
        )
