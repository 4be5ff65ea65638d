"""The bridge's side of HTTP: POST frames to the server, riding out restarts and full queues.

A request is retried while the server is *unavailable* (connection refused or reset, timeouts,
HTTP 429/502/503/504, and, with a key file, a rejected token: a restarted TorchServe writes new
keys) with exponential back-off, for at most ``retry_for_s`` seconds from its first failure; then
it fails with :class:`SendFailed`. TorchServe answers 500 "Worker died." to the requests of a batch
whose worker was killed (a server being stopped, a crash): those are retried ``worker_died_retries``
times only, since a request that itself kills the worker would otherwise do so again and again.
Any other answer (a 4xx about the frames, another 500) fails at once: resending the same bytes
would get the same answer. The decisions are :class:`peaknet_serve.clients.retry.RetryPolicy`'s,
with its defaults; :class:`peaknet_serve.clients.client.PeakNetClient` shares that policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from peaknet_serve.clients.client import KeySource
from peaknet_serve.clients.payloads import check_prediction, encode_request
from peaknet_serve.clients.retry import GaveUp, RetryPolicy, post_with_retries

__all__ = ["PeakServer", "RetryPolicy", "SendFailed"]


class SendFailed(RuntimeError):
    """A request that got no usable answer; ``attempts`` POSTs were made."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


class PeakServer:
    """``predict(frames)`` against ``POST {url}/predictions/{model}``; one HTTP session per thread.

    Args:
        url: inference address, e.g. ``http://127.0.0.1:8080``.
        encoding: request encoding (:data:`peaknet_serve.clients.payloads.ENCODINGS`).
        token / key_file: inference key, or TorchServe's ``key_file.json`` (re-read when it changes).
        timeout_s: per-POST timeout.
        policy: retry policy for an unavailable server.
        stop: when set, pending retries give up at once.
        on_retry: called with a short reason before each retry (for statistics).
    """

    def __init__(
        self,
        url: str,
        model: str = "peaknet",
        encoding: str = "raw",
        token: str | None = None,
        key_file: str | Path | None = None,
        timeout_s: float = 120.0,
        policy: RetryPolicy = RetryPolicy(),
        stop: threading.Event | None = None,
        on_retry: Callable[[str], None] = lambda reason: None,
    ):
        self.base_url = url.rstrip("/")
        self.url = f"{self.base_url}/predictions/{model}"
        self.encoding, self.timeout_s, self.policy = encoding, timeout_s, policy
        self.stop = stop or threading.Event()
        self.on_retry = on_retry
        self.auth = KeySource(token, key_file)
        self._local = threading.local()

    def auth_headers(self) -> dict[str, str]:
        return self.auth.headers()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def ping(self) -> tuple[int | None, str]:
        """``(status, text)`` of ``GET /ping``; status ``None`` when nothing answers."""
        try:
            answer = self._session().get(f"{self.base_url}/ping", headers=self.auth_headers(), timeout=10)
        except requests.RequestException as err:
            return None, str(err)
        return answer.status_code, answer.text[:300]

    def predict(self, frames: np.ndarray) -> dict[str, Any]:
        """The server's schema-checked JSON answer for ``(N, P, H, W)`` frames.

        Raises:
            SendFailed: a non-retryable answer, or the server stayed unavailable past the policy.
        """
        request = encode_request(frames, self.encoding)
        headers = {**request.headers, "Accept": "application/json"}

        def post() -> requests.Response:
            return self._session().post(
                self.url, data=request.body, headers={**headers, **self.auth_headers()}, timeout=self.timeout_s
            )

        try:
            answer, attempts = post_with_retries(
                post,
                self.policy,
                key_file_in_use=self.auth.key_file is not None,
                wait=self.stop.wait,
                on_retry=self.on_retry,
            )
        except GaveUp as failure:
            raise SendFailed(send_failure(failure), failure.attempts) from None
        return self._checked(answer, request.n_frames, attempts)

    @staticmethod
    def _checked(answer: requests.Response, n_frames: int, attempt: int) -> dict[str, Any]:
        try:
            document = answer.json()
        except ValueError:
            raise SendFailed(f"answer is not JSON: {answer.text[:200]!r}", attempt) from None
        problems = check_prediction(document, n_frames)
        if problems:
            raise SendFailed(f"malformed answer: {'; '.join(problems[:3])}", attempt)
        return document


def send_failure(failure: GaveUp) -> str:
    """The bridge's reason for a request given up: the final answer, the budget spent, or a stop."""
    if failure.why == "stopped":
        return f"stopped while retrying ({failure.reason})"
    if failure.why == "final" and failure.answer is not None:
        return f"HTTP {failure.answer.status_code}: {failure.answer.text[:300]}"
    return f"server unavailable for {failure.elapsed_s:.0f} s ({failure.reason})"
