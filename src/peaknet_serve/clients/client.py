"""A torch-free client of the peak-finding API: auth, encodings, retries, JSON and CXI answers.

    client = PeakNetClient("http://gpu-host:8080", key_file="key_file.json", encoding="hdf5-bslz4")
    client.ping()
    answer = client.predict(frames)          # (N, P, H, W) numpy array -> the JSON answer (checked)
    answer = client.predict(frames, mask=good)   # with the frames' bad-pixel mask, non-zero = good
    cxi = client.predict_cxi(frames)         # -> the CXI peak file's bytes (CrystFEL --peaks=cxi)

Connection errors and 503 (TorchServe's queue is full, or a worker is restarting) are retried with
exponential back-off (:data:`peaknet_serve.clients.retry.CLIENT_POLICY`); any other error status
raises :class:`ServerError` with the server's message.
Each thread gets its own HTTP connection. A key file is re-read when it changes (TorchServe rotates
keys through its management API).
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import requests

from peaknet_serve.clients.payloads import check_prediction, encode_request
from peaknet_serve.clients.retry import CLIENT_POLICY, GaveUp, post_with_retries
from peaknet_serve.wire import CXI, DEFAULT_MODEL, DEFAULT_URL, HDF5, JSON, read_inference_key


class ServerError(RuntimeError):
    """The server refused a request or could not be reached; ``status`` is 0 without an answer."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class KeySource:
    """The ``Authorization`` header from a token or TorchServe's key file, re-read whenever the file changes."""

    def __init__(self, token: str | None = None, key_file: str | Path | None = None):
        self._token, self._key_file = token, Path(key_file) if key_file else None
        self._mtime: int | None = None
        self._lock = threading.Lock()

    @property
    def key_file(self) -> Path | None:
        return self._key_file

    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <key>``; empty without a token or key file. A key file that is
        missing for a moment (TorchServe rewrites it when it restarts) leaves the last key in use."""
        if self._key_file is not None:
            with self._lock:
                try:
                    mtime = self._key_file.stat().st_mtime_ns
                except OSError:
                    mtime = None
                if mtime is not None and mtime != self._mtime:
                    self._token, self._mtime = read_inference_key(self._key_file), mtime
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def error_message(body: bytes) -> str:
    """``type: message`` of the server's JSON error body, else the body's first 200 characters."""
    try:
        error = json.loads(body)["error"]
        return f"{error['type']}: {error['message']}"[:200]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


class PeakNetClient:
    """``POST /predictions/<model>`` with retries; one connection per thread.

    Args:
        url: the inference address.
        model: the served model's name.
        encoding: request encoding (:data:`peaknet_serve.clients.payloads.ENCODINGS`).
        token, key_file: inference token, or TorchServe's ``key_file.json`` to read it from.
        timeout_s: per-request timeout.
        retries: further attempts after a 503 or a connection error (back-off 0.5 s, doubling, at most 10 s):
            the ``max_retries`` of :data:`~peaknet_serve.clients.retry.CLIENT_POLICY`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        encoding: str = "raw",
        token: str | None = None,
        key_file: str | Path | None = None,
        timeout_s: float = 120.0,
        retries: int = 4,
    ):
        self.base_url = url.rstrip("/")
        self.url = f"{self.base_url}/predictions/{model}"
        self.encoding, self.timeout_s, self.retries = encoding, timeout_s, retries
        self.policy = replace(CLIENT_POLICY, max_retries=retries)
        self.auth = KeySource(token, key_file)
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def ping(self) -> None:
        """Raise :class:`ServerError` unless ``GET /ping`` answers 200."""
        try:
            answer = self._session().get(f"{self.base_url}/ping", headers=self.auth.headers(), timeout=10)
        except requests.RequestException as err:
            raise ServerError(f"server at {self.base_url} does not answer: {err}") from err
        if answer.status_code != 200:
            raise ServerError(
                f"{self.base_url}/ping answered {answer.status_code}: {answer.text[:200]}", answer.status_code
            )

    def predict(
        self, frames: np.ndarray, headers: dict[str, str] | None = None, mask: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Peaks of ``(N, P, H, W)`` frames: the JSON answer, schema-checked.

        ``mask``: the frames' bad-pixel mask (non-zero = good; ``(P, H, W)`` for every frame,
        ``(N, P, H, W)`` frame by frame, ``(H, W)`` for single-panel frames): its bad pixels count
        in no peak. Sent as the multipart part ``mask``, the frames in part ``data`` in this
        client's encoding; the answer's ``bad_pixel_mask`` says which masks the server applied.
        """
        request = encode_request(frames, self.encoding, mask)
        answer = self._post(request.body, {**request.headers, **(headers or {}), "Accept": JSON})
        document = answer.json()
        problems = check_prediction(document, request.n_frames)
        if problems:
            raise ServerError(f"malformed answer: {'; '.join(problems[:3])}", answer.status_code)
        return document

    def predict_cxi(
        self, frames: np.ndarray, headers: dict[str, str] | None = None, mask: np.ndarray | None = None
    ) -> bytes:
        """The CXI peak file of ``frames`` (HDF5 bytes in CrystFEL's ``--peaks=cxi`` layout); ``mask`` as for :meth:`predict`."""
        request = encode_request(frames, self.encoding, mask)
        answer = self._post(request.body, {**request.headers, **(headers or {}), "Accept": HDF5})
        if answer.headers.get("Content-Type", "").split(";")[0].strip() not in (HDF5, CXI):
            raise ServerError(
                f"expected an HDF5 answer, got {answer.headers.get('Content-Type')!r}", answer.status_code
            )
        return answer.content

    def _post(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        def post() -> requests.Response:
            return self._session().post(
                self.url, data=body, headers={**headers, **self.auth.headers()}, timeout=self.timeout_s
            )

        try:
            return post_with_retries(post, self.policy, key_file_in_use=self.auth.key_file is not None)[0]
        except GaveUp as failure:
            if failure.answer is None:
                raise ServerError(f"no answer from {self.url}: {failure.error}") from failure.error
            status = failure.answer.status_code
            raise ServerError(f"server answered {status}: {error_message(failure.answer.content)}", status) from None
