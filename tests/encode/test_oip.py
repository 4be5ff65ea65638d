"""Open Inference Protocol responses, read back with the real Triton HTTP client's result parser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peaknet_serve.decode.oip import RequestedOutput
from peaknet_serve.encode.oip import PEAK_COLUMNS, model_metadata, oip_error, oip_response, peak_outputs

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")

FRAMES = [
    {
        "num_peaks": 2,
        "panel": [0, 3],
        "ss": [1.5, 20.25],
        "fs": [7.0, 8.5],
        "npix": [4, 9],
        "intensity": [100.0, 2500.5],
    },
    {"num_peaks": 0, "panel": [], "ss": [], "fs": [], "npix": [], "intensity": []},
    {"num_peaks": 1, "panel": [1], "ss": [63.0], "fs": [0.0], "npix": [1], "intensity": [12.0]},
]
BOTH = ("num_peaks", "peaks")


def result_of(encoded) -> httpclient.InferResult:
    return httpclient.InferResult.from_response_body(encoded.body, header_length=encoded.header_length)


def test_peak_outputs_rows_follow_the_frames():
    outputs = peak_outputs(FRAMES)
    np.testing.assert_array_equal(outputs["num_peaks"], [2, 0, 1])
    assert outputs["num_peaks"].dtype == np.int32
    peaks = outputs["peaks"]
    assert peaks.dtype == np.float32 and peaks.shape == (3, len(PEAK_COLUMNS))
    np.testing.assert_array_equal(peaks[:, 0], [0, 0, 2])  # frame
    np.testing.assert_array_equal(peaks[:, 1], [0, 3, 1])  # panel
    np.testing.assert_array_equal(peaks[1, 2:], np.float32([20.25, 8.5, 9, 2500.5]))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_client_reads_both_outputs(binary):
    outputs = peak_outputs(FRAMES)
    encoded = oip_response(
        outputs,
        [RequestedOutput(n, binary) for n in BOTH],
        model_name="peaknet",
        model_version="1.0",
        request_id="r1",
        parameters={"precision": "fp32"},
    )
    assert (encoded.header_length is not None) == binary
    assert encoded.content_type == ("application/octet-stream" if binary else "application/json")
    result = result_of(encoded)
    np.testing.assert_array_equal(result.as_numpy("num_peaks"), outputs["num_peaks"])
    np.testing.assert_array_equal(result.as_numpy("peaks").reshape(-1, 6), outputs["peaks"])
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("peaknet", "1.0", "r1")
    assert response["parameters"] == {"precision": "fp32"}
    assert [o["shape"] for o in response["outputs"]] == [[3], [3, 6]]


def test_mixed_binary_and_json_outputs_and_a_subset():
    outputs = peak_outputs(FRAMES)
    encoded = oip_response(
        outputs, [RequestedOutput("peaks", True), RequestedOutput("num_peaks", False)], model_name="peaknet"
    )
    result = result_of(encoded)
    np.testing.assert_array_equal(result.as_numpy("peaks"), outputs["peaks"])
    np.testing.assert_array_equal(result.as_numpy("num_peaks"), outputs["num_peaks"])
    header = json.loads(encoded.body[: encoded.header_length])
    assert [o["name"] for o in header["outputs"]] == ["peaks", "num_peaks"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 3 * 6 * 4}
    assert len(encoded.body) == encoded.header_length + 3 * 6 * 4
    assert "model_version" not in header and "id" not in header

    only = oip_response(outputs, [RequestedOutput("num_peaks", False)], model_name="peaknet")
    assert result_of(only).as_numpy("peaks") is None


def test_no_peaks_at_all():
    frames = [FRAMES[1], FRAMES[1]]
    for binary in (True, False):
        encoded = oip_response(peak_outputs(frames), [RequestedOutput(n, binary) for n in BOTH], model_name="m")
        result = result_of(encoded)
        np.testing.assert_array_equal(result.as_numpy("num_peaks"), [0, 0])
        assert result.as_numpy("peaks").size == 0


def test_error_and_metadata_bodies():
    assert oip_error("bad_shape: shape (3,) has 1 dimensions") == {"error": "bad_shape: shape (3,) has 1 dimensions"}
    metadata = model_metadata("peaknet", "1.0", {"precision": "bf16"})
    assert metadata["name"] == "peaknet" and metadata["versions"] == ["1.0"]
    assert metadata["inputs"] == [{"name": "frames", "datatype": "UINT16", "shape": [-1, -1, -1, -1]}]
    assert [o["name"] for o in metadata["outputs"]] == list(BOTH)
    assert metadata["parameters"]["peaks_columns"] == list(PEAK_COLUMNS)
    assert "FP32" in metadata["parameters"]["input_datatypes"] and metadata["parameters"]["precision"] == "bf16"
    assert model_metadata("peaknet", None)["versions"] == []
