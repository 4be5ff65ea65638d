"""peaknet_serve.clients.client against loopback HTTP servers: retries, auth, error messages; and that
every client module imports without torch."""

import email.parser
import email.policy
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from peaknet_serve.clients.client import KeySource, PeakNetClient, ServerError, error_message
from peaknet_serve.clients.payloads import Geometry, simulate_frames
from peaknet_serve.decode import decode_request
from peaknet_serve.wire import read_inference_key
from tests.clients.reference_peaks import threshold_peaks

GEOMETRY = Geometry("test", 2, 64, 80)


# ---------------------------------------------------------------------------- the HTTP client


class FlakyApi(BaseHTTPRequestHandler):
    """503 for the first ``busy`` requests, then answers through :func:`threshold_peaks`."""

    busy = 2
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        if type(self).calls <= self.busy:
            status, document = 503, {"code": 503, "type": "ServiceUnavailableException", "message": "queue full"}
        elif self.headers.get("Authorization") != "Bearer k1":
            status, document = 401, {"message": "Token Authentication failed"}
        else:
            shape = tuple(int(d) for d in self.headers["X-Shape"].split(","))
            frames = np.frombuffer(body, dtype=self.headers["X-Dtype"]).reshape(shape)
            status, document = 200, threshold_peaks(frames)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def flaky():
    handler = type("Flaky", (FlakyApi,), {"calls": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_retries_busy_server_and_sends_the_key(flaky, tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "k1"}}))
    frames = simulate_frames(GEOMETRY, 2, seed=3).frames
    client = PeakNetClient(flaky, key_file=key_file, retries=2)
    answer = client.predict(frames)
    assert answer["frames"] == threshold_peaks(frames)["frames"]


class MaskedApi(BaseHTTPRequestHandler):
    """Splits a multipart form as the server does and answers with the decoded frames and mask."""

    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        options = {k: v.get_content().strip() for k, v in parts.items() if k not in ("data", "mask")}
        decoded = decode_request(parts["data"].get_content(), None, options, mask=parts["mask"].get_content())
        type(self).seen.append((parts["mask"].get_content_type(), decoded))
        document = threshold_peaks(decoded.array)
        payload = json.dumps({**document, "bad_pixel_mask": "request"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.mark.parametrize("encoding", ["raw", "npy", "hdf5-bslz4"])
def test_client_sends_a_mask_as_the_multipart_part_mask(encoding):
    handler = type("Masked", (MaskedApi,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        frames = simulate_frames(GEOMETRY, 2, seed=5).frames
        good = np.random.default_rng(5).random(GEOMETRY.frame_shape) > 0.3
        client = PeakNetClient(f"http://127.0.0.1:{server.server_address[1]}", encoding=encoding, retries=0)
        answer = client.predict(frames, mask=good.astype(np.int32))
        assert answer["bad_pixel_mask"] == "request"
        part_type, decoded = handler.seen[0]
        assert part_type == "application/x-npy" and np.array_equal(decoded.array, frames)
        assert decoded.good_pixels.shape == (1, *GEOMETRY.frame_shape) and np.array_equal(decoded.good_pixels[0], good)
    finally:
        server.shutdown()
        server.server_close()


def test_client_gives_up_with_the_server_message(flaky):
    frames = simulate_frames(GEOMETRY, 1, seed=4).frames
    with pytest.raises(ServerError, match="503"):
        PeakNetClient(flaky, token="k1", retries=1).predict(frames)
    with pytest.raises(ServerError, match="401"):
        PeakNetClient(flaky, token="wrong", retries=0).predict(frames)


def test_error_message_reads_the_servers_json_error():
    body = json.dumps({"error": {"type": "bad_shape", "message": "X-Shape is 3 numbers"}}).encode()
    assert error_message(body) == "bad_shape: X-Shape is 3 numbers"
    assert error_message(b"Bad Gateway") == "Bad Gateway"


def test_inference_key_is_read_from_torchserves_key_file(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "M"}, "inference": {"key": "I-123"}, "API": {"key": "A"}}))
    assert read_inference_key(key_file) == "I-123"
    assert KeySource(key_file=key_file).headers() == {"Authorization": "Bearer I-123"}
    assert KeySource(token="T").headers() == {"Authorization": "Bearer T"}
    key_file.write_text("{}")
    with pytest.raises(ValueError, match="inference key"):
        read_inference_key(key_file)


def test_key_source_rereads_a_rotated_key(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "first"}}))
    keys = KeySource(key_file=key_file)
    assert keys.headers() == {"Authorization": "Bearer first"}
    time.sleep(0.01)
    key_file.write_text(json.dumps({"inference": {"key": "second"}}))
    os.utime(key_file, (time.time() + 5, time.time() + 5))
    assert keys.headers() == {"Authorization": "Bearer second"}
    assert KeySource().headers() == {}


CLIENT_MODULES = [
    "peaknet_serve.clients.client",
    "peaknet_serve.clients.payloads",
    "peaknet_serve.clients.loadtest",
    "peaknet_serve.clients.peakfind",
    "peaknet_serve.clients.retry",
    "peaknet_serve.clients.send",
    "peaknet_serve.wire",
    "peaknet_serve.encode.response",
    "peaknet_serve.encode.cxi",
    "peaknet_serve.bridge.cli",
]


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    guard = "import sys; sys.modules['torch'] = None; "
    return subprocess.run(
        [sys.executable, "-c", guard + code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_modules_import_without_torch(module):
    """A client machine needs no PyTorch: with torch made unimportable, every client module loads."""
    result = _run_without_torch(f"import {module}")
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_torch_guard_fails_for_a_module_that_needs_torch():
    result = _run_without_torch("import peaknet_serve.pipeline")
    assert result.returncode != 0 and "torch" in result.stderr
