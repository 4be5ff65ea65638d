"""The decoding budget of one HDF5 dataset, fixed from its metadata before any pixel is read.

:func:`plan_dataset` walks the dataset's creation property list (layout, chunk shape, filter
pipeline, fill value) and its chunk index, and checks every size the reader will meet against
the request's :class:`~.limits.DecodeLimits`:

- the declared shape: frames, panels, sides, pixels and decoded bytes;
- the chunk grid: its number of chunk positions (at most ``max_chunks_per_frame`` per frame,
  and, beyond 64 chunks, 512 decoded bytes per chunk on average: a few-KB file cannot make the
  reader visit millions of tiny chunks, nor HDF5 cache their index), each chunk's decoded
  size (at most the frames' size + 1 MiB), and the bytes of all allocated chunks together
  (at most 4x the frames + 16 MiB: overlapping or overhanging chunks cannot multiply the work);
- each allocated chunk: inside the dataset, on the chunk grid, its stored bytes inside the
  request body and no more than a compressor could need for its decoded size;
- the filter pipeline: only filters with a bounded decoder here
  (:mod:`~.hdf5_filters`), shuffle first, one compressor, fletcher32 last; LZF (decoded in
  pure Python) for at most 32 MiB of frames;
- contiguous data inside the body; no virtual or external storage.

Nothing is decompressed or allocated in proportion to the data while planning: the chunk
index is read only once the grid is known to be small enough. The resulting
:class:`Hdf5Budget` is what the reader then does, and :attr:`Hdf5Budget.peak_bytes` is the
most it allocates for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import BadRequest, PayloadTooLarge
from .dtypes import ACCEPTED_DTYPES_TEXT, wire_dtype_name
from .hdf5_filters import (
    COMPRESSORS,
    FILTER_FLETCHER32,
    FILTER_LZF,
    FILTER_SHUFFLE,
    LZF_MAX_DECODED_BYTES,
    PIECE_BYTES,
    SUPPORTED_TEXT,
    Filter,
    can_decode,
)
from .layout import FramesShape, frames_shape
from .limits import DecodeLimits, check_decoded_bytes, check_frames_shape

CHUNK_SLACK_BYTES = 1 << 20
"""A chunk may decode to at most the frames' size plus this (chunks overhanging small datasets)."""

MIN_AVERAGE_CHUNK_BYTES, FEW_CHUNKS = 512, 64
"""A grid of more than ``FEW_CHUNKS`` chunks must average at least this many decoded bytes per
chunk: the chunk index HDF5 caches and the reader's table cost ~220 bytes per chunk."""

WORK_FACTOR, WORK_SLACK_BYTES = 4, 16 << 20
"""All allocated chunks together decode to at most ``WORK_FACTOR`` x the frames + this."""


@dataclass(frozen=True)
class StoredChunk:
    """One allocated chunk as the chunk index lists it.

    Attributes:
        offset: the chunk's first element along each axis (a multiple of the chunk shape).
        filter_mask: bit ``i`` set when filter ``i`` of the pipeline was skipped for this chunk.
        address: byte offset of its stored bytes in the request body.
        size: number of stored bytes.
    """

    offset: tuple[int, ...]
    filter_mask: int
    address: int
    size: int


@dataclass(frozen=True)
class ChunkTable:
    """The allocated chunks of a dataset, in index order, one row each (compact: 8 bytes a number).

    Attributes:
        offsets: (n, rank) int64, each chunk's first element along each axis.
        filter_masks: (n,) int64.
        addresses: (n,) int64, byte offsets in the body.
        sizes: (n,) int64, stored bytes.
    """

    offsets: np.ndarray
    filter_masks: np.ndarray
    addresses: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> StoredChunk:
        return StoredChunk(
            tuple(int(o) for o in self.offsets[index]),
            int(self.filter_masks[index]),
            int(self.addresses[index]),
            int(self.sizes[index]),
        )

    def __iter__(self):
        return (self[index] for index in range(len(self)))


NO_CHUNKS = ChunkTable(np.zeros((0, 0), np.int64), *(np.zeros(0, np.int64) for _ in range(3)))


