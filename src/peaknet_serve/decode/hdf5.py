"""HDF5 / CXI files (``application/x-hdf5``), read from the request's bytes only, within a budget.

The file is opened through h5py's file-object driver over a read-only view of the body, so the
HDF5 library never gets a path on the host, and HDF5 itself only ever parses metadata:

1. **Resolve** the dataset path one link at a time (``H5Lget_info`` never traverses the link it
   describes): hard links and in-file soft links are followed by hand, at most
   :data:`MAX_SOFT_LINK_HOPS` soft links and :data:`MAX_PATH_STEPS` names in all; external and
   user-defined links are refused before anything is opened through them.
2. **Plan** (:func:`~.hdf5_budget.plan_dataset`): shape, dtype, layout, chunk grid, chunk index
   and filter pipeline are checked against the limits; virtual datasets and external storage
   are refused. Nothing has been decompressed or allocated in proportion to the data yet.
3. **Read**: the frames are allocated once, zero- (or fill-value-) filled; contiguous data is
   copied from the body; each allocated chunk's stored bytes are taken from the body at the
   address the chunk index gives and decoded by :mod:`~.hdf5_filters` to exactly the chunk's
   size, then copied into place. HDF5's filter pipeline never runs on request data.

So every returned byte is either a decoded byte of this request or the fill value, memory
stays within :attr:`~.hdf5_budget.Hdf5Budget.peak_bytes` (the frames + one chunk + 1 MiB), and
identical bytes give bit-identical frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NoReturn

import h5py
import numpy as np

from ..errors import BadRequest, RequestError
from ..wire import DEFAULT_DATASET
from .buffer import ReadOnlyMemoryFile
from .hdf5_budget import Hdf5Budget, StoredChunk, plan_dataset
from .hdf5_filters import ChunkError, is_shuffled, unfilter_chunk
from .limits import DecodeLimits

MAX_SOFT_LINK_HOPS = 16
MAX_PATH_STEPS = 64
MAX_LINK_TARGET_BYTES = 4096


def decode_hdf5(
    view: memoryview,
    dataset: str | None,
    limits: DecodeLimits,
    *,
    on_budget: Callable[[Hdf5Budget], None] | None = None,
) -> np.ndarray:
    """Read one dataset of the HDF5 file in ``view`` as frames.

    Args:
        view: the whole HDF5 file.
        dataset: path of the dataset inside the file; ``None`` for ``/entry_1/data_1/data``.
        limits: checked on the file's metadata before anything is read.
        on_budget: called with the dataset's budget after every check and before the frames are
            allocated (the sandbox caps its address space with it).

    Returns:
        (N, P, H, W) in the dataset's wire dtype, native byte order, C-contiguous, a new array.
        A 3-D dataset is N single-panel frames.

    Raises:
        BadRequest: ``bad_hdf5`` (also: a chunk that does not decode to its declared size),
            ``hdf5_dataset_not_found``, ``hdf5_external_link``, ``hdf5_external_storage``,
            ``hdf5_virtual_dataset``, ``hdf5_unsupported_filter``, ``unsupported_dtype``,
            ``bad_shape``, ``bad_option``.
        PayloadTooLarge ``too_large``: the frames, a chunk, the chunk grid or the work exceed a limit.

    Any other exception is a fault of this reader, not of the file.
    """
    path = DEFAULT_DATASET if dataset is None else dataset
    parts = _path_parts(path)
    try:
        file = h5py.File(ReadOnlyMemoryFile(view), "r")
    except Exception as error:  # noqa: BLE001 - the HDF5 library's verdict on a malformed file
        raise BadRequest("bad_hdf5", f"the body is not a readable HDF5 file: {_first_line(error)}.") from None
    with file:
        try:
            node = _resolve(file, parts, path)
            if node.shape is None:
                raise BadRequest("bad_shape", f"dataset {path!r} has no dataspace (it is empty).")
            budget = plan_dataset(node, len(view), path, limits)
        except RequestError:
            raise
        except Exception as error:  # noqa: BLE001 - HDF5's verdict on malformed metadata
            raise BadRequest("bad_hdf5", f"the HDF5 file's metadata is not readable: {_first_line(error)}.") from None
        if on_budget is not None:
            on_budget(budget)
        pixels = read_dataset(node, budget, view, path)  # anything but a bad chunk here is a server fault
    return pixels.reshape(budget.frames)


def read_dataset(node: h5py.Dataset, budget: Hdf5Budget, view: memoryview, path: str) -> np.ndarray:
    """The dataset's elements in ``budget.dtype``, shape ``budget.shape``, as the budget planned."""
    if budget.layout == "compact":  # at most 64 KiB, inside the object header HDF5 has parsed
        stored = np.zeros(budget.shape, budget.file_dtype)
        try:
            node.read_direct(stored)
        except OSError as error:  # HDF5's verdict on a malformed compact data message
            raise BadRequest(
                "bad_hdf5", f"dataset {path!r}: its compact data is not readable: {_first_line(error)}."
            ) from None
        return stored.astype(budget.dtype)
    pixels = _filled(budget)
    if budget.layout == "contiguous":
        if budget.data_address is not None:
            count = pixels.size
            pixels[...] = np.frombuffer(view, budget.file_dtype, count, budget.data_address).reshape(budget.shape)
        return pixels
    for chunk in budget.chunks:
        try:
            _place_chunk(pixels, chunk, budget, view)
        except ChunkError as error:
            raise BadRequest("bad_hdf5", f"dataset {path!r}, chunk at {chunk.offset}: {error}.") from None
    return pixels


