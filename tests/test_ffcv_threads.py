"""Importing and running FFCV leaves torch's thread count alone.

FFCV's import sets torch's intra-op thread count to 1 and each loader start sets it to the
worker count (fastproto/data/ffcv_threads.py); before the fix a training run on 2 cores computed
on one thread. The check runs in a fresh interpreter, where FFCV has not been imported yet: a
conversion (which imports FFCV's writer), then a loader epoch, each followed by the count.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from image_fixtures import fashion_mnist_like, write_fashion_mnist_idx

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(3)
    from fastproto.data.loader import make_loader
    from fastproto.data.recipe import MultiCropRecipe
    from fastproto.data_prep import prepare_fashion_mnist

    out = prepare_fashion_mnist(sys.argv[2], "ffcv", source=sys.argv[1])
    print("after conversion", torch.get_num_threads())
    recipe = MultiCropRecipe(
        num_global=1, global_size=16, global_scale=(1.0, 1.0), num_local=0,
        local_size=16, local_scale=(1.0, 1.0), ratio=(1.0, 1.0),
    )
    loader = make_loader(out, "ffcv", 4, recipe, split="train", workers=2, drop_last=False)
    loader.set_epoch(0)
    counts = {torch.get_num_threads() for _ in loader}
    print("during the epoch", sorted(counts), "after it", torch.get_num_threads())
    """
)


def test_ffcv_keeps_torch_thread_count(tmp_path: Path) -> None:
    images, labels = fashion_mnist_like(16, seed=3)
    write_fashion_mnist_idx(tmp_path / "fm", "train", images[:10], labels[:10])
    write_fashion_mnist_idx(tmp_path / "fm", "t10k", images[10:], labels[10:])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "fm"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "after conversion 3" in done.stdout, done.stdout
    assert "during the epoch [3] after it 3" in done.stdout, done.stdout
