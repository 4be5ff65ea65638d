"""Zero-copy access to a request body."""

from __future__ import annotations

import io

import numpy as np

from ..errors import BadRequest

BytesLike = bytes | bytearray | memoryview


def byte_view(body: object) -> memoryview:
    """``body`` as a flat, C-contiguous memoryview of unsigned bytes (no copy).

    Raises:
        BadRequest ``bad_body``: ``body`` is not a bytes-like object (e.g. TorchServe decoded a
            text or JSON body into ``str``/``dict``), or not contiguous.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise BadRequest(
            "bad_body",
            f"the request body must be binary data, got {type(body).__name__}; "
            "send the frames as application/octet-stream, application/x-npy or application/x-hdf5.",
        )
    view = memoryview(body)
    if not view.c_contiguous:
        raise BadRequest("bad_body", "the request body buffer is not contiguous.")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def array_from_bytes(view: memoryview, dtype: np.dtype, count: int, offset: int) -> np.ndarray:
    """``count`` items of ``dtype`` starting at byte ``offset`` of ``view``, as a 1-D array.

    A zero-copy view of the body (read-only when the body is ``bytes``) when its address suits
    the dtype's alignment; otherwise an aligned copy, same dtype. The caller has checked that
    ``offset + count * dtype.itemsize <= len(view)``.
    """
    array = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    if array.ctypes.data % dtype.alignment:
        array = array.copy()
    return array


class ReadOnlyMemoryFile(io.RawIOBase):
    """A read-only, seekable binary file over a memoryview, without copying it.

    HDF5 reads the request through this (h5py's file-object driver): it can only ever see the
    request's bytes, never write, and no path on the host is involved.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._pos : self._pos + len(target)]
        target[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        position = base + offset
        if position < 0:
            raise OSError("negative seek position")
        self._pos = position
        return position

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        raise OSError("the request body is read-only")

    def write(self, data) -> int:  # type: ignore[override]
        raise OSError("the request body is read-only")

    def flush(self) -> None:
        return None
