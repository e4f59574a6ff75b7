"""The tiny training run the fault tests share: a pico ViT, K = 32, batches of 8 over 24
Fashion-MNIST images (3 steps per epoch), a checkpoint every step."""

from __future__ import annotations

from pathlib import Path

import torch

from fastproto.config import TrainConfig, load_config
from fastproto.train.distributed import DistInfo
from fastproto.train.setup import build_state
from fastproto.train.step import TrainState

# the network, batch and schedule of every tiny run (test_train.py adds iBOT to them)
TINY_NETWORK = [
    "model.arch=vit_pico_patch7_28",
    "head.num_prototypes=32",
    "head.hidden_dim=32",
    "head.bottleneck_dim=16",
    "optim.batch_size=8",
    "data.local_crops=2",
    "data.workers=1",
    "optim.epochs=3",
    "run.progress=false",
    "run.checkpoint_every=1",
    "run.keep_last=10",
    "optim.warmup_epochs=1",
    "method.loss_impl=chunked",
]
TINY = [*TINY_NETWORK, "method.name='dino'"]


# a step without data: a pico ViT on 28-pixel crops (local crops 12), K = 32, batch 4, on the CPU
STEP_ONLY = [
    "model.arch=vit_pico_patch4_28",
    "data.local_size=12",
    "model.drop_path=0.0",
    "head.num_prototypes=32",
    "head.hidden_dim=32",
    "head.bottleneck_dim=16",
    "optim.batch_size=4",
    "method.loss_impl='chunked'",
    "run.device='cpu'",
]


def step_state(*extra: str) -> TrainState:
    """A built TrainState of the demo recipe at STEP_ONLY's sizes, one process."""
    config = load_config("demo", [*STEP_ONLY, *extra])
    return build_state(config, DistInfo(0, 1, 0, torch.device("cpu")))


def prepare_data(root: Path) -> Path:
    """Fashion-MNIST, 24 images per split, as FFCV files under `root`."""
    from fastproto.data_prep.prepare import prepare_fashion_mnist

    return prepare_fashion_mnist(root, "ffcv", limit=24)


def tiny(data: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config("demo", [f"data.path={str(data)!r}", f"run.out={str(out)!r}", *TINY, *extra])
