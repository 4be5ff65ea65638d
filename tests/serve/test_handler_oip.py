"""PeakNetHandler's Open Inference Protocol path and its Prometheus metrics, through TorchServe's own
Context, RequestProcessor and metrics cache (the worker side of TorchServe, without the Java frontend).
Requests are built and answers read by the real Triton HTTP client.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import ts
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from peaknet_serve.serve.handler import PeakNetHandler
from peaknet_serve.serve.metrics import PEAK_BUCKETS, peak_buckets
from tests.frames import spot_frames

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")

FIXTURE = Path(__file__).parents[1] / "fixtures" / "upstream"
TS_METRICS_YAML = Path(ts.__file__).parent / "configs" / "metrics.yaml"
METRIC_LINE = re.compile(r"\[METRICS\](\w+)\.(\w+):([-\d.e+]+)\|#([^|]*)\|#type:(\w+)")


def make_context(model_dir: Path, metrics=None) -> Context:
    # max_mask_fraction None: the fixture's random weights mark about half of every panel, over the default cap
    section = {"warmup_shapes": [[1, 64, 96]], "model_label": "tiny", "hit_min_peaks": 3, "max_mask_fraction": None}
    manifest = {"model": {"modelName": "peaknet", "modelVersion": "1.0"}}
    return Context(
        "peaknet", str(model_dir), manifest, 4, None, "0.12.0", metrics=metrics, model_yaml_config={"handler": section}
    )


@pytest.fixture(scope="module")
def handler(model_dir) -> PeakNetHandler:
    h = PeakNetHandler()
    h.initialize(make_context(model_dir))
    return h


def run_batch(handler, context, requests):
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    bodies = handler.handle([row for row, _ in requests], context)
    return [
        (context.get_response_status(i)[0], bodies[i], context.get_response_headers(i)) for i in range(len(requests))
    ]


def oip_request(frames: np.ndarray, datatype="UINT16", binary=True, outputs=None):
    """A TorchServe row + headers for tritonclient's POST /v2/models/peaknet/infer (no Content-Type)."""
    tensor = httpclient.InferInput("frames", list(frames.shape), datatype)
    tensor.set_data_from_numpy(frames, binary_data=binary)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    headers = {"explain": "False", "body": {"content-type": ""}}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return {"body": bytearray(body)}, headers


def native_request(frames: np.ndarray):
    return (
        {"body": bytearray(frames.tobytes())},
        {
            "Content-Type": "application/octet-stream",
            "X-Dtype": str(frames.dtype),
            "X-Shape": ",".join(map(str, frames.shape)),
            "body": {"content-type": "application/octet-stream"},
        },
    )


def triton_result(status, body, headers):
    assert status == 200, body
    length = headers.get("Inference-Header-Content-Length")
    return httpclient.InferResult.from_response_body(
        body if isinstance(body, bytes) else body.encode(), header_length=None if length is None else int(length)
    )


def native_peaks(answer_json: str) -> tuple[np.ndarray, np.ndarray]:
    frames = json.loads(answer_json)["frames"]
    num = np.array([f["num_peaks"] for f in frames], np.int32)
    rows = [
        [i, *values]
        for i, f in enumerate(frames)
        for values in zip(f["panel"], f["ss"], f["fs"], f["npix"], f["intensity"])
    ]
    return num, np.array(rows, np.float32).reshape(-1, 6)


def test_protocol_answers_match_the_native_api_in_one_batch(handler, model_dir):
    frames = spot_frames(n=2)
    context = make_context(model_dir)
    json_outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("num_peaks", "peaks")]
    answers = run_batch(
        handler,
        context,
        [
            native_request(frames),
            oip_request(frames),
            oip_request(frames.astype(np.float32), "FP32", binary=False, outputs=json_outputs),
            oip_request(frames[0, 1]),
        ],
    )
    num, peaks = native_peaks(answers[0][1])
    assert num.sum() > 0
    for answer in answers[1:3]:
        result = triton_result(*answer)
        np.testing.assert_array_equal(result.as_numpy("num_peaks"), num)
        np.testing.assert_allclose(result.as_numpy("peaks").reshape(-1, 6), peaks, rtol=1e-6)
        response = result.get_response()
        assert (response["model_name"], response["model_version"]) == ("peaknet", "1.0")
        assert response["parameters"]["shape"] == [2, 2, 64, 96]
    assert answers[1][2]["Inference-Header-Content-Length"]  # binary outputs by default from tritonclient
    assert "Inference-Header-Content-Length" not in answers[2][2]
    single = triton_result(*answers[3])  # [H, W]: one frame of one panel, panel 1 of frame 0 above
    in_panel_1 = peaks[(peaks[:, 0] == 0) & (peaks[:, 1] == 1)]
    np.testing.assert_allclose(single.as_numpy("peaks")[:, 2:], in_panel_1[:, 2:], rtol=1e-6)


