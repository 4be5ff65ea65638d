"""Builders of hostile HDF5 request files: filter bombs, chunk-index bombs, short and corrupt chunks;
and a watched host file that such a file may try to open.

Every file is a real HDF5 file written by h5py (+ hdf5plugin's filters); hostile chunk bytes are
put in place with ``write_direct_chunk``, exactly as a client could.
"""

from __future__ import annotations

import bz2
import io
import os
import threading
import time
import zlib

import blosc
import h5py
import hdf5plugin
import lz4.block
import numpy as np
from backports import zstd

DATASET = "/entry_1/data_1/data"
MiB = 1 << 20

# filter name -> create_dataset keyword arguments
FILTERS: dict[str, dict] = {
    "gzip": {"compression": "gzip"},
    "shuffle+gzip": {"compression": "gzip", "shuffle": True},
    "bzip2": dict(hdf5plugin.BZip2()),
    "zstd": dict(hdf5plugin.Zstd()),
    "lz4": dict(hdf5plugin.LZ4()),
    "bitshuffle+lz4": dict(hdf5plugin.Bitshuffle()),
    "bitshuffle+zstd": dict(hdf5plugin.Bitshuffle(cname="zstd")),
    "bitshuffle": dict(hdf5plugin.Bitshuffle(cname="none")),
    "blosc": dict(hdf5plugin.Blosc()),
    "lzf": {"compression": "lzf"},
    "fletcher32": {"fletcher32": True},
}


