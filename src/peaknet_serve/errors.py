"""Client errors raised while reading a request, each mapped to an HTTP status and a JSON body.

Every problem caused by the request itself (its bytes, its headers, its size) is raised as a
:class:`RequestError`. The handler turns it into that request's own response, so the other
requests of the same TorchServe batch are unaffected:

    {"error": {"type": "bad_shape", "message": "...", "status": 400}}

``type`` is short and machine-readable; ``message`` is a sentence for a person saying what was
wrong and what is accepted instead. The types raised by :mod:`peaknet_serve.decode`:

=====  ===========================  ========================================================
 400   empty_body                   the body is empty
 400   bad_body                     the body is not binary (e.g. decoded as text or JSON)
 400   content_type_mismatch        declared ``.npy``/HDF5 but the magic bytes disagree
 400   missing_option               raw bytes without ``X-Dtype`` or ``X-Shape``
 400   bad_option                   an option that is not short UTF-8 text, or given twice with
                                    different values (header and form field, two spellings of a
                                    header, a form field or query parameter sent twice); a
                                    ``mask`` sent other than as a multipart file part
 400   unsupported_dtype            not one of the eight pixel dtypes; object (pickle),
                                    structured or big-endian ``.npy``; non-numeric HDF5
 400   bad_shape                    not 2-, 3- or 4-D, an empty dimension, unparsable X-Shape
 400   size_mismatch                body/data length differs from dtype x shape
 400   bad_npy                      malformed ``.npy`` header
 400   bad_hdf5                     unreadable/corrupt HDF5
 400   hdf5_dataset_not_found       no dataset at ``X-Dataset`` (default /entry_1/data_1/data)
 400   hdf5_external_link           the path crosses a link to another file
 400   hdf5_external_storage        the dataset's data lives in external files
 400   hdf5_virtual_dataset         the dataset is a VDS
 400   hdf5_unsupported_filter      a filter that is not a known, installed compressor
 400   mask_mismatch                the frames' (panels, H, W) differ from the server's bad-pixel
                                    mask (raised by the handler)
 400   bad_mask                     the multipart part ``mask`` is not a bad-pixel mask of the
                                    frames: a ``.npy`` (bool or integer) or raw uint8 bytes,
                                    non-zero = good, of (P, H, W), (N, P, H, W), or (H, W) when
                                    P == 1; a malformed, oversized or all-bad mask
 406   not_acceptable               the Accept header rules out both JSON and HDF5/CXI answers
 413   too_large                    body, pixels, frames, panels, side or chunk over a limit;
                                    or more compute than one batch may take on this device
 415   unsupported_media_type       unknown Content-Type
=====  ===========================  ========================================================

Faults of the server, not of the request, are :class:`ServerFault` (a 5xx with the same body):
``hdf5_reader_failed`` (500: the HDF5 reader process died or hung on this request),
``busy`` and ``insufficient_memory`` (503, with ``Retry-After``) come from the handler.

The reverse proxy in front of TorchServe (``deploy/nginx``, :mod:`peaknet_serve.launch.proxy`)
answers some requests itself, with the same body; :func:`proxy_errors` holds its types:

=====  ===========================  ========================================================
 400   bad_request                  nginx could not parse the request line or headers
 400   bad_multipart                ``multipart/form-data`` without a non-empty ``boundary``
 401   unauthorized                 no inference key, or a wrong or expired one
 404   not_found                    a route the proxy does not serve (``/token``)
 413   too_large                    the body is over TorchServe's ``max_request_size``
 429   too_many_connections         the client address has as many requests in flight as allowed
 502   upstream_unavailable         TorchServe is not reachable or closed the connection
 503   worker_died                  TorchServe's "Worker died." (its 507, or a 500 that is not the handler's)
 504   upstream_timeout             TorchServe did not answer within the proxy's read timeout
=====  ===========================  ========================================================

The handler's own 500 answers carry their JSON body a second time, in the header
:data:`ERROR_BODY_HEADER`: the proxy tells them from the frontend's 500 "Worker died." by it and
gives them back unchanged.
"""

from __future__ import annotations

from typing import Any

#: header of the handler's 500 answers holding their JSON body (``json.dumps``, ASCII)
ERROR_BODY_HEADER = "X-PeakNet-Error"


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


class NotAcceptable(RequestError):
    """406: the Accept header excludes every format the server can answer in."""

    status = 406


class UnsupportedMediaType(RequestError):
    """415: the Content-Type names an encoding the server does not read."""

    status = 415


class Unauthorized(RequestError):
    """401: the request carries no valid key (answered by the reverse proxy, see :func:`proxy_errors`)."""

    status = 401


class NotFound(RequestError):
    """404: a route that is not served (answered by the reverse proxy)."""

    status = 404


class TooManyRequests(RequestError):
    """429: the client has too many requests in flight (answered by the reverse proxy)."""

    status = 429


class ServerFault(Exception):
    """A request the server failed to serve through no fault of the request (a 5xx).

    Args:
        type: short machine-readable kind, e.g. ``"hdf5_reader_failed"``.
        message: human sentence: what failed, and whether retrying may help.
        status: the HTTP status, 500 unless given.
    """

    def __init__(self, type: str, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        """The response body: ``{"error": {"type", "message", "status"}}``, as for client errors."""
        return {"error": {"type": self.type, "message": self.message, "status": self.status}}


def proxy_errors(
    max_body_bytes: int, connections_per_client: int, read_timeout_s: int
) -> list[RequestError | ServerFault]:
    """The answers the reverse proxy gives itself, one per type, in the table's order.

    Args:
        max_body_bytes: the largest body the proxy (and TorchServe's ``max_request_size``) admits.
        connections_per_client: requests one client address may have in flight.
        read_timeout_s: seconds the proxy waits for TorchServe's answer.
    """
    return [
        BadRequest("bad_request", "the request line or headers could not be parsed."),
        BadRequest(
            "bad_multipart",
            "multipart/form-data needs a non-empty boundary parameter (multipart/form-data; boundary=...); "
            "or send the frames as the whole body "
            "(application/octet-stream with X-Dtype and X-Shape, application/x-npy, application/x-hdf5).",
        ),
        Unauthorized(
            "unauthorized",
            "no valid inference key: send the header Authorization: Bearer KEY with the inference key "
            "from key_file.json of the server (keys change when the server restarts or renews them).",
        ),
        NotFound("not_found", "this route is not served through the proxy."),
        PayloadTooLarge("too_large", f"the body is over the limit of {max_body_bytes} bytes of this server."),
        TooManyRequests(
            "too_many_connections",
            f"this address already has {connections_per_client} requests in flight; retry when one has finished.",
        ),
        ServerFault(
            "upstream_unavailable",
            "the model server is not reachable or closed the connection; retry later.",
            502,
        ),
        ServerFault(
            "worker_died",
            "the worker serving this request died before it answered (the model server starts a new one); "
            "retry the request, with fewer frames if it ran long.",
            503,
        ),
        ServerFault(
            "upstream_timeout",
            f"the model server did not answer within {read_timeout_s} s; retry later, or with fewer frames.",
            504,
        ),
    ]
