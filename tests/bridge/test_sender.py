"""Giving up on a server that never comes back, stopping, the bridge's failure reasons, key files.

Which answers are retried and the back-off are the policy's (tests/clients/test_retry.py). The
server-side behaviour (a real TorchServe restarted under a stream) is tested end to end in
tests/e2e/test_bridge_e2e.py; here the server is a closed port.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import requests

from peaknet_serve.bridge.sender import PeakServer, RetryPolicy, SendFailed, send_failure
from peaknet_serve.clients.retry import GaveUp


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def test_failure_reasons_say_why_the_request_was_given_up():
    final = requests.Response()
    final.status_code, final._content, final.encoding = 400, b"X-Shape is 3 numbers", "utf-8"
    refused = requests.ConnectionError("refused")
    assert send_failure(GaveUp("final", "HTTP 400", 1, 0.0, final, None)) == "HTTP 400: X-Shape is 3 numbers"
    exhausted = GaveUp("exhausted", "no answer: ConnectionError", 40, 299.6, None, refused)
    assert send_failure(exhausted) == "server unavailable for 300 s (no answer: ConnectionError)"
    stopped = GaveUp("stopped", "HTTP 503", 3, 0.75, None, None)
    assert send_failure(stopped) == "stopped while retrying (HTTP 503)"