def hdf5_file(fill, userblock_size: int = 0) -> bytes:
    """The bytes of an HDF5 file written by ``fill(h5py.File)``, entirely in memory."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=userblock_size) as file:
        fill(file)
    return buffer.getvalue()


class OpenSentinel:
    """A named pipe standing in for a host file: records whether anyone ever opens it.

    A thread blocks opening the FIFO for writing; that returns only once somebody opens it for
    reading (HDF5 following a link, reading external storage, ...).
    """

    def __init__(self, path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        self.opened = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._wait_for_reader, daemon=True)
        self._thread.start()

    def _wait_for_reader(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        if not self._closing:
            self.opened.set()
        os.close(fd)

    def was_opened(self) -> bool:
        """Stop watching; True when someone other than us opened the file."""
        time.sleep(0.05)
        self._closing = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases the waiting thread
        self._thread.join(timeout=5)
        os.close(fd)
        return self.opened.is_set()


def with_chunks(
    shape, dtype, chunks, filter_name: str | None, payloads: dict, *, filter_mask: int = 0, **kwargs
) -> bytes:
    """A chunked dataset whose chunks hold exactly ``payloads``.

    ``payloads`` maps a chunk offset to its stored bytes, or to ``(filter mask, stored bytes)``.
    """
    options = dict(FILTERS[filter_name]) if filter_name else {}

    def fill(file):
        dataset = file.create_dataset(DATASET, shape=shape, dtype=dtype, chunks=chunks, **options, **kwargs)
        for offset, stored in payloads.items():
            mask, stored = stored if isinstance(stored, tuple) else (filter_mask, stored)
            dataset.id.write_direct_chunk(offset, stored, mask)

    return hdf5_file(fill)


def encoded_chunk(filter_name: str, data: bytes, itemsize: int = 2) -> tuple[int, bytes]:
    """``data`` as the real filter stores one chunk (written by HDF5, read back raw): (filter mask, bytes).

    The mask is not 0 when an optional filter declined to compress (HDF5 then stores the chunk raw).
    """
    array = np.frombuffer(data, f"u{itemsize}")

    def fill(file):
        file.create_dataset(DATASET, data=array, chunks=array.shape, **FILTERS[filter_name])

    with h5py.File(io.BytesIO(hdf5_file(fill)), "r") as file:
        return file[DATASET].id.read_direct_chunk((0,))


def encoded(filter_name: str, data: bytes, itemsize: int = 2) -> bytes:
    """``data`` as the real filter stores one chunk, which it compressed."""
    mask, stored = encoded_chunk(filter_name, data, itemsize)
    assert mask == 0, f"{filter_name} stored the chunk raw"
    return stored


def inflating(filter_name: str, decoded_bytes: int) -> bytes:
    """Stored bytes of ``filter_name`` that decode to ``decoded_bytes`` zero bytes (in 1 MiB steps)."""
    zeros = bytes(MiB)
    steps = decoded_bytes // MiB
    if filter_name == "gzip":
        compressor = zlib.compressobj(9)
        return b"".join([compressor.compress(zeros) for _ in range(steps)] + [compressor.flush()])
    if filter_name == "bzip2":
        compressor = bz2.BZ2Compressor(9)
        return b"".join([compressor.compress(zeros) for _ in range(steps)] + [compressor.flush()])
    if filter_name == "zstd":  # a 128 KiB window: what a reader capped at a 128 KiB chunk accepts
        compressor = zstd.ZstdCompressor(
            options={zstd.CompressionParameter.compression_level: 1, zstd.CompressionParameter.window_log: 17}
        )
        return b"".join([compressor.compress(zeros) for _ in range(steps)] + [compressor.flush()])
    if filter_name == "lz4":  # HDF5's LZ4 framing, declaring the inflated size, 1 MiB blocks
        block = lz4.block.compress(zeros, store_size=False)
        header = decoded_bytes.to_bytes(8, "big") + MiB.to_bytes(4, "big")
        return header + (len(block).to_bytes(4, "big") + block) * steps
    if filter_name == "bitshuffle+lz4":  # bitshuffle's framing, declaring the inflated size
        block = lz4.block.compress(bytes(8192), store_size=False)
        header = decoded_bytes.to_bytes(8, "big") + (8192).to_bytes(4, "big")
        return header + (len(block).to_bytes(4, "big") + block) * (decoded_bytes // 8192)
    if filter_name == "blosc":
        return blosc.compress(bytes(decoded_bytes), typesize=2)
    raise ValueError(filter_name)


def bomb(filter_name: str, decoded_bytes: int, chunk=(1, 256, 256)) -> bytes:
    """One uint16 chunk of ``chunk`` (128 KiB) whose stored bytes inflate to ``decoded_bytes``."""
    return with_chunks(chunk, "u2", chunk, filter_name, {(0,) * len(chunk): inflating(filter_name, decoded_bytes)})


def declared_bomb() -> bytes:
    """A gzip float64 dataset declared ``(64, 16, 8192, 8192)`` (550 GB) with one zero chunk stored: a few kB."""

    def fill(file):
        dataset = file.create_dataset(
            DATASET, shape=(64, 16, 8192, 8192), dtype="f8", chunks=(1, 1, 1024, 1024), compression="gzip"
        )
        dataset[0, 0, :1024, :1024] = 0.0

    return hdf5_file(fill)


def oversized_chunks(side: int) -> bytes:
    """A resizable ``(1, 1, 8, 8)`` uint8 gzip dataset declaring ``(1, 1, side, side)`` chunks, none stored."""

    def fill(file):
        file.create_dataset(
            DATASET,
            shape=(1, 1, 8, 8),
            maxshape=(None, None, None, None),
            dtype="u1",
            chunks=(1, 1, side, side),
            compression="gzip",
        )

    return hdf5_file(fill)


def unknown_filter(filter_id: int = 31999) -> bytes:
    """A ``(1, 8, 8)`` uint16 dataset whose one stored chunk (128 zero bytes) names filter ``filter_id``."""

    def fill(file):
        dataset = file.create_dataset(
            DATASET, shape=(1, 8, 8), dtype="u2", chunks=(1, 8, 8), compression=filter_id, allow_unknown_filter=True
        )
        dataset.id.write_direct_chunk((0, 0, 0), bytes(128))

    return hdf5_file(fill)


def chunk_index_bomb(shape=(4, 352, 384), filter_name: str | None = "gzip") -> bytes:
    """A dataset cut into 1-element chunks, none of them allocated: a few KB on the wire."""
    return with_chunks(shape, "u2", (1,) * len(shape), filter_name, {})
