"""HDF5 / CXI files (``application/x-hdf5``), read from the request's bytes only.

The file is opened through h5py's file-object driver over a read-only view of the body, so the
HDF5 library never gets a path on the host. Anything in the file that would make the library
open another file is refused before it is followed or read:

- external links (the dataset path is walked one link at a time with ``H5Lget_info``, which
  never traverses the link it describes; soft links inside the file are followed by hand);
- external raw storage (``external=`` datasets) and virtual datasets (VDS);
- filters outside the known compression set (a user-defined filter could load a plugin).

Sizes are checked on the declared dataspace and chunk shape before anything is allocated or
decompressed, which defeats decompression bombs.
"""

from __future__ import annotations

from typing import NoReturn

import h5py
import numpy as np

try:  # a declared dependency; registers the LZ4, bitshuffle, zstd, blosc, ... filters with HDF5
    import hdf5plugin
    _PLUGIN_FILTERS = {code: name for name, code in hdf5plugin.FILTERS.items()}
except ImportError:  # pragma: no cover - e.g. a bare GPU image: only HDF5's own filters decode
    _PLUGIN_FILTERS = {}

from ..errors import BadRequest, PayloadTooLarge, RequestError
from ..wire import DEFAULT_DATASET
from .buffer import ReadOnlyMemoryFile
from .dtypes import ACCEPTED_DTYPES_TEXT, wire_dtype_name
from .layout import FramesShape, frames_shape
from .limits import DecodeLimits, check_frames_shape

MAX_SOFT_LINK_HOPS = 16

# HDF5's built-in filters, h5py's LZF and the compressors hdf5plugin registers.
_BUILTIN_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "gzip",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    h5py.h5z.FILTER_SZIP: "szip",
    h5py.h5z.FILTER_NBIT: "nbit",
    h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
    h5py.h5z.FILTER_LZF: "lzf",
}
KNOWN_FILTERS: dict[int, str] = {
    **_BUILTIN_FILTERS,
    **_PLUGIN_FILTERS,
}


def decode_hdf5(view: memoryview, dataset: str | None, limits: DecodeLimits) -> np.ndarray:
    """Read one dataset of the HDF5 file in ``view`` as frames.

    Args:
        view: the whole HDF5 file.
        dataset: path of the dataset inside the file; ``None`` for ``/entry_1/data_1/data``.
        limits: checked on the dataset's declared shape and chunk shape before reading.

    Returns:
        (N, P, H, W) in the dataset's dtype, native byte order, C-contiguous (a new array: the
        library decompresses / byte-swaps into it). A 3-D dataset is N single-panel frames.

    Raises:
        BadRequest: ``bad_hdf5``, ``hdf5_dataset_not_found``, ``hdf5_external_link``,
            ``hdf5_external_storage``, ``hdf5_virtual_dataset``, ``hdf5_unsupported_filter``,
            ``unsupported_dtype``, ``bad_shape``, ``bad_option``.
        PayloadTooLarge ``too_large``: the dataset or one of its chunks exceeds a limit.
    """
    path = DEFAULT_DATASET if dataset is None else dataset
    parts = _path_parts(path)
    try:
        with h5py.File(ReadOnlyMemoryFile(view), "r") as file:
            node = _resolve(file, parts, path)
            dtype, shape = _check_dataset(node, path, limits)
            pixels = np.empty(node.shape, dtype=dtype)
            node.read_direct(pixels)
    except RequestError:
        raise
    except Exception as error:  # noqa: BLE001 - the HDF5 library's verdict on a malformed file
        raise BadRequest(
            "bad_hdf5", f"the body is not a readable HDF5 file: {_first_line(error)}."
        ) from None
    return pixels.reshape(shape)


def _path_parts(path: str) -> list[str]:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise BadRequest("bad_option", f"X-Dataset {path!r} does not name a dataset.")
    return parts


