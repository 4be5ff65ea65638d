"""The bridge's side of HTTP: POST frames to the server, riding out restarts and full queues.

A request is retried while the server is *unavailable* (connection refused or reset, timeouts,
HTTP 429/502/503/504, and, with a key file, a rejected token: a restarted TorchServe writes new
keys) with exponential back-off, for at most ``retry_for_s`` seconds from its first failure; then
it fails with :class:`SendFailed`. TorchServe answers 500 "Worker died." to the requests of a batch
whose worker was killed (a server being stopped, a crash): those are retried ``worker_died_retries``
times only, since a request that itself kills the worker would otherwise do so again and again.
Any other answer (a 4xx about the frames, another 500) fails at once: resending the same bytes
would get the same answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from peaknet_serve.clients.client import KeySource
from peaknet_serve.clients.payloads import check_prediction, encode_request

RETRY_STATUSES = frozenset({429, 502, 503, 504})
TOKEN_REJECTED = "Token Authorization failed"
WORKER_DIED = "Worker died"


class SendFailed(RuntimeError):
    """A request that got no usable answer; ``attempts`` POSTs were made."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often an unavailable server is retried."""

    retry_for_s: float = 300.0
    first_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    worker_died_retries: int = 2

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return min(self.first_backoff_s * 2.0**attempt, self.max_backoff_s)


def is_unavailable(status: int, text: str, key_file_in_use: bool) -> bool:
    """Whether an HTTP answer means "try again later" rather than "these frames are bad"."""
    if status in RETRY_STATUSES:
        return True
    return key_file_in_use and status in (400, 401, 403) and TOKEN_REJECTED in text


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
        attempt, first_failure, worker_deaths = 0, None, 0
        while True:
            attempt += 1
            try:
                answer = self._session().post(
                    self.url,
                    data=request.body,
                    headers={**request.headers, **self.auth_headers(), "Accept": "application/json"},
                    timeout=self.timeout_s,
                )
            except requests.RequestException as err:
                reason = f"no answer: {type(err).__name__}"
            else:
                if answer.status_code == 200:
                    return self._checked(answer, request.n_frames, attempt)
                died = answer.status_code == 500 and WORKER_DIED in answer.text
                worker_deaths += died
                retry = (died and worker_deaths <= self.policy.worker_died_retries) or is_unavailable(
                    answer.status_code, answer.text, self.auth.key_file is not None
                )
                if not retry:
                    raise SendFailed(f"HTTP {answer.status_code}: {answer.text[:300]}", attempt)
                reason = f"HTTP {answer.status_code}" + (" worker died" if died else "")
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            delay = self.policy.delay(attempt - 1)
            if now + delay - first_failure > self.policy.retry_for_s:
                raise SendFailed(f"server unavailable for {now - first_failure:.0f} s ({reason})", attempt)
            self.on_retry(reason)
            if self.stop.wait(delay):
                raise SendFailed(f"stopped while retrying ({reason})", attempt)

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
