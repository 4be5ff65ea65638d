"""Bounded peak labelling through a real TorchServe: the answer and /metrics say which frames were capped."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from tests.frames import spot_frames

pytestmark = pytest.mark.e2e


def test_capped_frames_are_flagged_and_counted(start_server):
    """The fixture model's random weights mark about half of every panel: under a cap of 25% (the
    default) every panel is capped, answered with no peaks and ``"capped": true``; the uncapped
    test server (``served``) answers the same frames with peaks and ``"capped": false``."""
    server = start_server(PEAKNET_MAX_MASK_FRACTION="0.25")
    frames = spot_frames(n=2, p=2)
    headers = {
        **server.headers,
        "Content-Type": "application/octet-stream",
        "X-Dtype": "uint16",
        "X-Shape": ",".join(map(str, frames.shape)),
    }
    answer = requests.post(server.predict_url, data=frames.tobytes(), headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    for frame in answer.json()["frames"]:
        assert frame["capped"] is True and frame["capped_panels"] == [0, 1]
        assert frame["num_peaks"] == 0 and frame["ss"] == []
    expected = {"PeakNetCappedFrames": 2.0, "PeakNetCappedPanels": 4.0}
    deadline = time.monotonic() + 30  # the frontend collects the worker's metrics a moment after the answer
    while True:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        counters = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("PeakNetCappedFrames{", "PeakNetCappedPanels{"))
        }
        if counters == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counters == expected


def test_uncapped_frames_say_so(served):
    frames = spot_frames(n=2, p=2)
    headers = {
        **served.headers,
        "Content-Type": "application/octet-stream",
        "X-Dtype": "uint16",
        "X-Shape": ",".join(map(str, frames.shape)),
    }
    answer = requests.post(served.predict_url, data=frames.tobytes(), headers=headers, timeout=60).json()
    assert all(f["capped"] is False and f["capped_panels"] == [] for f in answer["frames"])
    assert sum(f["num_peaks"] for f in answer["frames"]) > 0
    assert np.isfinite(np.concatenate([f["ss"] for f in answer["frames"]])).all()
