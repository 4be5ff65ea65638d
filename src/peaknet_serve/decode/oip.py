"""Open Inference Protocol (KServe v2, Triton HTTP) inference requests -> frames.

The body of ``POST /v2/models/peaknet/infer`` is a JSON inference header, optionally followed by
the binary tensor extension: raw little-endian tensor bytes after the JSON, the JSON's length in
the ``Inference-Header-Content-Length`` header and each binary input's size in its
``parameters.binary_data_size``::

    {"id": "42",
     "inputs": [{"name": "frames", "datatype": "UINT16", "shape": [1, 16, 352, 384],
                 "parameters": {"binary_data_size": 4325376}}],
     "outputs": [{"name": "peaks", "parameters": {"binary_data": true}}]}<4325376 raw bytes>

or, all in JSON, ``"data": [...]`` (flat or nested, row-major) instead of ``binary_data_size``.

One input, ``frames``: shape ``[N, P, H, W]``, ``[P, H, W]`` or ``[H, W]``; datatype one of
:data:`OIP_DATATYPES`. Outputs: ``num_peaks`` and ``peaks`` (see :mod:`peaknet_serve.encode.oip`).

Everything a request declares (datatype, shape, sizes, header length) is checked against
:class:`~peaknet_serve.decode.limits.DecodeLimits` before its tensor is read; binary tensors
are zero-copy views of the body when aligned, as for raw bodies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadRequest, PayloadTooLarge
from .buffer import BytesLike, array_from_bytes, byte_view
from .layout import LAYOUTS_TEXT, frames_shape
from .limits import DecodeLimits, check_body_size, check_frames_shape
from .media import media_type
from .request import DecodedFrames

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "frames"
OUTPUT_NAMES = ("num_peaks", "peaks")

# Protocol datatype -> the wire dtype it carries (little-endian on the wire, native here).
OIP_DATATYPES: dict[str, np.dtype] = {
    "UINT8": np.dtype("uint8"),
    "UINT16": np.dtype("uint16"),
    "INT16": np.dtype("int16"),
    "INT32": np.dtype("int32"),
    "UINT32": np.dtype("uint32"),
    "FP16": np.dtype("float16"),
    "FP32": np.dtype("float32"),
    "FP64": np.dtype("float64"),
}
ACCEPTED_DATATYPES_TEXT = ", ".join(OIP_DATATYPES)


@dataclass(frozen=True)
class RequestedOutput:
    """One output the client asked for; ``binary``: in the binary extension rather than JSON ``data``."""

    name: str
    binary: bool


@dataclass(frozen=True)
class OipRequest:
    """A decoded inference request.

    Attributes:
        frames: the ``frames`` tensor as (N, P, H, W) in its wire dtype (``encoding`` ``"oip"``).
        id: the request's ``id``, echoed in the response; ``None`` when absent.
        outputs: the outputs to return, in response order.
    """

    frames: DecodedFrames
    id: str | None
    outputs: tuple[RequestedOutput, ...]


def is_oip_request(headers: Mapping[str, str], view: memoryview) -> bool:
    """Whether a request to the inference port speaks the Open Inference Protocol.

    True for a body with the binary extension's ``Inference-Header-Content-Length``, a JSON
    Content-Type, or (tritonclient sends no Content-Type) no Content-Type, no ``X-Dtype``/``X-Shape``
    and a body that starts with ``{``. None of these is a valid native request: native bodies are
    raw bytes with ``X-Dtype``/``X-Shape``, ``.npy`` or HDF5. ``headers`` have lower-case names.
    """
    if HEADER_LENGTH in headers:
        return True
    declared = media_type(headers.get("content-type"))
    if declared is not None:
        return declared == "application/json" or declared.endswith("+json")
    if "x-dtype" in headers or "x-shape" in headers:
        return False
    head = bytes(view[:64]).lstrip(b" \t\r\n")
    return head.startswith(b"{")


def decode_oip_request(body: BytesLike, headers: Mapping[str, str], limits: DecodeLimits) -> OipRequest:
    """Decode one inference request body.

    Args:
        body: the request body (JSON header, then binary tensor data when the extension is used).
        headers: the request's HTTP headers, lower-case names.
        limits: size limits; the JSON part is bounded by ``max_json_bytes``.

    Returns:
        The frames, the request id and the requested outputs.

    Raises:
        RequestError: 400 for a malformed request, unknown input/output, unsupported datatype, bad
            shape or size mismatch; 413 when a declared size exceeds a limit.
    """
    view = byte_view(body)
    check_body_size(len(view), limits)
    json_length = _json_length(headers, len(view))
    if json_length > limits.max_json_bytes:
        raise PayloadTooLarge(
            "too_large",
            f"the JSON inference header is {json_length} bytes; the limit is {limits.max_json_bytes} bytes. "
            "Send large tensors with the binary tensor extension (binary_data_size).",
        )
    request = _parse_json(view[:json_length])
    frames_spec = _frames_input(request)
    dtype, shape = _tensor_type(frames_spec, limits)
    binary_size = _binary_size(frames_spec)
    tail = len(view) - json_length
    if binary_size is None:
        if tail:
            raise BadRequest(
                "size_mismatch",
                f"{tail} bytes follow the JSON inference header but input {INPUT_NAME!r} declares no binary_data_size.",
            )
        array = _json_tensor(frames_spec, dtype, shape)
    else:
        array = _binary_tensor(view, json_length, binary_size, tail, dtype, shape)
    return OipRequest(
        frames=DecodedFrames(array=array, encoding="oip"),
        id=_request_id(request),
        outputs=_requested_outputs(request),
    )


def _json_length(headers: Mapping[str, str], body_length: int) -> int:
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return body_length
    text = str(value).strip()
    if not text.isdigit() or len(text) > 20:
        raise BadRequest("bad_inference_header", f"Inference-Header-Content-Length {text[:40]!r} is not a byte count.")
    length = int(text)
    if not 0 < length <= body_length:
        raise BadRequest(
            "bad_inference_header",
            f"Inference-Header-Content-Length is {length} but the body has {body_length} bytes.",
        )
    return length


def _parse_json(view: memoryview) -> dict[str, Any]:
    try:
        request = json.loads(bytes(view).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest("bad_json", f"the inference request is not valid JSON: {_clip(str(exc))}.") from None
    if not isinstance(request, dict):
        raise BadRequest("bad_json", "the inference request must be a JSON object with 'inputs'.")
    return request


def _frames_input(request: Mapping[str, Any]) -> Mapping[str, Any]:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("missing_input", f"the request needs 'inputs' with one tensor named {INPUT_NAME!r}.")
    names = [item.get("name") if isinstance(item, dict) else None for item in inputs]
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown or len(names) != 1:
        raise BadRequest(
            "unknown_input",
            f"inputs {_clip(repr(names))}: the model takes exactly one input, {INPUT_NAME!r}.",
        )
    return inputs[0]


def _tensor_type(spec: Mapping[str, Any], limits: DecodeLimits) -> tuple[np.dtype, tuple[int, int, int, int]]:
    datatype = spec.get("datatype")
    dtype = OIP_DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadRequest(
            "unsupported_dtype",
            f"datatype {_clip(repr(datatype))} of {INPUT_NAME!r} is not supported; accepted: {ACCEPTED_DATATYPES_TEXT}.",
        )
    dims = spec.get("shape")
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise BadRequest("bad_shape", f"shape {_clip(repr(dims))} must be a list of integers; layouts: {LAYOUTS_TEXT}.")
    shape = frames_shape(dims)
    check_frames_shape(shape, limits)
    return dtype, shape


def _binary_size(spec: Mapping[str, Any]) -> int | None:
    parameters = spec.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise BadRequest("bad_parameters", f"'parameters' of {INPUT_NAME!r} must be a JSON object.")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest("bad_parameters", f"binary_data_size {_clip(repr(size))} must be a byte count.")
    if "data" in spec:
        raise BadRequest("bad_parameters", f"input {INPUT_NAME!r} has both 'data' and binary_data_size.")
    return size


def _binary_tensor(
    view: memoryview, offset: int, size: int, tail: int, dtype: np.dtype, shape: tuple[int, int, int, int]
) -> np.ndarray:
    count = shape[0] * shape[1] * shape[2] * shape[3]
    expected = count * dtype.itemsize
    if size != expected:
        raise BadRequest(
            "size_mismatch",
            f"shape {list(shape)} of {dtype.name} needs {expected} bytes, binary_data_size is {size}.",
        )
    if tail != size:
        raise BadRequest(
            "size_mismatch",
            f"binary_data_size is {size} bytes but {tail} bytes follow the JSON inference header.",
        )
    wire = dtype.newbyteorder("<")
    pixels = array_from_bytes(view, wire, count, offset=offset)
    if not wire.isnative:  # only on a big-endian host
        pixels = pixels.astype(dtype)
    return pixels.reshape(shape)


def _json_tensor(spec: Mapping[str, Any], dtype: np.dtype, shape: tuple[int, int, int, int]) -> np.ndarray:
    data = spec.get("data")
    if not isinstance(data, list):
        raise BadRequest(
            "missing_data",
            f"input {INPUT_NAME!r} needs 'data' (a JSON array) or parameters.binary_data_size with binary data.",
        )
    try:
        values = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest("bad_tensor_data", f"'data' of {INPUT_NAME!r} is not a regular array of numbers.") from None
    count = shape[0] * shape[1] * shape[2] * shape[3]
    if values.size != count:
        raise BadRequest(
            "size_mismatch",
            f"shape {list(shape)} needs {count} values, 'data' has {values.size}.",
        )
    if values.dtype.kind not in ("iu" if dtype.kind in "iu" else "iuf"):
        kind = "integers" if dtype.kind in "iu" else "numbers"
        raise BadRequest("bad_tensor_data", f"'data' of a {_oip_name(dtype)} tensor must hold {kind} only.")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            raise BadRequest(
                "bad_tensor_data",
                f"'data' holds {low}..{high}, outside the range of {_oip_name(dtype)} ({info.min}..{info.max}).",
            )
    return np.ascontiguousarray(values.reshape(shape), dtype=dtype)


def _request_id(request: Mapping[str, Any]) -> str | None:
    value = request.get("id")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("bad_json", "the request 'id' must be a string.")
    return value


def _requested_outputs(request: Mapping[str, Any]) -> tuple[RequestedOutput, ...]:
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("bad_parameters", "the request 'parameters' must be a JSON object.")
    binary_default = _flag(parameters, "binary_data_output")
    outputs = request.get("outputs")
    if outputs is None:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUT_NAMES)
    if not isinstance(outputs, list) or not outputs:
        raise BadRequest("unknown_output", f"'outputs' must list some of {list(OUTPUT_NAMES)}.")
    chosen: dict[str, RequestedOutput] = {}
    for item in outputs:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUT_NAMES:
            raise BadRequest("unknown_output", f"output {_clip(repr(name))} is unknown; outputs: {list(OUTPUT_NAMES)}.")
        output_parameters = item.get("parameters") or {}
        if not isinstance(output_parameters, dict):
            raise BadRequest("bad_parameters", f"'parameters' of output {name!r} must be a JSON object.")
        binary = _flag(output_parameters, "binary_data") if "binary_data" in output_parameters else binary_default
        chosen[name] = RequestedOutput(name, binary)
    return tuple(chosen.values())


def _flag(parameters: Mapping[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest("bad_parameters", f"parameter {name!r} must be true or false.")
    return value


def _oip_name(dtype: np.dtype) -> str:
    return next(name for name, wire in OIP_DATATYPES.items() if wire == dtype)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
