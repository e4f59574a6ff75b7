"""Freeing an FFCV loader prints nothing: numba's dispatcher finalisers must not fail.

FFCV's memory managers used to flip numba's interned `uint8[::1]` type to read-only, which
changes its hash while the JPEG decoder's overload table holds it in a key; freeing a loader
built before another one then printed "Exception ignored in: <finalize object ...> KeyError"
(see fastproto/data/ffcv_types.py). The check runs in a fresh interpreter, as a user's
`fastproto eval knn` does, and reads its stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fastproto.data_prep import prepare_fashion_mnist
from image_fixtures import fashion_mnist_like, write_fashion_mnist_idx

SCRIPT = textwrap.dedent(
    """
    import gc, sys
    from fastproto.data.loader import make_loader
    from fastproto.data.recipe import MultiCropRecipe

    recipe = MultiCropRecipe(
        num_global=1, global_size=16, global_scale=(1.0, 1.0), num_local=0,
        local_size=16, local_scale=(1.0, 1.0), ratio=(1.0, 1.0),
    )
    seen = 0
    for split in ("train", "val", "train"):  # each loader built while the previous one lives
        loader = make_loader(sys.argv[1], "ffcv", 4, recipe, split=split, workers=1,
                             drop_last=False)
        loader.set_epoch(0)
        seen += sum(len(batch.labels) for batch in loader)
        gc.collect()
    del loader
    gc.collect()
    print("images", seen)
    """
)


def test_freed_ffcv_loaders_print_no_ignored_exceptions(tmp_path: Path) -> None:
    images, labels = fashion_mnist_like(16, seed=2)
    write_fashion_mnist_idx(tmp_path / "fm", "train", images[:10], labels[:10])
    write_fashion_mnist_idx(tmp_path / "fm", "t10k", images[10:], labels[10:])
    out = prepare_fashion_mnist(tmp_path / "out", "ffcv", source=tmp_path / "fm")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "images 26" in done.stdout
    assert "Exception ignored" not in done.stderr, done.stderr