def _filled(budget: Hdf5Budget) -> np.ndarray:
    """Fresh frames holding the fill value (zero pages straight from the allocator when it is 0)."""
    if not budget.fill.view(np.uint8).any():
        return np.zeros(budget.shape, budget.dtype)
    return np.full(budget.shape, budget.fill.astype(budget.dtype)[0], budget.dtype)


def _place_chunk(pixels: np.ndarray, chunk: StoredChunk, budget: Hdf5Budget, view: memoryview) -> None:
    raw = view[chunk.address : chunk.address + chunk.size]
    itemsize = budget.dtype.itemsize
    shape = budget.chunk_shape
    shuffled = is_shuffled(budget.pipeline, chunk.filter_mask, itemsize)
    target = None if shuffled else _contiguous_place(pixels, chunk.offset, shape)
    decoded = unfilter_chunk(raw, budget.chunk_bytes, budget.pipeline, chunk.filter_mask, itemsize, target)
    region = tuple(slice(o, min(o + c, s)) for o, c, s in zip(chunk.offset, shape, budget.shape, strict=True))
    if decoded is not target:
        crop = tuple(slice(0, r.stop - r.start) for r in region)
        if not shuffled:
            pixels[region] = np.frombuffer(decoded, budget.file_dtype).reshape(shape)[crop]
            return
        # byte-shuffled: byte b of element i is at b * n + i; unshuffled while copied into the frames
        planes = np.frombuffer(decoded, np.uint8).reshape(itemsize, *shape)
        places = pixels.view(np.uint8).reshape(*budget.shape, itemsize)[region]
        for byte in range(itemsize):
            places[..., byte] = planes[byte][crop]
    if not budget.file_dtype.isnative:
        pixels[region].byteswap(inplace=True)


def _contiguous_place(pixels: np.ndarray, offset: tuple[int, ...], chunk: tuple[int, ...]) -> np.ndarray | None:
    """The chunk's bytes in ``pixels`` as one flat uint8 view, when the chunk lies inside the frames
    and covers one contiguous run of them (leading chunk dims 1, trailing ones whole); else ``None``."""
    shape = pixels.shape
    if any(o + c > s for o, c, s in zip(offset, chunk, shape, strict=True)):
        return None
    axis = next((i for i, c in enumerate(chunk) if c != 1), len(chunk) - 1)
    if any(c != s for c, s in zip(chunk[axis + 1 :], shape[axis + 1 :], strict=True)):
        return None
    start = int(np.ravel_multi_index(offset, shape)) * pixels.itemsize
    return pixels.reshape(-1).view(np.uint8)[start : start + math.prod(chunk) * pixels.itemsize]


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
    pending = list(reversed(parts))  # a stack: the next name is last
    hops = steps = 0
    while pending:
        name = pending.pop()
        steps += 1
        if steps > MAX_PATH_STEPS:
            raise BadRequest("bad_hdf5", f"the path to {path!r} takes more than {MAX_PATH_STEPS} steps through links.")
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
                raise BadRequest(
                    "bad_hdf5",
                    f"soft links on the way to {path!r} form a loop or a chain of more than {MAX_SOFT_LINK_HOPS}.",
                )
            target = node.id.links.get_val(encoded)
            if len(target) > MAX_LINK_TARGET_BYTES:
                raise BadRequest("bad_hdf5", f"a soft link on the way to {path!r} has a {len(target)}-byte target.")
            target = target.decode("utf-8", "replace")
            if target.startswith("/"):
                node = file
            pending.extend(reversed([part for part in target.split("/") if part]))
        elif kind == h5py.h5l.TYPE_EXTERNAL:
            raise BadRequest(
                "hdf5_external_link",
                f"{path!r} goes through an external link to another file; links out of the "
                "request are never followed: send the data itself in the file.",
            )
        else:
            raise BadRequest("bad_hdf5", f"{path!r} goes through a user-defined link, which is not followed.")
    if not isinstance(node, h5py.Dataset):
        _not_found(path, "it is not a dataset")
    return node


def _not_found(path: str, reason: str) -> NoReturn:
    raise BadRequest(
        "hdf5_dataset_not_found",
        f"no dataset {path!r} in the HDF5 file ({reason}); name it with X-Dataset (default {DEFAULT_DATASET}).",
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
