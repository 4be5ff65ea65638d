"""Raw little-endian pixels: ``application/octet-stream`` with ``X-Dtype`` and ``X-Shape``."""

from __future__ import annotations

import numpy as np

from ..errors import BadRequest
from .buffer import array_from_bytes
from .dtypes import ACCEPTED_DTYPES_TEXT, dtype_from_name
from .layout import LAYOUTS_TEXT, frames_shape
from .limits import DecodeLimits, check_frames_shape
from .media import HDF5_MAGIC, NPY_MAGIC
from .options import parse_shape


def decode_raw(view: memoryview, options: dict[str, str], limits: DecodeLimits) -> np.ndarray:
    """Read a raw body as frames.

    Args:
        view: the body, C-contiguous little-endian pixels, row-major in the declared shape.
        options: normalised options; needs ``"dtype"`` and ``"shape"``.
        limits: checked on the declared shape before the body is touched.

    Returns:
        (N, P, H, W) in the declared dtype, native byte order, C-contiguous; a zero-copy view of
        the body when its address is aligned for the dtype.

    Raises:
        BadRequest: ``missing_option``, ``unsupported_dtype``, ``bad_shape``, ``size_mismatch``.
        PayloadTooLarge ``too_large``: the declared shape exceeds a limit.
    """
    for name, example in (("dtype", "uint16"), ("shape", "16,352,384")):
        if name not in options:
            raise BadRequest(
                "missing_option",
                f"raw bytes need X-{name.capitalize()} (header or form field {name!r}), "
                f"e.g. {example!r}; dtypes: {ACCEPTED_DTYPES_TEXT}; shapes: {LAYOUTS_TEXT}.",
            )
    dtype = dtype_from_name(options["dtype"])
    shape = frames_shape(parse_shape(options["shape"]))
    check_frames_shape(shape, limits)

    count = shape[0] * shape[1] * shape[2] * shape[3]
    expected = count * dtype.itemsize
    if len(view) != expected:
        raise BadRequest(
            "size_mismatch",
            f"shape {options['shape'].strip()} of {dtype.name} needs {expected} bytes, "
            f"the body has {len(view)} bytes.{_container_hint(view)}",
        )
    wire = dtype.newbyteorder("<")
    pixels = array_from_bytes(view, wire, count, offset=0)
    if not wire.isnative:  # only on a big-endian host
        pixels = pixels.astype(dtype)
    return pixels.reshape(shape)


def _container_hint(view: memoryview) -> str:
    head = bytes(view[:8])
    if head.startswith(NPY_MAGIC):
        return " The body starts like a .npy file: send it as application/x-npy."
    if head == HDF5_MAGIC:
        return " The body starts like an HDF5 file: send it as application/x-hdf5."
    return ""
