"""End to end through a real TorchServe: every encoding, mixed batches, CXI answers, precision, metrics."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
import requests
import torch

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.device.finder import PanelPeakFinder
from tests.e2e.conftest import TINY_MODEL
from tests.frames import spot_frames

pytestmark = pytest.mark.e2e
TIMEOUT = 60


make_frames = spot_frames


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def hdf5_bytes(array: np.ndarray, dataset: str = "/entry_1/data_1/data", **kwargs) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset(dataset, data=array, chunks=(1, *array.shape[1:]), **kwargs)
    return buffer.getvalue()


def post(server, body, content_type, headers=None, files=None, data=None):
    if files is not None:
        return requests.post(
            server.predict_url, files=files, data=data, timeout=TIMEOUT, headers={**server.headers, **(headers or {})}
        )
    return requests.post(
        server.predict_url,
        data=body,
        timeout=TIMEOUT,
        headers={**server.headers, "Content-Type": content_type, **(headers or {})},
    )


def peak_signature(answer: dict) -> list:
    return [
        (f["num_peaks"], f["panel"], np.round(f["ss"], 4).tolist(), np.round(f["fs"], 4).tolist(), f["npix"])
        for f in answer["frames"]
    ]


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return make_frames(n=2, p=2)


@pytest.fixture(scope="module")
def expected(frames) -> dict:
    """Peaks computed in this process with the same model: what the server must answer."""
    model = load_peaknet(TINY_MODEL, dtype="float32", device="cpu")
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"))
    table = finder.find(torch.from_numpy(frames.reshape(-1, *frames.shape[2:]))).table
    return {"num_peaks": int(table.ss.numel()), "table": table}


def test_raw_uint16_matches_in_process_model(served, frames, expected):
    response = post(
        served,
        frames.tobytes(),
        "application/octet-stream",
        {"X-Dtype": "uint16", "X-Shape": ",".join(map(str, frames.shape))},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["shape"] == list(frames.shape)
    assert answer["dtype"] == "uint16" and answer["precision"] == "float32"
    assert answer["model"] == "peaknet-tiny-fixture"
    assert len(answer["frames"]) == frames.shape[0]
    assert sum(f["num_peaks"] for f in answer["frames"]) == expected["num_peaks"] > 0
    table = expected["table"]
    got_ss = np.concatenate([f["ss"] for f in answer["frames"]])
    np.testing.assert_allclose(np.sort(got_ss), np.sort(table.ss.double().numpy()), atol=1e-4)
    got_intensity = np.concatenate([f["intensity"] for f in answer["frames"]])
    np.testing.assert_allclose(np.sort(got_intensity), np.sort(table.intensity.double().numpy()), rtol=1e-5)


def test_every_encoding_gives_the_same_peaks(served, frames):
    hdf5plugin = pytest.importorskip("hdf5plugin")  # a declared dependency; absent on bare GPU images
    shape = ",".join(map(str, frames.shape))
    answers = {
        "raw": post(served, frames.tobytes(), "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": shape}),
        "raw-float32": post(
            served,
            frames.astype(np.float32).tobytes(),
            "application/octet-stream",
            {"X-Dtype": "float32", "X-Shape": shape},
        ),
        "npy": post(served, npy_bytes(frames), "application/x-npy"),
        "hdf5-gzip": post(served, hdf5_bytes(frames, compression="gzip"), "application/x-hdf5"),
        "hdf5-zstd": post(served, hdf5_bytes(frames, **hdf5plugin.Zstd()), "application/x-hdf5"),
        "hdf5-bitshuffle-lz4": post(served, hdf5_bytes(frames, **hdf5plugin.Bitshuffle()), "application/x-hdf5"),
        "hdf5-other-dataset": post(
            served, hdf5_bytes(frames, "/data/frames"), "application/x-hdf5", {"X-Dataset": "/data/frames"}
        ),
        "multipart-npy": post(served, None, None, files={"data": ("frame.npy", npy_bytes(frames))}),
        "multipart-raw": post(
            served,
            None,
            None,
            files={"data": ("frame.bin", frames.tobytes())},
            data={"dtype": "uint16", "shape": shape},
        ),
        "multipart-hdf5": post(served, None, None, files={"data": ("frame.h5", hdf5_bytes(frames))}),
    }
    for name, response in answers.items():
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
    reference = peak_signature(answers["raw"].json())
    assert sum(f[0] for f in reference) > 0
    for name, response in answers.items():
        assert peak_signature(response.json()) == reference, name


def test_cxi_answer_for_crystfel(served, frames):
    response = post(served, npy_bytes(frames), "application/x-npy", {"Accept": "application/x-hdf5"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-hdf5")
    json_answer = post(served, npy_bytes(frames), "application/x-npy").json()
    with h5py.File(io.BytesIO(response.content), "r") as f:
        n_peaks = f["/entry_1/result_1/nPeaks"][:]
        x = f["/entry_1/result_1/peakXPosRaw"][:]
        y = f["/entry_1/result_1/peakYPosRaw"][:]
    assert n_peaks.tolist() == [fr["num_peaks"] for fr in json_answer["frames"]]
    h = frames.shape[2]
    for i, frame in enumerate(json_answer["frames"]):
        k = frame["num_peaks"]
        expected_y = np.asarray(frame["panel"]) * h + np.asarray(frame["ss"])
        np.testing.assert_allclose(np.sort(y[i, :k]), np.sort(expected_y), atol=1e-3)
        np.testing.assert_allclose(np.sort(x[i, :k]), np.sort(frame["fs"]), atol=1e-3)


BAD_REQUESTS = [
    (b"", "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": "2,64,96"}, 400),
    (b"\x00" * 100, "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": "2,64,96"}, 400),
    (b"\x00" * 100, "application/octet-stream", {"X-Dtype": "complex64", "X-Shape": "50"}, 400),
    (b"\x00" * 100, "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": "1000000,1000000"}, 413),
    (b"\x00" * 64, "image/png", {}, 415),
    (b"not an npy file at all", "application/x-npy", {}, 400),
    (b"\x89HDF\r\n\x1a\n truncated", "application/x-hdf5", {}, 400),
    (b'{"frames": [1, 2, 3]}', "application/json", {}, 415),
]


def test_bad_requests_batched_with_good_ones(served, frames):
    shape = ",".join(map(str, frames.shape))
    good = (frames.tobytes(), "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": shape}, 200)
    reference = peak_signature(post(served, *good[:3]).json())
    jobs = [good, *BAD_REQUESTS, good, good, *BAD_REQUESTS[:4], good]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda job: post(served, job[0], job[1], job[2]), jobs))
    for (_body, content_type, headers, status), response in zip(jobs, responses):
        assert response.status_code == status, (content_type, headers, response.text)
        answer = response.json()
        if status == 200:
            assert peak_signature(answer) == reference
        else:
            assert set(answer["error"]) >= {"type", "message"}, answer
            assert answer["error"]["message"]
    assert requests.get(f"{served.inference_url}/ping", timeout=10).json()["status"] == "Healthy"


def test_handler_metrics_are_published(served, frames):
    post(
        served,
        frames.tobytes(),
        "application/octet-stream",
        {"X-Dtype": "uint16", "X-Shape": ",".join(map(str, frames.shape))},
    )
    post(served, b"", "application/octet-stream", {"X-Dtype": "uint16", "X-Shape": "1,64,96"})
    text = requests.get(f"{served.metrics_url}/metrics", timeout=10).text
    for name in (
        "PeakNetFramesServed",
        "PeakNetPanelsServed",
        "PeakNetBadRequests",
        "PeakNetDecodeMs",
        "PeakNetInferenceMs",
        "PeakNetPeaksPerFrame",
        "PeakNetBatchRequests",
        "PeakNetInferenceMsTotal",
        "PeakNetHandleMsTotal",
        "PeakNetBatches",
    ):
        assert name in text, f"{name} missing from /metrics"
    served_lines = [line for line in text.splitlines() if line.startswith("PeakNetFramesServed")]
    assert float(served_lines[0].rsplit(" ", 1)[1]) >= frames.shape[0]
    totals = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("PeakNetHandleMsTotal{", "PeakNetInferenceMsTotal{", "PeakNetBatches{"))
    }
    assert totals["PeakNetBatches"] >= 1
    assert totals["PeakNetHandleMsTotal"] >= totals["PeakNetInferenceMsTotal"] > 0


def test_precision_env_var_changes_served_dtype(start_server, frames):
    server = start_server(PEAKNET_PRECISION="bf16")
    response = post(server, npy_bytes(frames), "application/x-npy")
    assert response.status_code == 200, response.text
    assert response.json()["precision"] == "bfloat16"


def test_per_request_threshold(served, frames):
    """X-Peak-Threshold / form field threshold move the sensitivity per request and are echoed;
    a threshold outside (0, 1) is a 400 bad_option."""
    shape = ",".join(map(str, frames.shape))
    plain = {"X-Dtype": "uint16", "X-Shape": shape}
    default = post(served, frames.tobytes(), "application/octet-stream", plain)
    strict = post(served, frames.tobytes(), "application/octet-stream", {**plain, "X-Peak-Threshold": "0.95"})
    loose = post(served, None, None, files={"data": ("frame.npy", npy_bytes(frames))}, data={"threshold": "0.02"})
    bad = post(served, frames.tobytes(), "application/octet-stream", {**plain, "X-Peak-Threshold": "1"})
    assert [r.status_code for r in (default, strict, loose)] == [200, 200, 200], (strict.text, loose.text)
    assert default.json()["threshold"] is None
    assert strict.json()["threshold"] == 0.95 and loose.json()["threshold"] == 0.02
    pixels = [sum(sum(f["npix"]) for f in r.json()["frames"]) for r in (strict, default, loose)]
    assert pixels[0] < pixels[1] < pixels[2]
    model = load_peaknet(TINY_MODEL, dtype="float32", device="cpu")
    finder = PanelPeakFinder(model, dtype=torch.float32, device=torch.device("cpu"), threshold=0.95)
    table = finder.find(torch.from_numpy(frames.reshape(-1, *frames.shape[2:]))).table
    assert sum(f["num_peaks"] for f in strict.json()["frames"]) == int(table.ss.numel())
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_option"