@dataclass(frozen=True)
class Hdf5Budget:
    """What reading one dataset costs, all checked against the limits before reading.

    Attributes:
        file_dtype: the stored element type (either byte order).
        dtype: the native wire dtype the frames are returned in.
        shape: the dataset's shape.
        frames: the (N, P, H, W) shape the frames are returned as.
        layout: ``"chunked"``, ``"contiguous"`` or ``"compact"``.
        fill: one element of ``file_dtype``: the value of every unallocated element.
        data_address: contiguous layout: byte offset of the data in the body; ``None`` when
            the data was never written (all fill value).
        chunk_shape: chunked layout: the chunk shape; else ``None``.
        chunk_grid: number of chunk positions covering the dataset (0 unless chunked).
        chunks: the allocated chunks, in index order.
        pipeline: the filters in write order.
    """

    file_dtype: np.dtype
    dtype: np.dtype
    shape: tuple[int, ...]
    frames: FramesShape
    layout: str
    fill: np.ndarray
    data_address: int | None = None
    chunk_shape: tuple[int, ...] | None = None
    chunk_grid: int = 0
    chunks: ChunkTable = NO_CHUNKS
    pipeline: tuple[Filter, ...] = ()

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the returned frames."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def chunk_bytes(self) -> int:
        """Decoded bytes of one chunk (0 unless chunked)."""
        return math.prod(self.chunk_shape) * self.dtype.itemsize if self.chunk_shape else 0

    @property
    def work_bytes(self) -> int:
        """Bytes decoded in all: every allocated chunk, or the contiguous data."""
        return len(self.chunks) * self.chunk_bytes if self.chunk_shape else self.decoded_bytes

    @property
    def peak_bytes(self) -> int:
        """The most the reader allocates: the frames, one decoded chunk and one stream piece."""
        return self.decoded_bytes + self.chunk_bytes + (PIECE_BYTES if self.chunk_shape else 0)


