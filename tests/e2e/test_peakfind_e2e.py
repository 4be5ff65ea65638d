"""peakfind.py against the real TorchServe: a small run of CXI files in, CrystFEL peak files out,
identical to what the server answers frame by frame, and resumable."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import requests

from peaknet_serve.clients import peakfind
from peaknet_serve.clients.payloads import Geometry, encode_request, simulate_frames

pytestmark = pytest.mark.e2e

GEOMETRY = Geometry("e2e", 2, 96, 128)


def write_run(path, n_frames, seed):
    frames = simulate_frames(GEOMETRY, n_frames, "uint16", seed=seed).frames
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip")
    return frames


def test_peakfind_run_matches_the_server_and_resumes(server, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    frames = write_run(runs / "r0001.cxi", 5, seed=0)
    write_run(runs / "r0002.cxi", 3, seed=1)
    token = server.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    auth = ["--token", token] if token else []
    out = tmp_path / "peaks"
    args = [
        str(runs),
        "-o",
        str(out),
        "--url",
        server.inference_url,
        *auth,
        "--frames-per-request",
        "2",
        "--concurrency",
        "2",
        "--quiet",
        "--min-peaks",
        "1",
        "--summary-json",
        str(tmp_path / "s.json"),
    ]
    assert peakfind.main(args) == 0
    assert peakfind.is_complete(out / "r0001_peaks.cxi", 5) and peakfind.is_complete(out / "r0002_peaks.cxi", 3)

    # the file holds what the server answers for each frame on its own
    request = encode_request(frames[3:4], "npy")
    answer = requests.post(
        server.predict_url, data=request.body, headers={**request.headers, **server.headers}, timeout=120
    ).json()["frames"][0]
    with h5py.File(out / "r0001_peaks.cxi", "r") as f:
        result = f["/entry_1/result_1"]
        k = int(result["nPeaks"][3])
        assert k == min(answer["num_peaks"], peakfind.CXI_MAX_PEAKS)
        expected_y = np.asarray(answer["panel"]) * GEOMETRY.height + np.asarray(answer["ss"])
        assert np.allclose(np.sort(result["peakYPosRaw"][3, :k]), np.sort(expected_y), atol=1e-3)
        assert np.array_equal(f["/entry_1/data_1/data"][3], frames[3].reshape(-1, GEOMETRY.width))  # slab
        np.testing.assert_allclose(
            np.sort(result["peakTotalIntensityRaw"][3, :k]), np.sort(answer["intensity_raw"]), rtol=1e-5
        )

    before = (out / "r0001_peaks.cxi").stat().st_mtime_ns
    assert peakfind.main(args) == 0  # everything complete: skipped
    assert (out / "r0001_peaks.cxi").stat().st_mtime_ns == before
