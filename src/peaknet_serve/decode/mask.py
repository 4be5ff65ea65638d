"""A request's own bad-pixel mask: the multipart part ``mask``, read against the request's frames.

The convention is the deployment mask's (:mod:`peaknet_serve.config.bad_pixels`, psana's, OM's and
CXI files'): non-zero = good pixel, 0 = bad. The part is either

* a ``.npy`` file (no pickles) of bool or any integer dtype, little-endian or one-byte, or
* raw ``uint8`` bytes, one byte per pixel, row-major in the frames' own shape,

and for frames of shape (N, P, H, W) it holds

==================  ==========================================
 shape               applies to
==================  ==========================================
 (P, H, W)           every frame of the request
 (N, P, H, W)        frame by frame
 (H, W)              every frame, when P == 1
==================  ==========================================

(raw bytes: P*H*W of them for every frame, N*P*H*W frame by frame). The shape and byte count are
checked against the frames before anything the size of the mask is allocated; every problem is a
400 ``bad_mask``.
"""

from __future__ import annotations

import math
from typing import NoReturn

import numpy as np

from ..errors import BadRequest
from .buffer import BytesLike, array_from_bytes, byte_view
from .layout import FramesShape
from .limits import DecodeLimits
from .media import HDF5_MAGIC, NPY_MAGIC
from .npy import clip_repr, read_npy_header

MASK_FIELD = "mask"
MASK_DTYPES_TEXT = "bool or an integer dtype"
MASK_LAYOUTS_TEXT = "(P, H, W) for every frame, (N, P, H, W) frame by frame, or (H, W) for single-panel frames"


def accepted_mask_shapes(frames: FramesShape) -> list[tuple[int, ...]]:
    """The mask shapes that fit frames of shape ``(N, P, H, W)``, one mask for all frames first."""
    n, p, h, w = frames
    shapes = [(p, h, w), (n, p, h, w)]
    return [*shapes, (h, w)] if p == 1 else shapes


def decode_mask(part: BytesLike, frames: FramesShape, limits: DecodeLimits) -> np.ndarray:
    """Read the ``mask`` part of a request whose frames have shape ``frames`` (N, P, H, W).

    Args:
        part: the part's bytes: a ``.npy`` file (recognised by its signature) or raw ``uint8``.
        frames: the decoded frames' (N, P, H, W).
        limits: ``max_body_bytes`` bounds the part's length.

    Returns:
        (M, P, H, W) bool, True = good pixel, C-contiguous; M is 1 (one mask for every frame) or N.

    Raises:
        BadRequest ``bad_mask``: an empty or oversized part, a malformed ``.npy``, a dtype that is
            not bool or integer, a shape or byte count that does not fit the frames, or no good pixel.
    """
    view = byte_view(part)
    if len(view) == 0:
        _bad("the part is empty", frames)
    if len(view) > limits.max_body_bytes:
        _bad(f"the part is {len(view)} bytes, over the limit of {limits.max_body_bytes} bytes", frames)
    if bytes(view[: len(NPY_MAGIC)]) == NPY_MAGIC:
        values = _npy_values(view, frames)
    else:
        values = _raw_values(view, frames)
    good = np.ascontiguousarray(values != 0)
    if not good.any():
        _bad("every pixel is marked bad (masks mark good pixels non-zero: 1 = good)", frames)
    return good


def _npy_values(view: memoryview, frames: FramesShape) -> np.ndarray:
    """The ``.npy`` mask's values as (M, P, H, W) in its own dtype (a view of the part where it can be)."""
    try:
        header = read_npy_header(view, dtype_of=_mask_dtype, what="it")
    except BadRequest as error:
        _bad(error.message, frames)
    shape = _as_frames_mask(header.shape, frames)
    count = math.prod(header.shape)
    expected = count * header.dtype.itemsize
    available = len(view) - header.data_offset
    if available != expected:
        _bad(
            f"its header declares {header.shape} of {header.dtype.name} ({expected} bytes of data), "
            f"the part has {available} bytes of data",
            frames,
        )
    values = array_from_bytes(view, header.dtype, count, header.data_offset)
    if header.fortran_order:
        values = values.reshape(header.shape[::-1]).transpose()
    return values.reshape(shape)


def _raw_values(view: memoryview, frames: FramesShape) -> np.ndarray:
    """Raw ``uint8`` mask bytes as (M, P, H, W): P*H*W bytes (M = 1) or N*P*H*W (M = N)."""
    n, p, h, w = frames
    per_frame = p * h * w
    if len(view) not in (per_frame, n * per_frame):
        hdf5 = " (it starts like an HDF5 file, which is not read as a mask)" if bytes(view[:8]) == HDF5_MAGIC else ""
        _bad(
            f"raw mask bytes are one uint8 per pixel: {per_frame} for every frame or {n * per_frame} "
            f"frame by frame, the part has {len(view)}{hdf5}",
            frames,
        )
    m = len(view) // per_frame
    return array_from_bytes(view, np.dtype(np.uint8), m * per_frame, 0).reshape(m, p, h, w)


def _as_frames_mask(shape: tuple[int, ...], frames: FramesShape) -> tuple[int, int, int, int]:
    """The (M, P, H, W) a mask of ``shape`` is read as for ``frames``."""
    if shape not in accepted_mask_shapes(frames):
        _bad(f"its shape {shape} does not fit the frames", frames)
    n, p, h, w = frames
    return (n, p, h, w) if len(shape) == 4 else (1, p, h, w)


def _mask_dtype(descr: object) -> np.dtype:
    """A ``.npy`` mask's dtype: bool or integer, never object, structured or big-endian (multi-byte)."""
    try:
        dtype = np.dtype(descr) if isinstance(descr, str) else None
    except (TypeError, ValueError, SyntaxError):
        dtype = None
    if dtype is None or dtype.kind not in "biu" or dtype.metadata or not dtype.isnative:
        raise BadRequest(
            "bad_mask", f"its dtype {clip_repr(descr)} is not {MASK_DTYPES_TEXT} in little-endian (native) byte order"
        )
    return dtype


def _bad(reason: str, frames: FramesShape) -> NoReturn:
    reason = reason.rstrip(".")
    shapes = ", ".join(str(s) for s in accepted_mask_shapes(frames))
    raise BadRequest(
        "bad_mask",
        f"the mask part is not a bad-pixel mask of these {frames} frames: {reason}. "
        f"Send a .npy ({MASK_DTYPES_TEXT}) or raw uint8 bytes, non-zero = good pixel, "
        f"of shape {MASK_LAYOUTS_TEXT}: here {shapes}.",
    )
