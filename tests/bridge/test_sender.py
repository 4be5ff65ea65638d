"""Which answers are retried, the back-off, and giving up on a server that never comes back.

The server-side behaviour (a real TorchServe restarted under a stream) is tested end to end in
tests/e2e/test_bridge_e2e.py; here the server is a closed port.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from peaknet_serve.bridge.sender import PeakServer, RetryPolicy, SendFailed, is_unavailable


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "status, text, key_file, retried",
    [
        (503, "Model peaknet has no worker to serve inference request", False, True),
        (502, "", False, True),
        (504, "", False, True),
        (429, "", False, True),
        (400, '{"error": "X-Shape 1,2,3 does not match 10 bytes"}', False, False),
        (413, "", False, False),
        (500, "internal error", False, False),
        (400, "Token Authorization failed. Token either incorrect, expired, or not provided correctly", False, False),
        (400, "Token Authorization failed. Token either incorrect, expired, or not provided correctly", True, True),
        (401, "Token Authorization failed", True, True),
    ],
)
def test_what_counts_as_unavailable(status, text, key_file, retried):
    assert is_unavailable(status, text, key_file) is retried


def test_backoff_doubles_up_to_its_cap():
    policy = RetryPolicy(retry_for_s=60, first_backoff_s=0.25, max_backoff_s=2.0)
    assert [policy.delay(i) for i in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_gives_up_after_the_retry_budget():
    reasons = []
    server = PeakServer(f"http://127.0.0.1:{closed_port()}", policy=RetryPolicy(1.0, 0.1, 0.2), on_retry=reasons.append)
    started = time.monotonic()
    with pytest.raises(SendFailed, match="server unavailable") as failure:
        server.predict(np.zeros((1, 1, 8, 8), np.uint16))
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 3.0
    assert failure.value.attempts == len(reasons) + 1 >= 4
    assert all(r.startswith("no answer: ConnectionError") for r in reasons)


def test_no_retries_with_a_zero_budget():
    server = PeakServer(f"http://127.0.0.1:{closed_port()}", policy=RetryPolicy(0.0))
    with pytest.raises(SendFailed) as failure:
        server.predict(np.zeros((1, 1, 8, 8), np.uint16))
    assert failure.value.attempts == 1


def test_stop_ends_the_retries_at_once():
    stop = threading.Event()
    server = PeakServer(f"http://127.0.0.1:{closed_port()}", policy=RetryPolicy(60.0, 5.0, 5.0), stop=stop)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SendFailed, match="stopped while retrying"):
        server.predict(np.zeros((1, 1, 8, 8), np.uint16))
    assert time.monotonic() - started < 2.0


def test_key_file_is_re_read_when_it_changes(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "first"}}))
    server = PeakServer("http://127.0.0.1:1", key_file=key_file)
    assert server.auth_headers() == {"Authorization": "Bearer first"}
    time.sleep(0.01)
    key_file.write_text(json.dumps({"inference": {"key": "second"}}))
    assert server.auth_headers() == {"Authorization": "Bearer second"}
    assert PeakServer("http://127.0.0.1:1", token="t").auth_headers() == {"Authorization": "Bearer t"}
    assert PeakServer("http://127.0.0.1:1").auth_headers() == {}
