"""TorchServe request plumbing: headers, bodies, answers.

TorchServe hands the handler one mapping per request (its input fields) and a context holding
headers; these small functions turn that into what :mod:`peaknet_serve.decode` takes, and carry each
request's answer (status, body, content type, headers) back.

Conflicting inputs are refused, never resolved silently: an option given by a header and by a form
field (or query parameter) with different values, two spellings of one header (``X-Dtype`` and
``x-dtype``), a form field sent twice (two ``data`` parts). TorchServe's frontend keeps only the
last of several identically spelled headers before the handler sees them; that case cannot be told
apart here (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peaknet_serve.decode import DecodedFrames, OipRequest
from peaknet_serve.decode.mask import MASK_FIELD
from peaknet_serve.decode.options import MASK_AS_PART_TEXT
from peaknet_serve.encode.oip import oip_error
from peaknet_serve.errors import BadRequest, NotAcceptable, RequestError, ServerFault

log = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"
CXI_MEDIA_TYPES = ("application/x-hdf5", "application/x-cxi")
# a row key no input field can have (TorchServe's field names are str): the fields sent twice
REPEATED_FIELDS = ("peaknet_serve", "repeated_fields")
# headers the handler reads; two spellings of one of them with different values are a conflict
_READ_HEADERS = ("content-type", "accept", "x-dtype", "x-shape", "x-dataset")
# multipart parts whose declared type names an encoding; anything else is sniffed by magic bytes
_PART_TYPES = {"application/x-npy", "application/npy", "application/x-hdf5", "application/x-cxi", "application/x-hdf"}
_OPTION_FIELDS = ("dtype", "shape", "dataset", "threshold")


@dataclass
class Answer:
    """One request's response: status, body (dict -> JSON, bytes as is), content type and extra headers."""

    status: int
    body: Any
    content_type: str = JSON_MEDIA_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def error_answer(error: RequestError | ServerFault) -> Answer:
    return Answer(error.status, error.to_json())


def server_error(status: int, kind: str, message: str, retry_after_s: float | None = None) -> Answer:
    """A 5xx answer with the JSON error body; ``retry_after_s`` adds a ``Retry-After`` header."""
    headers = {} if retry_after_s is None else {"Retry-After": str(max(1, round(retry_after_s)))}
    return Answer(status, {"error": {"type": kind, "message": message, "status": status}}, headers=headers)


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
            field_types[str(key)] = str(value.get("content-type") or "").lower()
            continue
        name, text = str(key).lower(), str(value)
        if name in _READ_HEADERS and name in headers and headers[name].strip() != text.strip():
            raise BadRequest("bad_option", f"header {name!r} was sent twice with different values; send it once.")
        headers[name] = text
    return headers, field_types


def media_type(content_type: str | None) -> str:
    """``"type/subtype"`` of a Content-Type value, lower-cased, parameters dropped."""
    return (content_type or "").split(";")[0].strip().lower()


def request_payload(
    row: Mapping[str, Any], headers: Mapping[str, str], field_types: Mapping[str, str]
) -> tuple[bytes | bytearray, str | None, dict[str, str]]:
    """Body bytes, content type and X-* options of one TorchServe request row.

    A plain POST arrives as field ``body`` with the request's Content-Type. A multipart form was
    split by TorchServe into fields: the frame is field ``data``; ``dtype``/``shape``/``dataset``
    fields fill in options the headers did not give; the part's encoding is taken from the part's
    own Content-Type when it names one, else sniffed from magic bytes (``None``). Query
    parameters arrive as fields too and count as form fields.

    Raises:
        BadRequest ``bad_option``: a field sent twice, or an option given by a header and a field
            with different values.
    """
    repeated = row.get(REPEATED_FIELDS)
    if repeated:
        names = ", ".join(repr(name) for name in repeated)
        raise BadRequest("bad_option", f"the field(s) {names} were sent more than once; send each once.")
    # headers as x-NAME, fields as bare NAME: normalise_options refuses two different values
    options: dict[str, Any] = {k: v for k, v in headers.items() if k.startswith("x-")}
    options.update({name: row[name] for name in _OPTION_FIELDS if row.get(name) is not None})
    if media_type(headers.get("content-type")) == "multipart/form-data":
        part_type = media_type(field_types.get("data"))
        return _as_bytes(row.get("data")), part_type if part_type in _PART_TYPES else None, options
    body = row.get("body", row.get("data"))
    return _as_bytes(body), headers.get("content-type"), options


def request_mask_part(
    row: Mapping[str, Any], headers: Mapping[str, str], field_types: Mapping[str, str]
) -> bytes | bytearray | None:
    """The bytes of the multipart file part ``mask`` of one TorchServe request row; None without one.

    TorchServe hands form parts (and query parameters, where its frontend passes them on: 0.12's
    passes none of a POST with a body) over alike, as fields of the row; a file part (one with a
    file name) carries its Content-Type (``application/octet-stream`` where the client named none),
    a query parameter or a plain text field none, and the frontend has read a text field as UTF-8
    text, so binary bytes would not survive it.

    Raises:
        BadRequest ``bad_option``: a field ``mask`` of a request that is not ``multipart/form-data``
            (a query parameter), or one that is not a file part (a text field).
    """
    if row.get(MASK_FIELD) is None:
        return None
    multipart = media_type(headers.get("content-type")) == "multipart/form-data"
    if not multipart or not field_types.get(MASK_FIELD):
        kind = "a form field without a file name" if multipart else "a query parameter or field of a plain POST"
        raise BadRequest("bad_option", f"'mask' arrived as {kind}: {MASK_AS_PART_TEXT}.")
    return _as_bytes(row[MASK_FIELD])


