"""Import FFCV without losing torch's thread count.

FFCV's compiler module calls `torch.set_num_threads(1)` when it is first imported (and sets the
count to its worker count whenever a loader starts; `FFCVLoader` puts that one back). A process
that imported FFCV for any reason, a data conversion or a loader, therefore ran every later
torch op on one thread: on 2 cores the demo trained 1.35x slower than it could. Every place
that imports FFCV calls `import_ffcv()` first, so the first import happens here, with the count
saved and restored around it.
"""

from __future__ import annotations

import sys


def import_ffcv() -> None:
    """Import the ffcv package (a no-op once imported), keeping torch's thread count."""
    if "ffcv" in sys.modules:
        return
    import torch

    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401  (its compiler module sets torch's thread count to 1)
    finally:
        torch.set_num_threads(threads)
