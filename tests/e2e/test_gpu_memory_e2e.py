"""A real GPU out-of-memory inside a served worker (GPU hosts only).

The worker's CUDA allocator is capped with ``PEAKNET_GPU_MEMORY_FRACTION`` (the setting that lets
several workers share one GPU) at a few panels' worth of activations of the bundled model, measured
in this process on the same GPU. An ePix10k2M frame (16 panels) then runs out of memory for real:
the worker splits the micro-batch and answers 200 with the peaks an uncapped worker finds. One
panel too large for the cap is answered 503 with a JSON error, and the same worker goes on serving.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch

from peaknet_serve.checkpoint import load_peaknet
from peaknet_serve.device.finder import PanelPeakFinder
from tests.e2e.conftest import ROOT
from tests.frames import spot_frames
from tests.gpu_memory import peak_bytes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BUNDLED = ROOT / "model_store" / "peaknet" / "peaknet.yaml"
TIMEOUT_S = 120


def one_panel_bytes() -> int:
    """Peak device memory of the bundled model (bf16) for one 352x384 panel, beyond its weights."""
    cuda = torch.device("cuda", 0)
    model = load_peaknet(BUNDLED, dtype=torch.bfloat16, device=cuda)
    finder = PanelPeakFinder(model, dtype=torch.bfloat16, device=cuda)
    panel = torch.from_numpy(spot_frames(1, 1, 352, 384)[0]).to(cuda)
    finder.find(panel)  # cuDNN/cuBLAS set-up outside the measurement
    peak = peak_bytes(finder, panel)
    del model, finder, panel
    torch.cuda.empty_cache()
    return peak


def post_raw(server, frames: np.ndarray) -> requests.Response:
    return requests.post(
        server.predict_url,
        data=frames.tobytes(),
        timeout=TIMEOUT_S,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Dtype": "uint16",
            "X-Shape": ",".join(map(str, frames.shape)),
        },
    )


def peak_rows(answer: dict) -> set:
    return {
        (i, p, round(s, 2), round(f, 2))
        for i, frame in enumerate(answer["frames"])
        for p, s, f in zip(frame["panel"], frame["ss"], frame["fs"])
    }


def worker_pid(server) -> int:
    described = requests.get(f"{server.management_url}/models/peaknet", timeout=10).json()
    return int(described[0]["workers"][0]["pid"])


def test_out_of_memory_in_a_capped_worker_splits_or_answers_503(start_server):
    one = one_panel_bytes()
    total = torch.cuda.get_device_properties(0).total_memory
    # weights (~7 MiB in bf16), the request's panels and allocator rounding, plus ~3 panels of work
    cap = 48 * 2**20 + 3 * one
    assert 16 * one > 1.5 * cap, f"one panel needs {one} B: the cap of {cap} B would not bite"
    env = {"PEAKNET_CONFIG": str(BUNDLED), "PEAKNET_PRECISION": "bf16", "PEAKNET_MAX_BATCH_PANELS": "16"}
    plain = start_server(**env)
    capped = start_server(**env, PEAKNET_GPU_MEMORY_FRACTION=f"{cap / total:.8f}")

    frame = spot_frames(1, 16, 352, 384, seed=4, spots=40)
    expected, answer = post_raw(plain, frame), post_raw(capped, frame)
    assert expected.status_code == 200 and answer.status_code == 200, answer.text[:300]
    rows, reference = peak_rows(answer.json()), peak_rows(expected.json())
    assert len(reference) >= 16 * 20
    assert len(rows & reference) / len(rows | reference) >= 0.99
    log = (capped.log_dir / "model_log.log").read_text(errors="replace")
    assert "out of memory at 16 panels" in log

    pid = worker_pid(capped)
    huge = spot_frames(1, 1, 2816, 2816, seed=5, spots=10)  # 64x the pixels of one ePix panel
    refused = post_raw(capped, huge)
    assert refused.status_code == 503, refused.text[:300]
    assert refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["error"]["type"] == "insufficient_memory"
    again = post_raw(capped, frame)
    assert again.status_code == 200
    assert len(peak_rows(again.json()) & reference) / len(peak_rows(again.json()) | reference) >= 0.99
    assert worker_pid(capped) == pid  # no restart: the worker survived
