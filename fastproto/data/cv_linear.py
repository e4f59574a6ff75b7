"""Bilinear crop-resize callable from FFCV's compiled loop, through OpenCV's C API.

libffcv exposes only an area-filter resize. The OpenCV that libffcv itself links also
exports the C function `cvResize(const CvArr* src, CvArr* dst, int interpolation)`, which
takes plain `CvMat` headers; numba can call it through ctypes, so the "fast" resize mode
(see `fastproto.data.recipe`) needs no extension of its own. A CvMat header on x86-64 is
40 bytes, written here as five int64 words:
  word 0: int type (low half) | int step in bytes (high half)
  word 1: int* refcount (unused, 0)     word 2: int hdr_refcount (unused, 0) + padding
  word 3: uchar* data                   word 4: int rows (low half) | int cols (high half)
The source header points into the decoded image at the window's first pixel with the
image's row step, so no pixel is copied before resizing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastproto.data.crops import njit

CV_INTER_LINEAR = 1
_CV_MAT_MAGIC = 0x42420000
_CV_8UC3 = 16
_CV_MAT_CONT_FLAG = 1 << 14
_HEADER_WORDS = 5


def _loaded_imgproc() -> str | None:
    """Path of the libopencv_imgproc that libffcv loaded into this process, if any."""
    from fastproto.data.ffcv_threads import import_ffcv

    import_ffcv()
    import ffcv._libffcv  # noqa: F401  (loads libffcv and the OpenCV it links)

    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    for line in maps.read_text().splitlines():
        if "libopencv_imgproc" in line:
            return line.split()[-1]
    return None


def load_cv_resize() -> Callable[..., None]:
    """ctypes `cvResize(src header address, dst header address, interpolation)`."""
    path = _loaded_imgproc() or ctypes.util.find_library("opencv_imgproc")
    if path is None:
        raise RuntimeError(
            "resize='fast' needs OpenCV's libopencv_imgproc (libffcv links it); "
            "install libopencv-dev or use resize='antialias'"
        )
    try:
        fn = ctypes.CDLL(path).cvResize
    except AttributeError as err:
        raise RuntimeError(
            f"{path} has no cvResize (OpenCV without its C API); use resize='antialias'"
        ) from err
    fn.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int32]
    fn.restype = None
    return fn


@njit(cache=True)
def write_header(header: np.ndarray, address: int, step: int, rows: int, cols: int) -> None:
    """Fill int64 [5] `header` as a CvMat of rows x cols uint8 RGB pixels at `address`."""
    kind = _CV_MAT_MAGIC | _CV_8UC3
    if step == cols * 3 or rows == 1:
        kind |= _CV_MAT_CONT_FLAG
    header[0] = kind | (step << 32)
    header[1] = 0
    header[2] = 0
    header[3] = address
    header[4] = rows | (cols << 32)


@njit(cache=True)
def new_headers() -> np.ndarray:
    """int64 [2, 5]: scratch for one (source, destination) pair of CvMat headers."""
    return np.zeros((2, _HEADER_WORDS), dtype=np.int64)


def make_linear_resize(cv_resize: Callable[..., None]) -> Callable[..., None]:
    """A compiled `resize(image [H, W, 3], top, left, h, w, out [S, S, 3], headers [2, 5])`.

    Bilinear resize of image[top:top + h, left:left + w] into `out` (both uint8 HWC with
    packed pixels, rows may be strided; `out` contiguous); `headers` is caller-owned scratch
    from `new_headers()`.
    """

    @njit
    def resize(image, top, left, h, w, out, headers):
        if image.strides[1] != 3 or image.strides[2] != 1 or out.strides[0] != out.shape[1] * 3:
            raise ValueError("image pixels must be packed HWC uint8 and out contiguous")
        step = image.strides[0]
        start = image.ctypes.data + top * step + left * 3
        write_header(headers[0], start, step, h, w)
        write_header(headers[1], out.ctypes.data, out.shape[1] * 3, out.shape[0], out.shape[1])
        cv_resize(headers[0].ctypes.data, headers[1].ctypes.data, CV_INTER_LINEAR)

    return resize
