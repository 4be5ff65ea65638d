"""CXI peak files, one per chunk of streamed frames, written as the answers come in.

Each file ``<output_dir>/<prefix>-<chunk:06d>.cxi`` holds, in frame order:

    /entry_1/result_1/nPeaks, peakXPosRaw, peakYPosRaw,
        peakTotalIntensity(Raw), peakNPixels the peaks, as peaknet_serve.encode.cxi lays them out
                                             for CrystFEL's --peaks=cxi (panels stacked along slow scan)
    /entry_1/data_1/data    (N, P*H, W)      the frames themselves (only with save_frames)
    /entry_1/stream/frame_index  (N,) int64  the frame's index in the stream
    /entry_1/stream/failed       (N,) uint8  1: no answer (the error is in the attribute failures)
    /entry_1/stream/peaks_dropped (N,) int64 peaks beyond max_peaks a frame lost (brightest kept)
    /entry_1/stream/events/...               the producer's per-event arrays (timestamps, ...)

A file is written under a hidden temporary name and renamed when its chunk is complete (every
frame answered or failed), then listed in ``<output_dir>/peaks.lst``. Root attributes:
``complete``, ``n_frames``, ``first_frame``, ``failed_frames``, ``server_model`` / ``_precision`` /
``_device``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peaknet_serve.bridge.chunks import Request, Seal
from peaknet_serve.encode.cxi import cxi_peaks, write_result_group

FRAMES_DATASET = "/entry_1/data_1/data"
STREAM_GROUP = "/entry_1/stream"
LIST_FILE = "peaks.lst"
FRAME_COMPRESSIONS = ("bslz4", "gzip", "none")
EMPTY_FRAME = {"num_peaks": 0, "panel": [], "ss": [], "fs": [], "npix": [], "intensity": []}


@dataclass(frozen=True)
class Answer:
    """What became of one request: the server's per-frame peak lists, or why there are none."""

    request: Request
    frames: list[dict[str, Any]] | None
    server: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    answered_at: float = 0.0
    attempts: int = 1

    @property
    def failed(self) -> bool:
        return self.frames is None


@dataclass(frozen=True)
class ChunkFile:
    """A finished file."""

    path: Path
    chunk: int
    first_frame: int
    n_frames: int
    failed_frames: int
    hits: int


@dataclass
class _Chunk:
    index: int
    shape: tuple[int, ...]  # (P, H, W)
    dtype: np.dtype
    partial: Path
    parts: dict[int, Answer] = field(default_factory=dict)
    answered: int = 0
    seal: Seal | None = None
    handle: Any = None  # the open partial file, with save_frames

    @property
    def complete(self) -> bool:
        return self.seal is not None and self.answered == self.seal.n_frames


def _frame_filter(compression: str) -> dict[str, Any]:
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "bslz4":
        import hdf5plugin

        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise ValueError(f"frame compression {compression!r}: use one of {FRAME_COMPRESSIONS}")


