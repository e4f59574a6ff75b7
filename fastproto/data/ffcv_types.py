"""Keep FFCV from corrupting numba's shared array types.

FFCV's memory managers build the numba type of their state by taking `nb.uint8[::1]` (and
friends) and setting `.mutable = False` on it. numba interns its types, so that object is the
one every writable 1-D uint8 array is typed as, and its hash is the hash of its key, which
includes `mutable`. Any dict that already holds the type in a key then has an entry under a
stale hash. The one that shows is the overload table of the JPEG decoder a loader compiled
(`imdecode(..., scratch: uint8[::1], ...)`): once the next FFCV loader is built, the key can no
longer be found, and when the first loader is freed numba's dispatcher finaliser iterates that
table and fails with "Exception ignored in: <finalize object ...> KeyError".

`patch_state_types()` replaces both managers' `state_type` with one that builds new read-only
types (`types.Array(..., readonly=True)`), the same types FFCV meant, without touching the
interned writable ones, and the OS-cache manager's `compile_reader`, whose explicit signature
returns `nb.uint8[::1]` and so, in FFCV's version, relied on that object having been flipped to
read-only. It is idempotent and is applied before any FFCV loader is built.
"""

from __future__ import annotations

from typing import Any

_PATCHED = [False]


def _readonly(dtype: Any, ndim: int) -> Any:
    from numba import types

    return types.Array(dtype, ndim, "C", readonly=True)


def _os_cache_state_type(self: Any) -> Any:
    from numba import types

    # FFCV marks only the data array read-only (its second assignment targets t1 again).
    return types.Tuple([_readonly(types.uint8, 1), types.uint64[::1], types.uint64[::1]])


def _os_cache_compile_reader(self: Any) -> Any:
    import numpy as np
    from ffcv.pipeline.compiler import Compiler
    from numba import types

    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address : address + size]

    signature = _readonly(types.uint8, 1)(types.uint64, self.state_type)
    return Compiler.compile(read, signature)


def _process_cache_state_type(self: Any) -> Any:
    from numba import types

    # [pages, page size] data, page pointers, their sizes, page -> slot
    return types.Tuple(
        [
            _readonly(types.uint8, 2),
            _readonly(types.uint64, 1),
            _readonly(types.uint64, 1),
            _readonly(types.uint32, 1),
        ]
    )


def patch_state_types() -> None:
    """Make FFCV's memory managers stop mutating numba's interned array types."""
    if _PATCHED[0]:
        return
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.memory_managers.process_cache.manager import ProcessCacheManager

    OSCacheManager.state_type = property(_os_cache_state_type)
    OSCacheManager.compile_reader = _os_cache_compile_reader
    ProcessCacheManager.state_type = property(_process_cache_state_type)
    _PATCHED[0] = True