_Q_RE = re.compile(r"^\s*q\s*=\s*([01](?:\.[0-9]{0,3})?)\s*$", re.IGNORECASE)


def accept_ranges(accept: str) -> list[tuple[str, float]]:
    """``"application/x-hdf5;q=0, */*"`` -> ``[("application/x-hdf5", 0.0), ("*/*", 1.0)]``.

    Media ranges are lower-cased; a range without a valid ``q`` (RFC 9110: 0 to 1, three decimals
    at most) weighs 1, one with a malformed ``q`` is dropped.
    """
    ranges = []
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        if media.count("/") != 1:
            continue
        quality = 1.0
        for param in params:
            if param.strip().lower().startswith("q"):
                match = _Q_RE.match(param)
                quality = float(match.group(1)) if match and float(match.group(1)) <= 1.0 else -1.0
        if quality >= 0.0:
            ranges.append((media, quality))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """(q, specificity) of the most specific range matching ``offer``; (0, -1) when none does."""
    kind = offer.split("/")[0]
    best = (0.0, -1)
    for media, quality in ranges:
        specificity = 2 if media == offer else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
        if specificity > best[1]:
            best = (quality, specificity)
    return best


def on_predictions_route(headers: Mapping[str, str]) -> bool:
    """True for a request to ``/predictions/{model}``: TorchServe 0.12's frontend adds the header
    ``url_path`` to those only (not to ``/v2/models/{model}/infer``). Such requests use the native API."""
    return "url_path" in headers


def wants_cxi(headers: Mapping[str, str]) -> bool:
    """Negotiate the answer's format from the Accept header: True for a CXI (HDF5) file, False for JSON.

    No Accept header (or an empty one) means JSON. Otherwise the format with the highest ``q`` wins;
    on a tie the more specific range (``application/x-hdf5`` over ``application/*`` over ``*/*``),
    then JSON.

    Raises:
        NotAcceptable ``not_acceptable`` (406): every format has ``q=0`` or matches no range.
    """
    accept = headers.get("accept", "").strip()
    if not accept:
        return False
    ranges = accept_ranges(accept)
    json_rank = _quality(JSON_MEDIA_TYPE, ranges)
    # one format under two names: the most specific range naming either decides its q
    cxi_rank = max((_quality(media, ranges) for media in CXI_MEDIA_TYPES), key=lambda rank: (rank[1], rank[0]))
    if json_rank[0] <= 0.0 and cxi_rank[0] <= 0.0:
        shown = accept if len(accept) <= 80 else accept[:80] + "..."
        raise NotAcceptable(
            "not_acceptable",
            f"Accept: {shown!r} rules out every format this server answers in; "
            f"accept {JSON_MEDIA_TYPE} (peak lists) or {CXI_MEDIA_TYPES[0]} (a CXI file).",
        )
    return cxi_rank > json_rank


def mark_repeated_fields() -> bool:
    """Make TorchServe's worker record, in each request's row, the input fields it received twice or more.

    TorchServe 0.12's ``ts.service.Service.retrieve_data_for_inference`` folds a request's fields
    (form parts and query parameters) into one dict, so a second ``data`` part silently replaces the
    first. This wraps it: the same rows, plus ``row[REPEATED_FIELDS] = ("data", ...)`` where a name
    came more than once, which :func:`request_payload` refuses. Returns True when installed (also
    when it already was); False outside a TorchServe worker or when TorchServe's internals differ.
    """
    try:
        from ts.service import Service  # noqa: PLC0415 - only inside a TorchServe worker
    except ImportError:
        return False
    original = Service.__dict__.get("retrieve_data_for_inference")
    if not isinstance(original, staticmethod):
        log.warning("this TorchServe has no Service.retrieve_data_for_inference; repeated fields are not detected")
        return False
    retrieve = original.__func__
    if getattr(retrieve, "marks_repeated_fields", False):
        return True

    def retrieve_marking_repeats(batch):
        headers, input_batch, request_ids = retrieve(batch)
        for row, request in zip(input_batch, batch):
            names = [parameter.get("name") for parameter in request.get("parameters") or ()]
            repeated = sorted({str(name) for name in names if names.count(name) > 1})
            if repeated:
                row[REPEATED_FIELDS] = tuple(repeated)
        return headers, input_batch, request_ids

    retrieve_marking_repeats.marks_repeated_fields = True
    Service.retrieve_data_for_inference = staticmethod(retrieve_marking_repeats)
    return True


def _as_bytes(value: Any) -> bytes | bytearray:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):
        return value.encode()
    # TorchServe parses application/json bodies; hand the decoder bytes so it can refuse them
    return json.dumps(value).encode()


def mask_label(request: bool, deployment: bool) -> str:
    """The answer's ``bad_pixel_mask``: which masks kept their bad pixels out of the peaks,
    ``"none"``, ``"deployment"``, ``"request"`` or ``"request+deployment"``."""
    return "+".join(kind for kind, applies in (("request", request), ("deployment", deployment)) if applies) or "none"


@dataclass
class Decoded:
    """A request that decoded: its index in the TorchServe batch, frames and response format
    (``oip``: an Open Inference Protocol request, answered in that protocol)."""

    idx: int
    frames: DecodedFrames
    cxi: bool
    oip: OipRequest | None = None
    threshold: float | None = None  # the request's peak threshold; None: the deployment's

    @property
    def group_key(self) -> tuple[int, int, str, float | None]:
        n, p, h, w = self.frames.array.shape
        return h, w, self.frames.array.dtype.str, self.threshold


HTTP_PHRASES = {
    200: "OK",
    400: "Bad Request",
    406: "Not Acceptable",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