class CxiSink:
    """Collects :class:`Answer` s per chunk and writes each chunk's file once it is complete.

    Not thread-safe: one writer thread owns it. Memory: the peak lists of open chunks (frames go
    to disk as they arrive when ``save_frames``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        prefix: str = "peaks",
        save_frames: bool = False,
        frames_compression: str = "bslz4",
        max_peaks: int = 2048,
        min_peaks: int = 10,
        attrs: dict[str, Any] | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.save_frames, self.max_peaks, self.min_peaks = prefix, save_frames, max_peaks, min_peaks
        self._filter = _frame_filter(frames_compression)
        self._attrs = dict(attrs or {})
        self._chunks: dict[int, _Chunk] = {}
        self._seals: dict[int, Seal] = {}
        self.written: list[ChunkFile] = []

    def path(self, chunk: int) -> Path:
        return self.output_dir / f"{self.prefix}-{chunk:06d}.cxi"

    @property
    def open_chunks(self) -> int:
        return len(self._chunks)

    def add(self, answer: Answer) -> ChunkFile | None:
        """Record ``answer``; returns the file it completed, if any."""
        request = answer.request
        chunk = self._chunk(request)
        if request.offset in chunk.parts:
            raise ValueError(f"chunk {chunk.index}: frames from offset {request.offset} answered twice")
        chunk.parts[request.offset] = answer
        chunk.answered += request.n_frames
        if self.save_frames:
            self._write_frames(chunk, request)
        return self._finish(chunk) if chunk.complete else None

    def seal(self, seal: Seal) -> ChunkFile | None:
        """Fix a chunk's frame count; returns its file if every frame is already answered."""
        chunk = self._chunks.get(seal.chunk)
        if chunk is None:
            self._seals[seal.chunk] = seal  # sealed before its first answer arrived
            return None
        chunk.seal = seal
        return self._finish(chunk) if chunk.complete else None

    def abandon(self) -> list[Path]:
        """Drop the partial files of chunks that cannot complete (the bridge is aborting)."""
        dropped = []
        for chunk in self._chunks.values():
            if chunk.handle is not None:
                chunk.handle.close()
            chunk.partial.unlink(missing_ok=True)
            dropped.append(chunk.partial)
        self._chunks.clear()
        return dropped

    def _chunk(self, request: Request) -> _Chunk:
        chunk = self._chunks.get(request.chunk)
        if chunk is None:
            path = self.path(request.chunk)
            chunk = _Chunk(
                index=request.chunk,
                shape=tuple(request.frames.shape[1:]),
                dtype=request.frames.dtype,
                partial=path.with_name(f".{path.name}.partial-{os.getpid()}"),
                seal=self._seals.pop(request.chunk, None),
            )
            self._chunks[request.chunk] = chunk
        return chunk

    def _write_frames(self, chunk: _Chunk, request: Request) -> None:
        import h5py

        panels, height, width = chunk.shape
        if chunk.handle is None:
            chunk.handle = h5py.File(chunk.partial, "w")
            chunk.handle.create_dataset(
                FRAMES_DATASET,
                shape=(0, panels * height, width),
                maxshape=(None, panels * height, width),
                dtype=chunk.dtype,
                chunks=(1, panels * height, width),
                **self._filter,
            )
        data = chunk.handle[FRAMES_DATASET]
        end = request.offset + request.n_frames
        if data.shape[0] < end:
            data.resize(end, axis=0)
        data[request.offset : end] = request.frames.reshape(request.n_frames, panels * height, width)

    def _finish(self, chunk: _Chunk) -> ChunkFile:
        import h5py

        seal = chunk.seal
        assert seal is not None
        n = seal.n_frames
        panels, height, width = chunk.shape
        peaks: list[dict[str, Any]] = []
        failed = np.zeros(n, np.uint8)
        frame_index = np.arange(seal.first_frame, seal.first_frame + n, dtype=np.int64)
        failures: dict[str, int] = {}
        server: dict[str, str] = {}
        for offset in sorted(chunk.parts):
            answer = chunk.parts[offset]
            k = answer.request.n_frames
            if answer.failed:
                peaks.extend([EMPTY_FRAME] * k)
                failed[offset : offset + k] = 1
                failures[str(answer.error)] = failures.get(str(answer.error), 0) + k
            else:
                peaks.extend(answer.frames)
                for key, value in answer.server.items():
                    server.setdefault(key, value)
        rows = cxi_peaks(peaks, height, self.max_peaks)
        events = _events(chunk, n)

        handle = chunk.handle if chunk.handle is not None else h5py.File(chunk.partial, "w")
        try:
            with handle:
                if FRAMES_DATASET in handle:
                    handle[FRAMES_DATASET].resize(n, axis=0)
                handle.attrs["cxi_version"] = 150
                write_result_group(handle, rows, panels, width, compress=True)
                stream = handle.require_group(STREAM_GROUP)
                stream.create_dataset("frame_index", data=frame_index)
                stream.create_dataset("failed", data=failed)
                stream.create_dataset("peaks_dropped", data=rows.dropped)
                for name, values in events.items():
                    stream.create_dataset(f"events/{name.strip('/')}", data=values)
                attrs = {
                    **self._attrs,
                    **{f"server_{k}": v for k, v in server.items()},
                    "n_frames": n,
                    "first_frame": seal.first_frame,
                    "failed_frames": int(failed.sum()),
                    "failures": json.dumps(failures),
                    "panels": panels,
                    "panel_shape": np.array([height, width], np.int64),
                    "complete": True,
                }
                for key, value in attrs.items():
                    handle.attrs[key] = value
            path = self.path(chunk.index)
            os.replace(chunk.partial, path)
        finally:
            chunk.partial.unlink(missing_ok=True)
            del self._chunks[chunk.index]
        with open(self.output_dir / LIST_FILE, "a") as listing:
            listing.write(f"{path.resolve()}\n")
        hits = int((rows.found >= self.min_peaks)[failed == 0].sum())
        done = ChunkFile(path, chunk.index, seal.first_frame, n, int(failed.sum()), hits)
        self.written.append(done)
        return done


def _events(chunk: _Chunk, n: int) -> dict[str, np.ndarray]:
    """The per-event arrays every part of the chunk carries, concatenated in frame order."""
    parts = [chunk.parts[offset] for offset in sorted(chunk.parts)]
    names = set.intersection(*(set(p.request.metadata) for p in parts)) if parts else set()
    events = {}
    for name in sorted(names):
        try:
            values = np.concatenate([p.request.metadata[name] for p in parts])
        except ValueError:  # shapes differ between messages
            continue
        if values.shape[0] == n:
            events[name] = values
    return events
