"""The bridge's own pipeline with a real pyzmq PUSH producer, where the server is a closed port.

Every POST is refused at once and retries are off, so what is measured is the bridge itself:
receive, decode, gather, send, write. (The server's side, a real TorchServe, is in
tests/e2e/test_bridge_e2e.py.)
"""

from __future__ import annotations

import socket
import threading
import time

import h5py
import numpy as np
import zmq

from peaknet_serve.bridge.cxi import CxiSink
from peaknet_serve.bridge.messages import hdf5_message
from peaknet_serve.bridge.sender import PeakServer, RetryPolicy
from peaknet_serve.bridge.stats import summary
from peaknet_serve.bridge.stream import Bridge, StreamConfig
from tests.frames import spot_frames


def refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def run_bridge(tmp_path, max_frames: int, **config):
    config = {
        "bind": ["tcp://127.0.0.1:*"],
        "max_frames": max_frames,
        "idle_timeout_s": 30.0,
        "report_every_s": 0,
        **config,
    }
    bridge = Bridge(
        StreamConfig(**config),
        PeakServer(refused_url(), policy=RetryPolicy(0.0)),
        CxiSink(tmp_path),
        log=lambda line: None,
        frames_per_file=500,
    )
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("stats", bridge.run()), daemon=True)
    thread.start()
    assert bridge.ready.wait(10)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 5)
    push.connect(bridge.bound[0])
    return bridge, thread, outcome, context, push


def test_the_bridge_alone_handles_far_more_than_120_hz(tmp_path):
    n = 1500
    frames = spot_frames(n=8, p=1, h=64, w=96)
    messages = [
        hdf5_message({"/data/data": frames[i % 8][None], "/data/timestamp": np.array([float(i)])}) for i in range(n)
    ]
    bridge, thread, outcome, context, push = run_bridge(tmp_path, n, frames_per_request=8, concurrency=4)
    started = time.monotonic()
    for message in messages:  # as fast as the bridge takes them: PUSH blocks on its high-water mark
        push.send(message)
    thread.join(120)
    elapsed = time.monotonic() - started
    push.close(0)
    context.term()
    result = summary(outcome["stats"], outcome["stats"].snapshot())
    rate = n / elapsed
    print(f"\nbridge alone: {n} one-frame HDF5 messages in {elapsed:.2f} s = {rate:.0f} messages/s")
    assert result["frames_received"] == result["frames_failed"] == n  # every frame accounted for
    assert rate > 150, f"the bridge itself managed only {rate:.0f} messages/s"
    files = sorted(tmp_path.glob("peaks-*.cxi"))
    assert len(files) == 3
    with h5py.File(files[-1], "r") as f:
        assert list(f["/entry_1/stream/frame_index"][()]) == list(range(1000, 1500))
        assert f["/entry_1/stream/failed"][()].all()
        assert np.array_equal(f["/entry_1/stream/events/data/timestamp"][()], np.arange(1000, 1500, dtype=float))


def test_bad_messages_are_counted_and_skipped(tmp_path):
    bridge, thread, outcome, context, push = run_bridge(tmp_path, 4, frames_per_request=2)
    good = hdf5_message({"/data/data": spot_frames(n=2, p=1, h=16, w=16)})
    for payload in (b"junk", good, b"\x89HDF\r\n\x1a\n" + b"\x00" * 32, good):
        push.send(payload)
    thread.join(60)
    push.close(0)
    context.term()
    result = summary(outcome["stats"], outcome["stats"].snapshot())
    assert result["bad_messages"] == 2 and result["frames_received"] == 4
    assert sum(result["bad_message_reasons"].values()) == 2


def test_stop_finishes_what_was_received(tmp_path):
    bridge, thread, outcome, context, push = run_bridge(tmp_path, None, frames_per_request=4, linger_s=10.0)
    push.send(hdf5_message({"/data/data": spot_frames(n=3, p=1, h=16, w=16)}))  # waits for a fourth frame
    deadline = time.monotonic() + 10
    while outcome.get("stats") is None and bridge.chunker.frames_seen < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    bridge.stop()
    thread.join(30)
    push.close(0)
    context.term()
    assert not thread.is_alive()
    result = summary(outcome["stats"], outcome["stats"].snapshot())
    assert result["frames_received"] == 3 and result["frames_unanswered"] == 0 and result["files"] == 1