def test_bad_tensors_get_protocol_errors_and_leave_batch_mates_alone(handler, model_dir):
    frames = spot_frames(n=1)
    context = make_context(model_dir)
    good = oip_request(frames)
    wrong_dtype = oip_request(frames.astype(np.int64), "INT64")
    row, headers = oip_request(frames)
    truncated = ({"body": row["body"][:-10]}, headers)
    answers = run_batch(handler, context, [wrong_dtype, good, truncated])
    assert [a[0] for a in answers] == [400, 200, 400]
    assert json.loads(answers[0][1])["error"].startswith("unsupported_dtype: ")
    assert json.loads(answers[2][1])["error"].startswith("size_mismatch: ")
    triton_result(*answers[1])


def test_the_predictions_route_keeps_the_native_api(handler, model_dir):
    """TorchServe marks /predictions/{model} requests with url_path: a protocol body there is not read as one."""
    row, headers = oip_request(spot_frames(n=1))
    json_row = {"body": bytearray(b'{"inputs": []}')}
    json_headers = {"Content-Type": "application/json", "body": {"content-type": "application/json"}}
    answers = run_batch(
        handler,
        make_context(model_dir),
        [(row, {**headers, "url_path": ""}), (json_row, {**json_headers, "url_path": ""}), (json_row, json_headers)],
    )
    assert [a[0] for a in answers] == [400, 415, 400]
    assert json.loads(answers[0][1])["error"]["type"] == "missing_option"  # native: raw bytes without X-Dtype
    assert json.loads(answers[1][1])["error"]["type"] == "unsupported_media_type"
    assert json.loads(answers[2][1]) == {
        "error": "missing_input: the request needs 'inputs' with one tensor named 'frames'."
    }


def test_describe_returns_the_model_metadata(handler, model_dir):
    context = make_context(model_dir)
    context.request_processor = [RequestProcessor({"describe": "True"})]
    (body,) = handler.handle([{}], context)
    metadata = json.loads(body)
    assert metadata["name"] == "peaknet" and metadata["versions"] == ["1.0"]
    assert metadata["inputs"][0]["name"] == "frames"
    assert metadata["parameters"]["model"] == "tiny" and metadata["parameters"]["hit_min_peaks"] == 3
    assert metadata["parameters"]["serving_mode"] == handler.mode.describe()
    assert metadata["parameters"]["compile_backend"] == "none (eager)"  # the CPU runs eager


def test_peak_buckets_are_cumulative():
    assert peak_buckets([0, 3, 3, 7, 5000]) == [
        ("0", 1),
        ("1", 1),
        ("2", 1),
        ("5", 3),
        ("10", 4),
        ("20", 4),
        ("50", 4),
        ("100", 4),
        ("200", 4),
        ("500", 4),
        ("1000", 4),
        ("2000", 4),
        ("+Inf", 5),
    ]
    assert peak_buckets([]) == [(str(b), 0) for b in PEAK_BUCKETS] + [("+Inf", 0)]


def published(caplog) -> list[tuple[str, str, float, dict[str, str], str]]:
    """(name, unit, value, labels, type) of every metric line the TorchServe metrics cache logged."""
    lines = []
    for record in caplog.records:
        match = METRIC_LINE.search(record.getMessage())
        if match:
            name, unit, value, dims, kind = match.groups()
            labels = dict(d.split(":", 1) for d in dims.split(",") if d)
            lines.append((name, unit, float(value), labels, kind))
    return lines


def test_metrics_published_through_torchserves_cache(handler, model_dir, caplog):
    cache = MetricsCacheYamlImpl(config_file_path=str(TS_METRICS_YAML))
    cache.initialize_cache()
    context = make_context(model_dir, metrics=cache)
    handler.metrics = type(handler.metrics)(context.metrics, "peaknet")
    frames = spot_frames(n=3, spots=2)
    with caplog.at_level(logging.INFO):
        answers = run_batch(
            handler,
            context,
            [native_request(frames), oip_request(frames), oip_request(frames.astype(np.int64), "INT64")],
        )
    num, _ = native_peaks(answers[0][1])
    lines = published(caplog)

    requests = [
        (labels["Protocol"], value) for name, unit, value, labels, kind in lines if name == "PeakNetRequestSeconds"
    ]
    assert sorted(p for p, _ in requests) == ["native", "oip", "oip"]
    assert all(0 < v < 60 for _, v in requests)
    assert {kind for name, *_, kind in lines if name in ("PeakNetRequestSeconds", "PeakNetStageSeconds")} == {
        "HISTOGRAM"
    }
    stages = {labels["Stage"] for name, _, _, labels, _ in lines if name == "PeakNetStageSeconds"}
    assert stages == {"decode", "h2d", "inference", "postprocess", "handle"}

    counts = list(num) * 2  # two good requests of the same three frames
    buckets = {labels["le"]: value for name, _, value, labels, _ in lines if name == "PeakNetFramePeaks_bucket"}
    assert buckets == {le: float(n) for le, n in peak_buckets(counts)}
    (hits,) = [(value, labels) for name, _, value, labels, _ in lines if name == "PeakNetHitFrames"]
    assert hits == (float(sum(c >= 3 for c in counts)), {"MinPeaks": "3", "ModelName": "peaknet", "Level": "Model"})
    (found,) = [value for name, _, value, _, _ in lines if name == "PeakNetPeaksFound"]
    assert found == sum(counts)
    (bad,) = [labels["ErrorType"] for name, _, _, labels, _ in lines if name == "PeakNetBadRequests"]
    assert bad == "unsupported_dtype"