def plan_dataset(node: h5py.Dataset, body_size: int, path: str, limits: DecodeLimits) -> Hdf5Budget:
    """The budget for reading ``node`` from a body of ``body_size`` bytes.

    Raises:
        BadRequest: ``hdf5_virtual_dataset``, ``hdf5_external_storage``, ``hdf5_unsupported_filter``,
            ``unsupported_dtype``, ``bad_shape``, ``bad_hdf5`` (chunks or data outside the body,
            off the grid, or larger than any encoding of their size).
        PayloadTooLarge ``too_large``: the frames, a chunk, the chunk grid or the total work
            exceed a limit.
    """
    dsid = node.id
    dcpl = dsid.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise BadRequest(
            "hdf5_virtual_dataset",
            f"dataset {path!r} is a virtual dataset (VDS) mapping other files or datasets; send the pixel data itself.",
        )
    if dcpl.get_external_count() > 0:
        raise BadRequest(
            "hdf5_external_storage",
            f"dataset {path!r} keeps its data in external files; send the pixel data inside the HDF5 file.",
        )
    file_dtype = _file_dtype(node, path)
    shape = tuple(int(d) for d in node.shape)
    frames = frames_shape(shape, stack_is_frames=True)
    check_frames_shape(frames, limits)
    dtype = np.dtype(wire_dtype_name(file_dtype))
    decoded = math.prod(shape) * dtype.itemsize
    check_decoded_bytes(decoded, limits)
    fill = _fill_value(dcpl, file_dtype)
    common = dict(file_dtype=file_dtype, dtype=dtype, shape=shape, frames=frames, fill=fill)

    if layout == h5py.h5d.COMPACT:
        return Hdf5Budget(layout="compact", **common)
    if layout == h5py.h5d.CONTIGUOUS:
        address = dsid.get_offset()
        if address is not None and not 0 <= address <= body_size - decoded:
            raise BadRequest(
                "bad_hdf5",
                f"dataset {path!r} declares {decoded} bytes of data at byte {address}, past the end of "
                f"the {body_size}-byte file (truncated?).",
            )
        return Hdf5Budget(layout="contiguous", data_address=address, **common)
    if layout != h5py.h5d.CHUNKED:
        raise BadRequest("bad_hdf5", f"dataset {path!r} has an unknown storage layout ({layout}).")

    pipeline = _pipeline(dcpl, path)
    if decoded > LZF_MAX_DECODED_BYTES and any(stage.code == FILTER_LZF for stage in pipeline):
        raise PayloadTooLarge(
            "too_large",
            f"dataset {path!r} is LZF-compressed and decodes to {decoded} bytes; LZF is accepted up to "
            f"{LZF_MAX_DECODED_BYTES} bytes per request (its decoder here is slow): send fewer frames or use "
            "gzip or bitshuffle+LZ4.",
        )
    chunk_shape = tuple(int(c) for c in dcpl.get_chunk())
    if len(chunk_shape) != len(shape) or min(chunk_shape) < 1:
        raise BadRequest("bad_hdf5", f"dataset {path!r} has a malformed chunk shape {chunk_shape}.")
    chunk_bytes = math.prod(chunk_shape) * dtype.itemsize
    if chunk_bytes > decoded + CHUNK_SLACK_BYTES:
        raise PayloadTooLarge(
            "too_large",
            f"dataset {path!r} has chunks of {chunk_shape} ({chunk_bytes} bytes), larger than the "
            f"{decoded}-byte frames they hold; rechunk it (e.g. one chunk per frame or panel).",
        )
    grid = math.prod(-(-s // c) for s, c in zip(shape, chunk_shape, strict=True))
    max_chunks = limits.max_chunks_per_frame * frames[0]
    if grid > max_chunks:
        raise PayloadTooLarge(
            "too_large",
            f"dataset {path!r} is cut into {grid} chunks of {chunk_shape}; the limit is "
            f"{limits.max_chunks_per_frame} chunks per frame ({max_chunks} for {frames[0]} frames); "
            "rechunk it with larger chunks (e.g. one per frame or panel).",
        )
    if grid > max(FEW_CHUNKS, decoded // MIN_AVERAGE_CHUNK_BYTES):
        raise PayloadTooLarge(
            "too_large",
            f"dataset {path!r} is cut into {grid} chunks of {chunk_shape} ({chunk_bytes} bytes) for {decoded} "
            f"bytes of frames; chunks must hold {MIN_AVERAGE_CHUNK_BYTES} bytes on average: rechunk it with larger "
            "chunks (e.g. one per frame or panel).",
        )
    allocated = dsid.get_num_chunks()
    if allocated > grid:
        raise BadRequest("bad_hdf5", f"dataset {path!r} lists {allocated} chunks for a grid of {grid}.")
    if allocated * chunk_bytes > WORK_FACTOR * decoded + WORK_SLACK_BYTES:
        raise PayloadTooLarge(
            "too_large",
            f"dataset {path!r} has {allocated} chunks of {chunk_bytes} bytes to decode for {decoded} bytes "
            "of frames; rechunk it so that chunks tile the frames.",
        )
    chunks = _stored_chunks(dsid, allocated, shape, chunk_shape, chunk_bytes, body_size, path)
    return Hdf5Budget(
        layout="chunked", chunk_shape=chunk_shape, chunk_grid=grid, chunks=chunks, pipeline=pipeline, **common
    )


def max_stored_bytes(chunk_bytes: int) -> int:
    """The most bytes any supported compressor can need to store ``chunk_bytes`` (with checksum)."""
    return chunk_bytes + chunk_bytes // 32 + 4096


def _file_dtype(node: h5py.Dataset, path: str) -> np.dtype:
    dtype = node.dtype
    name = wire_dtype_name(dtype)
    standard = name is not None and h5py.check_enum_dtype(dtype) is None
    if standard:  # a plain IEEE / two's-complement type, not one with odd precision, padding or bias
        standard = node.id.get_type() == h5py.h5t.py_create(dtype)
    if not standard:
        raise BadRequest(
            "unsupported_dtype",
            f"dataset {path!r} has dtype {dtype}; accepted dtypes: {ACCEPTED_DTYPES_TEXT}.",
        )
    return dtype


def _fill_value(dcpl, file_dtype: np.dtype) -> np.ndarray:
    fill = np.zeros(1, file_dtype)
    if dcpl.fill_value_defined() == h5py.h5d.FILL_VALUE_USER_DEFINED:
        dcpl.get_fill_value(fill)
    return fill


def _pipeline(dcpl, path: str) -> tuple[Filter, ...]:
    stages = []
    for index in range(dcpl.get_nfilters()):
        code, flags, values, label = dcpl.get_filter(index)
        stage = Filter(int(code), int(flags), tuple(int(v) for v in values))
        if not can_decode(stage):
            shown = label.decode("ascii", "replace")[:40] if isinstance(label, bytes) else str(label)[:40]
            raise BadRequest(
                "hdf5_unsupported_filter",
                f"dataset {path!r} uses filter {code} ({shown!r}), which this server does not decode; "
                f"accepted: {SUPPORTED_TEXT}.",
            )
        stages.append(stage)
    codes = [stage.code for stage in stages]
    compressors = [code for code in codes if code in COMPRESSORS]
    in_order = (
        codes.count(FILTER_SHUFFLE) <= 1
        and codes.count(FILTER_FLETCHER32) <= 1
        and len(compressors) <= 1
        and (FILTER_SHUFFLE not in codes or codes[0] == FILTER_SHUFFLE)
        and (FILTER_FLETCHER32 not in codes or codes[-1] == FILTER_FLETCHER32)
    )
    if not in_order:
        raise BadRequest(
            "hdf5_unsupported_filter",
            f"dataset {path!r} has the filter pipeline {[stage.name for stage in stages]}; accepted: an "
            "optional shuffle first, at most one compressor, an optional fletcher32 last.",
        )
    return tuple(stages)


def _stored_chunks(dsid, allocated: int, shape, chunk_shape, chunk_bytes: int, body_size: int, path: str) -> ChunkTable:
    offsets = np.zeros((allocated, len(shape)), np.int64)
    numbers = np.zeros((allocated, 3), np.int64)  # filter mask, address (-1: none), size
    count = 0

    def visit(info) -> int | None:
        nonlocal count
        if count >= allocated or len(info.chunk_offset) != len(shape):
            count = allocated + 1  # more chunks than counted, or of another rank: refused below
            return 1  # stop the iteration
        offsets[count] = info.chunk_offset
        address = info.byte_offset
        numbers[count] = (
            info.filter_mask,
            -1 if address is None or address > body_size else address,
            min(info.size, body_size + 1),
        )
        count += 1
        return None

    if hasattr(dsid, "chunk_iter"):  # one pass over the index (h5py >= 3.8 built on HDF5 >= 1.12.3)
        dsid.chunk_iter(visit)
    else:  # pragma: no cover - older builds: one index lookup per chunk
        for index in range(allocated):
            if visit(dsid.get_chunk_info(index)) is not None:
                break
    if count != allocated:
        raise BadRequest(
            "bad_hdf5", f"dataset {path!r}: the chunk index does not list the {allocated} chunks it counts."
        )
    table = ChunkTable(offsets, numbers[:, 0], numbers[:, 1], numbers[:, 2])
    grid = np.asarray(chunk_shape, np.int64)
    bad = np.flatnonzero(
        ((offsets % grid) != 0).any(axis=1) | (offsets < 0).any(axis=1) | (offsets >= shape).any(axis=1)
    )
    if bad.size:
        raise BadRequest(
            "bad_hdf5",
            f"dataset {path!r}: a chunk at {table[bad[0]].offset} is off the {chunk_shape} grid of a {shape} dataset.",
        )
    sizes, addresses = table.sizes, table.addresses
    bad = np.flatnonzero((addresses < 0) | (sizes < 1) | (addresses > body_size - sizes))
    if bad.size:
        raise BadRequest(
            "bad_hdf5",
            f"dataset {path!r}: the chunk at {table[bad[0]].offset} lies outside the {body_size}-byte file "
            "(truncated?).",
        )
    bad = np.flatnonzero(sizes > max_stored_bytes(chunk_bytes))
    if bad.size:
        raise BadRequest(
            "bad_hdf5",
            f"dataset {path!r}: the chunk at {table[bad[0]].offset} stores {int(sizes[bad[0]])} bytes, more than any "
            f"encoding of its {chunk_bytes} bytes needs.",
        )
    return table
