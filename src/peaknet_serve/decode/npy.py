"""NumPy ``.npy`` files (``application/x-npy``), read without pickle and without copying.

The header is parsed here rather than by ``np.load``: only the three literal keys of the format
are accepted (through ``ast.literal_eval``, which evaluates literals and nothing else), and sizes
are checked against the limits before the data is touched. Object arrays (pickles), structured
dtypes and big-endian data are refused; a Fortran-ordered array is copied once into C order, in
its own dtype.
"""

from __future__ import annotations

import ast
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from ..errors import BadRequest
from .buffer import array_from_bytes
from .dtypes import ACCEPTED_DTYPES_TEXT, wire_dtype_name
from .layout import frames_shape
from .limits import DecodeLimits, check_frames_shape
from .media import NPY_MAGIC

MAX_HEADER_BYTES = 10_000  # np.lib.format's own default bound
_HEADER_KEYS = {"descr", "fortran_order", "shape"}
# (major version) -> (struct format of the header length, text encoding of the header)
_VERSIONS = {1: ("<H", "latin1"), 2: ("<I", "latin1"), 3: ("<I", "utf8")}


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares.

    Attributes:
        dtype: a wire dtype in native byte order.
        shape: the array's shape as stored.
        fortran_order: whether the data is stored column-major.
        data_offset: byte offset of the first pixel in the file.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int


def read_npy_header(
    view: memoryview, dtype_of: Callable[[object], np.dtype] | None = None, what: str = "the body"
) -> NpyHeader:
    """Parse and validate the header of the ``.npy`` file in ``view``.

    Args:
        view: the file's bytes.
        dtype_of: the header's ``descr`` -> the dtype to read, raising :class:`BadRequest` for
            one it refuses; default: a wire (pixel) dtype in native byte order.
        what: what ``view`` is, for the error messages (``"the mask part"``).

    Raises:
        BadRequest: ``bad_npy`` (malformed header), ``unsupported_dtype`` (object, structured,
            big-endian or non-pixel dtype), or what ``dtype_of`` raises.
    """

    def _bad(reason: str) -> NoReturn:
        _bad_npy(reason, what)

    if bytes(view[: len(NPY_MAGIC)]) != NPY_MAGIC:
        _bad("it does not start with the .npy signature b'\\x93NUMPY'")
    if len(view) < len(NPY_MAGIC) + 2:
        _bad("it ends inside the header")
    major, minor = view[6], view[7]
    if major not in _VERSIONS or minor != 0:
        _bad(f"format version {major}.{minor} is unknown; versions 1.0, 2.0 and 3.0 are read")
    length_format, text_encoding = _VERSIONS[major]
    length_start = len(NPY_MAGIC) + 2
    header_start = length_start + struct.calcsize(length_format)
    if len(view) < header_start:
        _bad("it ends inside the header")
    (header_length,) = struct.unpack(length_format, view[length_start:header_start])
    if header_length > MAX_HEADER_BYTES:
        _bad(f"its header is {header_length} bytes; at most {MAX_HEADER_BYTES} are read")
    data_offset = header_start + header_length
    if len(view) < data_offset:
        _bad("it ends inside the header")

    try:
        text = bytes(view[header_start:data_offset]).decode(text_encoding)
        with warnings.catch_warnings():  # e.g. invalid escapes: the client's problem, not the log's
            warnings.simplefilter("ignore")
            header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        _bad("its header is not a Python literal dictionary")
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        _bad(f"its header must be a dictionary with exactly the keys {sorted(_HEADER_KEYS)}")

    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        _bad(f"its shape {clip_repr(shape)} is not a tuple of non-negative integers")
    if type(header["fortran_order"]) is not bool:
        _bad("its 'fortran_order' is not True or False")
    return NpyHeader(
        dtype=(dtype_of or _pixel_dtype)(header["descr"]),
        shape=shape,
        fortran_order=header["fortran_order"],
        data_offset=data_offset,
    )


def decode_npy(view: memoryview, limits: DecodeLimits) -> np.ndarray:
    """Read a ``.npy`` body as frames.

    Returns:
        (N, P, H, W) in the file's dtype, native byte order, C-contiguous; a zero-copy view of the
        body unless the data is Fortran-ordered or misaligned.

    Raises:
        BadRequest: ``bad_npy``, ``unsupported_dtype``, ``bad_shape``, ``size_mismatch``.
        PayloadTooLarge ``too_large``: the declared shape exceeds a limit.
    """
    header = read_npy_header(view)
    shape = frames_shape(header.shape)
    check_frames_shape(shape, limits)

    count = shape[0] * shape[1] * shape[2] * shape[3]
    expected = count * header.dtype.itemsize
    available = len(view) - header.data_offset
    if available != expected:
        raise BadRequest(
            "size_mismatch",
            f"the .npy header declares shape {header.shape} of {header.dtype.name} "
            f"({expected} bytes of data), the file has {available} bytes of data"
            f"{' (truncated)' if available < expected else ''}.",
        )
    pixels = array_from_bytes(view, header.dtype, count, header.data_offset)
    if header.fortran_order:
        pixels = np.ascontiguousarray(pixels.reshape(header.shape[::-1]).transpose())
    return pixels.reshape(shape)


def _pixel_dtype(descr: object) -> np.dtype:
    if not isinstance(descr, str):
        raise BadRequest(
            "unsupported_dtype",
            f"structured .npy arrays are not accepted; accepted dtypes: {ACCEPTED_DTYPES_TEXT}.",
        )
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError):
        _bad_npy(f"its dtype {clip_repr(descr)} is not a NumPy dtype")
    if dtype.hasobject:
        raise BadRequest(
            "unsupported_dtype",
            f"object (pickled) .npy arrays are never loaded; save a numeric array ({ACCEPTED_DTYPES_TEXT}).",
        )
    name = wire_dtype_name(dtype)
    if name is None:
        raise BadRequest(
            "unsupported_dtype",
            f".npy dtype {clip_repr(descr)} is not supported; accepted dtypes: {ACCEPTED_DTYPES_TEXT}.",
        )
    if not dtype.isnative:
        raise BadRequest(
            "unsupported_dtype",
            f".npy dtype {clip_repr(descr)} is big-endian; save it little-endian, "
            f"e.g. np.save(f, a.astype('<{dtype.kind}{dtype.itemsize}')).",
        )
    return dtype


def _bad_npy(reason: str, what: str = "the body") -> NoReturn:
    raise BadRequest("bad_npy", f"{what} is not a valid .npy file: {reason}.")


def clip_repr(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (then ending ``...``), for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
