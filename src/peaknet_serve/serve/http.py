"""TorchServe request plumbing: headers, bodies, answers.

TorchServe hands the handler one mapping per request (its input fields) and a context holding
headers; these small functions turn that into what :mod:`peaknet_serve.decode` takes, and carry each
request's answer (status, body, content type) back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peaknet_serve.decode import DecodedFrames, OipRequest
from peaknet_serve.encode.oip import oip_error
from peaknet_serve.errors import RequestError

CXI_MEDIA_TYPES = ("application/x-hdf5", "application/x-cxi")
# multipart parts whose declared type names an encoding; anything else is sniffed by magic bytes
_PART_TYPES = {"application/x-npy", "application/npy", "application/x-hdf5", "application/x-cxi",
               "application/x-hdf"}
_OPTION_FIELDS = ("dtype", "shape", "dataset")


@dataclass
class Answer:
    """One request's response: status, body (dict -> JSON, bytes as is), content type and extra headers."""

    status: int
    body: Any
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def error_answer(error: RequestError) -> Answer:
    return Answer(error.status, error.to_json())


def server_error(status: int, kind: str, message: str) -> Answer:
    return Answer(status, {"error": {"type": kind, "message": message, "status": status}})


def as_oip_error(answer: Answer) -> Answer:
    """An error answer in the Open Inference Protocol's form, ``{"error": "<type>: <message>"}``."""
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    if not isinstance(error, dict):
        return answer
    return Answer(answer.status, oip_error(f"{error.get('type')}: {error.get('message')}"))


def request_headers(context: Any, idx: int) -> tuple[dict[str, str], dict[str, str]]:
    """Headers of request ``idx``: (HTTP headers with lower-cased names, content type per form field).

    TorchServe mixes both in one mapping: HTTP headers map to strings, each input field (``body``
    for a plain POST, the field names of a multipart form) to ``{"content-type": ...}``.
    """
    headers, field_types = {}, {}
    for key, value in (context.get_all_request_header(idx) or {}).items():
        if isinstance(value, Mapping):
            field_types[str(key)] = str(value.get("content-type", "")).lower()
        else:
            headers[str(key).lower()] = str(value)
    return headers, field_types


def media_type(content_type: str | None) -> str:
    """``"type/subtype"`` of a Content-Type value, lower-cased, parameters dropped."""
    return (content_type or "").split(";")[0].strip().lower()


def request_payload(row: Mapping[str, Any], headers: Mapping[str, str],
                    field_types: Mapping[str, str]) -> tuple[bytes | bytearray, str | None, dict[str, str]]:
    """Body bytes, content type and X-* options of one TorchServe request row.

    A plain POST arrives as field ``body`` with the request's Content-Type. A multipart form was
    split by TorchServe into fields: the frame is field ``data``; ``dtype``/``shape``/``dataset``
    fields fill in options the headers did not give; the part's encoding is taken from the part's
    own Content-Type when it names one, else sniffed from magic bytes (``None``).
    """
    options = {k: v for k, v in headers.items() if k.startswith("x-")}
    if media_type(headers.get("content-type")) == "multipart/form-data":
        for name in _OPTION_FIELDS:
            value = row.get(name)
            if value is not None and f"x-{name}" not in options:
                options[f"x-{name}"] = _as_text(value)
        part_type = media_type(field_types.get("data"))
        return _as_bytes(row.get("data")), part_type if part_type in _PART_TYPES else None, options
    body = row.get("body", row.get("data"))
    return _as_bytes(body), headers.get("content-type"), options


def on_predictions_route(headers: Mapping[str, str]) -> bool:
    """True for a request to ``/predictions/{model}``: TorchServe 0.12's frontend adds the header
    ``url_path`` to those only (not to ``/v2/models/{model}/infer``). Such requests use the native API."""
    return "url_path" in headers


def wants_cxi(headers: Mapping[str, str]) -> bool:
    """True when the client's Accept header asks for an HDF5/CXI answer."""
    accept = headers.get("accept", "")
    return any(media_type(part) in CXI_MEDIA_TYPES for part in accept.split(","))


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _as_bytes(value: Any) -> bytes | bytearray:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):
        return value.encode()
    # TorchServe parses application/json bodies; hand the decoder bytes so it can refuse them
    return json.dumps(value).encode()


@dataclass
class Decoded:
    """A request that decoded: its index in the TorchServe batch, frames and response format
    (``oip``: an Open Inference Protocol request, answered in that protocol)."""

    idx: int
    frames: DecodedFrames
    cxi: bool
    oip: OipRequest | None = None

    @property
    def group_key(self) -> tuple[int, int, str]:
        n, p, h, w = self.frames.array.shape
        return h, w, self.frames.array.dtype.str


HTTP_PHRASES = {200: "OK", 400: "Bad Request", 413: "Payload Too Large",
                415: "Unsupported Media Type", 500: "Internal Server Error",
                503: "Service Unavailable", 507: "Insufficient Storage"}
