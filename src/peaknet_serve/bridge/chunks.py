"""How the stream of frames is cut: into requests (what one POST carries) and chunks (one CXI file each).

Every frame gets a global index in arrival order. Frames of consecutive messages are gathered
into requests of ``frames_per_request`` frames (producers often send one frame per message; one
POST per frame would spend the server's time on HTTP instead of batches); a request that is not
full is sent once its oldest frame has waited ``linger_s`` (:meth:`Chunker.due`, :meth:`Chunker.flush`).

A chunk holds ``frames_per_file`` consecutive frames of one geometry and dtype; a request never
spans two chunks, so each answer lands in one file. A chunk is *sealed* (its final frame count
fixed) when the stream moves past it: it is full, the geometry changes, or the stream ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from peaknet_serve.bridge.messages import Message


@dataclass(frozen=True)
class Request:
    """Frames for one POST.

    Attributes:
        chunk: index of the chunk (file) the frames belong to.
        offset: position of the first frame in its chunk.
        first_frame: global index of the first frame.
        frames: ``(n, P, H, W)`` in the producer's dtype.
        metadata: per-event arrays, ``n`` entries each.
        received_at: ``time.monotonic()`` when the oldest of these frames arrived.
    """

    chunk: int
    offset: int
    first_frame: int
    frames: np.ndarray = field(repr=False)
    metadata: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    received_at: float = 0.0

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class Seal:
    """Chunk ``chunk`` holds exactly ``n_frames`` frames, starting at global index ``first_frame``."""

    chunk: int
    first_frame: int
    n_frames: int


@dataclass
class _Pending:
    frames: list[np.ndarray] = field(default_factory=list)
    metadata: list[dict[str, np.ndarray]] = field(default_factory=list)
    since: float = 0.0
    n: int = 0


class Chunker:
    """Turns decoded messages into :class:`Request` s and :class:`Seal` s.

    Args:
        frames_per_request: most frames in one request.
        frames_per_file: most frames in one chunk.
        linger_s: longest a frame waits for more frames to fill its request.
    """

    def __init__(self, frames_per_request: int = 4, frames_per_file: int = 1000, linger_s: float = 0.05):
        if frames_per_request < 1 or frames_per_file < 1 or linger_s < 0:
            raise ValueError("frames_per_request and frames_per_file must be >= 1, linger_s >= 0")
        self.frames_per_request, self.frames_per_file, self.linger_s = frames_per_request, frames_per_file, linger_s
        self.frames_seen = 0
        self._chunk, self._chunk_start, self._in_chunk = 0, 0, 0  # _in_chunk: frames already in requests
        self._pending = _Pending()
        self._kind: tuple | None = None

    def add(self, message: Message, received_at: float = 0.0) -> tuple[list[Request], list[Seal]]:
        """Take ``message``'s frames; returns the requests that are full and the chunks they close."""
        frames = message.frames
        kind = (frames.shape[1:], frames.dtype.str)
        requests: list[Request] = []
        seals: list[Seal] = []
        if self._kind is not None and kind != self._kind:
            requests.extend(self.flush())
            if self._in_chunk:
                seals.append(self._seal())
        self._kind = kind
        start = 0
        while start < frames.shape[0]:
            room = min(
                self.frames_per_request - self._pending.n, self.frames_per_file - self._in_chunk - self._pending.n
            )
            n = min(room, frames.shape[0] - start)
            part = slice(start, start + n)
            if not self._pending.n:
                self._pending.since = received_at
            self._pending.frames.append(frames[part])
            self._pending.metadata.append({k: v[part] for k, v in message.metadata.items()})
            self._pending.n += n
            start += n
            self.frames_seen += n
            if self._pending.n == self.frames_per_request or self._in_chunk + self._pending.n == self.frames_per_file:
                requests.extend(self.flush())
            if self._in_chunk == self.frames_per_file:
                seals.append(self._seal())
        return requests, seals

    def due(self, now: float) -> float | None:
        """Seconds until the pending frames must be sent (``<= 0``: now); ``None`` when none wait."""
        return self._pending.since + self.linger_s - now if self._pending.n else None

    def flush(self) -> list[Request]:
        """The waiting frames as one request (empty list when none wait)."""
        pending = self._pending
        if not pending.n:
            return []
        names = set.intersection(*(set(m) for m in pending.metadata))
        metadata = {}
        for name in names:
            try:
                metadata[name] = np.concatenate([m[name] for m in pending.metadata])
            except ValueError:  # per-event arrays of different shapes in different messages
                continue
        frames = pending.frames[0] if len(pending.frames) == 1 else np.concatenate(pending.frames)
        request = Request(
            self._chunk, self._in_chunk, self._chunk_start + self._in_chunk, frames, metadata, pending.since
        )
        self._in_chunk += pending.n
        self._pending = _Pending()
        return [request]

    def finish(self) -> tuple[list[Request], list[Seal]]:
        """The stream ended: the waiting frames, and the seal of the open chunk if it holds any frame."""
        requests = self.flush()
        return requests, [self._seal()] if self._in_chunk else []

    def _seal(self) -> Seal:
        seal = Seal(self._chunk, self._chunk_start, self._in_chunk)
        self._chunk += 1
        self._chunk_start, self._in_chunk = self._chunk_start + seal.n_frames, 0
        return seal
