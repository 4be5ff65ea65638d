"""Open Inference Protocol (KServe v2) inference responses and errors.

Outputs of one request of N frames with K peaks in all:

=============  ========  =======  ===========================================================
 name           datatype  shape    contents
=============  ========  =======  ===========================================================
 ``num_peaks``  INT32     [N]      peaks found in each frame
 ``peaks``      FP32      [K, 6]   one row per peak: frame (0..N-1 within the request), panel,
                                   ss, fs (pixel-index coordinates in the panel, pixel centre at
                                   integer values), npix, intensity; frame by frame, each
                                   frame's peaks in the order of the native JSON answer
=============  ========  =======  ===========================================================

An output asked for with ``binary_data`` goes into the binary tensor extension: its bytes
(little-endian, row-major) follow the JSON header in output order, its JSON entry carries
``parameters.binary_data_size`` and the response the ``Inference-Header-Content-Length`` header.
Errors are ``{"error": "<message>"}`` with the request's 4xx/5xx status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..decode.oip import ACCEPTED_DATATYPES_TEXT, INPUT_NAME, RequestedOutput

PEAK_COLUMNS = ("frame", "panel", "ss", "fs", "npix", "intensity")
DATATYPES = {np.dtype("int32"): "INT32", np.dtype("float32"): "FP32"}
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class OipBody:
    """A response body: ``header_length`` is the JSON part's length when binary outputs follow it."""

    body: bytes
    header_length: int | None

    @property
    def content_type(self) -> str:
        return JSON_CONTENT_TYPE if self.header_length is None else BINARY_CONTENT_TYPE


def peak_outputs(frames: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``num_peaks`` (int32 [N]) and ``peaks`` (float32 [K, 6]) from per-frame peak dicts.

    Args:
        frames: N dicts of :func:`peaknet_serve.device.peaks.peaks_to_frames`
            (``num_peaks`` and the lists ``panel``, ``ss``, ``fs``, ``npix``, ``intensity``).
    """
    num_peaks = np.array([int(f["num_peaks"]) for f in frames], dtype=np.int32)
    peaks = np.empty((int(num_peaks.sum()), len(PEAK_COLUMNS)), dtype=np.float32)
    row = 0
    for index, frame in enumerate(frames):
        count = int(frame["num_peaks"])
        block = peaks[row : row + count]
        block[:, 0] = index
        for column, name in enumerate(PEAK_COLUMNS[1:], start=1):
            block[:, column] = np.asarray(frame[name], dtype=np.float32)[:count]
        row += count
    return {"num_peaks": num_peaks, "peaks": peaks}


def oip_response(
    outputs: Mapping[str, np.ndarray],
    requested: Sequence[RequestedOutput],
    *,
    model_name: str,
    model_version: str | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> OipBody:
    """The inference response for the ``requested`` outputs (JSON, or JSON + binary tensors).

    Args:
        outputs: name -> int32/float32 array (see :func:`peak_outputs`).
        requested: which outputs to return and how, in response order.
        model_name: ``model_name`` of the response.
        model_version: ``model_version`` of the response; omitted when ``None``.
        request_id: the request's ``id``, echoed; omitted when ``None``.
        parameters: response-level ``parameters`` (e.g. precision, device); omitted when empty.
    """
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = dict(parameters)
    entries, blobs = [], []
    for output in requested:
        array = outputs[output.name]
        entry: dict[str, Any] = {"name": output.name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape)}
        if output.binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    header["outputs"] = entries
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return OipBody(text, None)
    return OipBody(b"".join([text, *blobs]), len(text))


def model_metadata(name: str, version: str | None, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The protocol's model metadata: the ``frames`` input and the two outputs.

    ``-1`` marks a dimension of any size; ``frames`` may also be 3-D [P, H, W] or 2-D [H, W], and
    of any datatype in ``parameters.input_datatypes`` (UINT16 is listed: raw detector counts).
    """
    return {
        "name": name,
        "versions": [version] if version else [],
        "platform": "pytorch_torchserve",
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT16", "shape": [-1, -1, -1, -1]}],
        "outputs": [
            {"name": "num_peaks", "datatype": "INT32", "shape": [-1]},
            {"name": "peaks", "datatype": "FP32", "shape": [-1, len(PEAK_COLUMNS)]},
        ],
        "parameters": {
            "input_datatypes": ACCEPTED_DATATYPES_TEXT.split(", "),
            "input_layouts": ["[N, P, H, W]", "[P, H, W]", "[H, W]"],
            "peaks_columns": list(PEAK_COLUMNS),
            **(parameters or {}),
        },
    }


def oip_error(message: str) -> dict[str, str]:
    """The protocol's error body."""
    return {"error": message}