def _resolve(file: h5py.File, parts: list[str], path: str) -> h5py.Dataset:
    """The dataset at ``parts``, following hard and in-file soft links only.

    Each step looks at one link by name (``H5Lexists`` / ``H5Lget_info`` do not traverse the
    link they describe) before anything is opened through it.
    """
    node: h5py.Group | h5py.Dataset | h5py.Datatype = file
    pending = list(parts)
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if not isinstance(node, h5py.Group):
            _not_found(path, f"{node.name!r} is not a group")
        encoded = name.encode("utf-8")
        if not node.id.links.exists(encoded):
            _not_found(path, f"{node.name.rstrip('/')}/{name} does not exist")
        kind = node.id.links.get_info(encoded).type
        if kind == h5py.h5l.TYPE_HARD:
            node = node[name]
        elif kind == h5py.h5l.TYPE_SOFT:
            hops += 1
            if hops > MAX_SOFT_LINK_HOPS:
                raise BadRequest("bad_hdf5", f"soft links on the way to {path!r} form a loop.")
            target = node.id.links.get_val(encoded).decode("utf-8", "replace")
            if target.startswith("/"):
                node = file
            pending[:0] = [part for part in target.split("/") if part]
        elif kind == h5py.h5l.TYPE_EXTERNAL:
            raise BadRequest(
                "hdf5_external_link",
                f"{path!r} goes through an external link to another file; links out of the "
                "request are never followed: send the data itself in the file.",
            )
        else:
            raise BadRequest(
                "bad_hdf5", f"{path!r} goes through a user-defined link, which is not followed."
            )
    if not isinstance(node, h5py.Dataset):
        _not_found(path, "it is not a dataset")
    return node


def _check_dataset(node: h5py.Dataset, path: str, limits: DecodeLimits) -> tuple[np.dtype, FramesShape]:
    """The native dtype and frames shape to read ``node`` as, after every safety check."""
    if node.is_virtual:
        raise BadRequest(
            "hdf5_virtual_dataset",
            f"dataset {path!r} is a virtual dataset (VDS) mapping other files or datasets; "
            "send the pixel data itself.",
        )
    if node.external:
        raise BadRequest(
            "hdf5_external_storage",
            f"dataset {path!r} keeps its data in external files; send the pixel data inside "
            "the HDF5 file.",
        )
    _check_filters(node, path)

    name = wire_dtype_name(node.dtype)
    if name is None or h5py.check_enum_dtype(node.dtype) is not None:
        raise BadRequest(
            "unsupported_dtype",
            f"dataset {path!r} has dtype {node.dtype}; accepted dtypes: {ACCEPTED_DTYPES_TEXT}.",
        )
    if node.shape is None:
        raise BadRequest("bad_shape", f"dataset {path!r} has no dataspace (it is empty).")
    shape = frames_shape(node.shape, stack_is_frames=True)
    check_frames_shape(shape, limits)
    if node.chunks is not None and int(np.prod(node.chunks, dtype=object)) > limits.max_pixels:
        raise PayloadTooLarge(
            "too_large",
            f"dataset {path!r} has chunks of {node.chunks} pixels, more than the limit of "
            f"{limits.max_pixels} pixels per request; rechunk it smaller.",
        )
    return np.dtype(name), shape


def _check_filters(node: h5py.Dataset, path: str) -> None:
    plist = node.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        code, _flags, _values, label = plist.get_filter(index)
        if code not in KNOWN_FILTERS or not h5py.h5z.filter_avail(code):
            shown = label.decode("ascii", "replace")[:40] if isinstance(label, bytes) else label
            raise BadRequest(
                "hdf5_unsupported_filter",
                f"dataset {path!r} uses filter {code} ({shown!r}), which this server does not "
                f"decode; accepted: {', '.join(sorted(set(KNOWN_FILTERS.values())))}.",
            )


def _not_found(path: str, reason: str) -> NoReturn:
    raise BadRequest(
        "hdf5_dataset_not_found",
        f"no dataset {path!r} in the HDF5 file ({reason}); name it with X-Dataset "
        f"(default {DEFAULT_DATASET}).",
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
