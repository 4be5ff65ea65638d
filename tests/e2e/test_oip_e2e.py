"""The Open Inference Protocol (KServe v2) against a real TorchServe, spoken by the real Triton HTTP client.

``tritonclient.http.InferenceServerClient.infer("peaknet", [frames])`` must return the peaks the native
API (``POST /predictions/peaknet``) returns for the same frames, in both tensor forms; bad tensors get
4xx in the protocol's error form. The routes TorchServe 0.12's frontend cannot hand to the handler are
checked too, so that docs/oip.md stays true.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from tests.frames import spot_frames

pytestmark = pytest.mark.e2e
httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

TIMEOUT = 60


@pytest.fixture(scope="module")
def client(served):
    return httpclient.InferenceServerClient(urlsplit(served.inference_url).netloc, network_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return spot_frames(n=2, p=2, seed=3)


@pytest.fixture(scope="module")
def native(served, frames) -> tuple[np.ndarray, np.ndarray]:
    """num_peaks [N] and peaks [K, 6] from the native API for ``frames``."""
    answer = requests.post(
        served.predict_url,
        data=frames.tobytes(),
        timeout=TIMEOUT,
        headers={
            **served.headers,
            "Content-Type": "application/octet-stream",
            "X-Dtype": "uint16",
            "X-Shape": "2,2,64,96",
        },
    )
    assert answer.status_code == 200, answer.text
    per_frame = answer.json()["frames"]
    rows = [
        [i, *values]
        for i, f in enumerate(per_frame)
        for values in zip(f["panel"], f["ss"], f["fs"], f["npix"], f["intensity"])
    ]
    num = np.array([f["num_peaks"] for f in per_frame], np.int32)
    assert num.sum() > 0, "the test frames must have peaks"
    return num, np.array(rows, np.float32).reshape(-1, 6)


def frames_input(array: np.ndarray, datatype: str, binary: bool):
    tensor = httpclient.InferInput("frames", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "Torchserve"


@pytest.mark.parametrize(("datatype", "binary"), [("UINT16", True), ("UINT16", False), ("FP32", True), ("FP32", False)])
def test_infer_returns_the_native_peaks(client, frames, native, datatype, binary):
    array = frames if datatype == "UINT16" else frames.astype(np.float32)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("num_peaks", "peaks")]
    result = client.infer("peaknet", [frames_input(array, datatype, binary)], outputs=outputs, request_id="e2e-1")
    num, peaks = native
    np.testing.assert_array_equal(result.as_numpy("num_peaks"), num)
    np.testing.assert_allclose(result.as_numpy("peaks").reshape(-1, 6), peaks, rtol=1e-6)
    response = result.get_response()
    assert response["id"] == "e2e-1" and response["model_name"] == "peaknet"
    assert [o["datatype"] for o in response["outputs"]] == ["INT32", "FP32"]


def test_infer_with_default_outputs_and_lower_rank_layouts(client, frames, native):
    num, peaks = native
    result = client.infer("peaknet", [frames_input(frames[1], "UINT16", True)])  # [P, H, W]: frame 1
    np.testing.assert_array_equal(result.as_numpy("num_peaks"), num[1:])
    np.testing.assert_allclose(result.as_numpy("peaks")[:, 1:], peaks[peaks[:, 0] == 1][:, 1:], rtol=1e-6)
    result = client.infer("peaknet", [frames_input(frames[0, 0], "UINT16", False)])  # [H, W]: one panel
    mask = (peaks[:, 0] == 0) & (peaks[:, 1] == 0)
    np.testing.assert_allclose(result.as_numpy("peaks")[:, 2:], peaks[mask][:, 2:], rtol=1e-6)


def test_concurrent_requests_share_batches(served, frames, native):
    """8 requests in flight at once (tritonclient's own async_infer): TorchServe batches them (batch size 4)."""
    client = httpclient.InferenceServerClient(
        urlsplit(served.inference_url).netloc, concurrency=8, network_timeout=TIMEOUT
    )
    pending = [client.async_infer("peaknet", [frames_input(frames, "UINT16", True)]) for _ in range(8)]
    for request in pending:
        np.testing.assert_array_equal(request.get_result(timeout=TIMEOUT).as_numpy("num_peaks"), native[0])
    client.close()


@pytest.mark.parametrize(
    ("array", "datatype", "expected"),
    [
        (np.zeros((2, 64, 96), np.int64), "INT64", "unsupported_dtype"),
        (np.zeros((64,), np.uint16), "UINT16", "bad_shape"),
        (np.zeros((65, 1, 8, 8), np.uint16), "UINT16", "too_large"),
    ],
)
def test_bad_tensors_get_4xx_in_the_protocol_error_form(client, array, datatype, expected):
    with pytest.raises(InferenceServerException) as info:
        client.infer("peaknet", [frames_input(array, datatype, True)])
    assert info.value.status() in ("400", "413")
    assert info.value.message().startswith(f"{expected}: ")


def test_malformed_bodies_get_400_with_an_error_string(served):
    url = f"{served.inference_url}/v2/models/peaknet/infer"
    cases = [
        (b'{"inputs": [{"name": "frames", "datatype": "UINT16", "shape": [2, 3], "data": [1, 2, 3]}]}', {}),
        (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}', {}),
        (
            b'{"inputs": [{"name": "frames", "datatype": "UINT16", "shape": [2, 2],'
            b' "parameters": {"binary_data_size": 8}}]}' + b"\x00" * 7,
            {"Inference-Header-Content-Length": "85"},
        ),
        (b"{not json", {"Content-Type": "application/json"}),
    ]
    for body, headers in cases:
        answer = requests.post(url, data=body, headers={**served.headers, **headers}, timeout=TIMEOUT)
        assert answer.status_code == 400, answer.text
        assert set(answer.json()) == {"error"} and isinstance(answer.json()["error"], str)


def test_model_metadata_from_the_handler_on_the_management_api(served):
    answer = requests.get(
        f"{served.management_url}/models/peaknet",
        params={"customized": "true"},
        headers=served.headers,
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    (description,) = answer.json()
    metadata = description["customizedMetadata"]  # the frontend embeds the handler's JSON as an object
    assert metadata["name"] == "peaknet"
    assert [t["name"] for t in metadata["inputs"]] == ["frames"]
    assert [t["name"] for t in metadata["outputs"]] == ["num_peaks", "peaks"]


def test_routes_torchserve_does_not_hand_to_the_handler(client, served):
    """TorchServe 0.12's frontend has no route for the per-model v2 GET endpoints (docs/oip.md)."""
    for path in ("/v2/models/peaknet", "/v2/models/peaknet/ready"):
        assert requests.get(served.inference_url + path, timeout=TIMEOUT).status_code == 404
    with pytest.raises(InferenceServerException) as info:
        client.infer("peaknet", [frames_input(np.zeros((8, 8), np.uint16), "UINT16", True)], model_version="1")
    assert info.value.status() == "501"


def test_the_predictions_route_keeps_the_native_api(served):
    body = b'{"inputs": [{"name": "frames", "datatype": "UINT16", "shape": [1, 2], "data": [1, 2]}]}'
    answer = requests.post(
        served.predict_url, data=body, timeout=TIMEOUT, headers={**served.headers, "Content-Type": "application/json"}
    )
    assert answer.status_code == 415 and answer.json()["error"]["type"] == "unsupported_media_type"
