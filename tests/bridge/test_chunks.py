"""Cutting the frame stream into requests (gathered across messages) and per-file chunks."""

from __future__ import annotations

import numpy as np
import pytest

from peaknet_serve.bridge.chunks import Chunker, Seal
from peaknet_serve.bridge.messages import Message


def message(n: int, shape=(1, 4, 4), dtype=np.uint16, start: int = 0) -> Message:
    frames = (np.arange(n)[:, None, None, None] + start + np.zeros((n, *shape))).astype(dtype)
    return Message(frames, {"/data/timestamp": np.arange(start, start + n, dtype=np.float64)})


def spans(requests):
    return [(r.chunk, r.offset, r.first_frame, r.n_frames) for r in requests]


def test_requests_never_cross_a_file_boundary():
    chunker = Chunker(frames_per_request=4, frames_per_file=10)
    requests, seals = chunker.add(message(7))
    assert spans(requests) == [(0, 0, 0, 4)] and seals == []  # 3 frames wait for a fourth
    requests, seals = chunker.add(message(9, start=7))
    assert spans(requests) == [(0, 4, 4, 4), (0, 8, 8, 2), (1, 0, 10, 4)]
    assert seals == [Seal(chunk=0, first_frame=0, n_frames=10)]
    requests, seals = chunker.finish()
    assert spans(requests) == [(1, 4, 14, 2)] and seals == [Seal(chunk=1, first_frame=10, n_frames=6)]
    assert chunker.finish() == ([], [])  # nothing is left open


def test_one_frame_messages_are_gathered():
    chunker = Chunker(frames_per_request=4, frames_per_file=100, linger_s=0.05)
    sent = []
    for i in range(10):
        requests, _ = chunker.add(message(1, start=i), received_at=float(i))
        sent.extend(requests)
    assert spans(sent) == [(0, 0, 0, 4), (0, 4, 4, 4)]
    assert sent[1].received_at == 4.0  # the oldest frame's arrival
    for r in sent:
        assert (
            list(r.frames[:, 0, 0, 0])
            == list(r.metadata["/data/timestamp"])
            == list(range(r.first_frame, r.first_frame + 4))
        )
    assert chunker.due(8.0) == pytest.approx(0.05)  # frames 8, 9 wait since t = 8
    assert chunker.due(8.1) < 0
    assert spans(chunker.flush()) == [(0, 8, 8, 2)]
    assert chunker.due(9.0) is None and chunker.flush() == []


def test_a_geometry_change_flushes_and_starts_a_new_file():
    chunker = Chunker(frames_per_request=4, frames_per_file=10)
    chunker.add(message(3))
    requests, seals = chunker.add(message(2, shape=(2, 4, 4)))
    assert spans(requests) == [(0, 0, 0, 3)] and seals == [Seal(0, 0, 3)]
    requests, seals = chunker.add(message(1, shape=(2, 4, 4), dtype=np.float32))
    assert spans(requests) == [(1, 0, 3, 2)] and seals == [Seal(1, 3, 2)]
    requests, seals = chunker.finish()
    assert spans(requests) == [(2, 0, 5, 1)] and seals == [Seal(2, 5, 1)]


def test_exactly_full_file_is_sealed_at_once():
    chunker = Chunker(frames_per_request=5, frames_per_file=5)
    requests, seals = chunker.add(message(5))
    assert len(requests) == 1 and seals == [Seal(0, 0, 5)]
    assert chunker.finish() == ([], [])


def test_frames_seen_counts_waiting_frames():
    chunker = Chunker(frames_per_request=8)
    chunker.add(message(3))
    assert chunker.frames_seen == 3


@pytest.mark.parametrize("bad", [dict(frames_per_request=0), dict(frames_per_file=0), dict(linger_s=-1)])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        Chunker(**bad)
