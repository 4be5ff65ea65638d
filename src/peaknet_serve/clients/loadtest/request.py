"""One request: POST, check the answer, record a :class:`Sample`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import requests

from peaknet_serve.clients.client import KeySource, error_message
from peaknet_serve.clients.payloads import (
    EncodedRequest,
    check_prediction,
)


@dataclass
class Sample:
    """One request as the client saw it; times in seconds since the run started.

    ``status`` is the HTTP status, 0 when no answer came (connection error, timeout) and -1 for an
    open-loop send dropped because too many requests were in flight. ``scheduled`` is the planned
    send time in an open loop (``nan`` in a closed one).
    """

    scheduled: float
    start: float
    end: float
    status: int
    error: str | None
    n_frames: int
    body_bytes: int
    frame_bytes: int
    warmup: bool

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float:
        return 1e3 * (self.end - self.start)

    @property
    def lag_ms(self) -> float:
        return 1e3 * (self.start - self.scheduled)


def post_request(
    session: requests.Session,
    url: str,
    request: EncodedRequest,
    auth: KeySource,
    timeout_s: float,
    clock: Callable[[], float],
    scheduled: float = math.nan,
    warmup: bool = False,
) -> Sample:
    """POST one request and check its answer; never raises for a server or network failure."""
    start = clock()
    status, error = 0, None
    try:
        headers = {**request.headers, **auth.headers(), "Accept": "application/json"}
        answer = session.post(url, data=request.body, headers=headers, timeout=timeout_s)
        status = answer.status_code
        error = answer_error(status, answer.headers.get("Content-Type", ""), answer.content, request.n_frames)
    except requests.Timeout:
        error = "timeout"
    except requests.RequestException as err:
        error = f"connection: {type(err).__name__}"
    return Sample(
        scheduled=scheduled,
        start=start,
        end=clock(),
        status=status,
        error=error,
        n_frames=request.n_frames,
        body_bytes=len(request.body),
        frame_bytes=request.frame_nbytes,
        warmup=warmup,
    )


def answer_error(status: int, content_type: str, body: bytes, n_frames: int) -> str | None:
    """``None`` for a good answer, else a short reason (``http 503: ...``, ``schema: ...``)."""
    if status != 200:
        return f"http {status}: {error_message(body)}"
    if "json" not in content_type:
        return f"schema: content type {content_type!r}, not JSON"
    try:
        problems = check_prediction(json.loads(body), n_frames)
    except ValueError:
        return "schema: body is not JSON"
    return f"schema: {problems[0]}" if problems else None
