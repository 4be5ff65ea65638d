"""Client errors raised while reading a request, each mapped to an HTTP status and a JSON body.

Every problem caused by the request itself (its bytes, its headers, its size) is raised as a
:class:`RequestError`. The handler turns it into that request's own response, so the other
requests of the same TorchServe batch are unaffected:

    {"error": {"type": "bad_shape", "message": "...", "status": 400}}

``type`` is short and machine-readable; ``message`` is a sentence for a person saying what was
wrong and what is accepted instead.
"""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the server cannot serve because of the request itself (a 4xx).

    Args:
        type: short machine-readable kind, e.g. ``"bad_shape"``, ``"unsupported_dtype"``.
        message: human sentence: what was wrong and what is accepted.
    """

    status: int = 400

    def __init__(self, type: str, message: str) -> None:
        super().__init__(message)
        self.type = type
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The response body: ``{"error": {"type", "message", "status"}}``."""
        return {"error": {"type": self.type, "message": self.message, "status": self.status}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, type={self.type!r}, message={self.message!r})"


class BadRequest(RequestError):
    """400: the request is malformed or asks for something unsupported."""

    status = 400


class PayloadTooLarge(RequestError):
    """413: the request (its body, or what it would decode to) exceeds a configured limit."""

    status = 413


class UnsupportedMediaType(RequestError):
    """415: the Content-Type names an encoding the server does not read."""

    status = 415
