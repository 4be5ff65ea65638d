"""The JSON response body."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peaknet_serve.device.peaks import find_peaks, peaks_to_frames
from peaknet_serve.encode.response import json_response


def detector_frames(n_frames: int, panels: int, height: int, width: int, seed: int):
    """Real peak lists: random blobs through find_peaks + peaks_to_frames."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_frames * panels, height, width)) < 0.04
    image = rng.integers(0, 3000, mask.shape).astype(np.uint16)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    return peaks_to_frames(table, n_frames, panels)


# ------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------


def test_json_response_schema():
    frames = detector_frames(2, 3, 20, 24, seed=0)
    body = json_response(
        model="peaknet",
        precision="bf16",
        device="cpu",
        shape=(2, 3, 20, 24),
        dtype="uint16",
        frames=frames,
        extra={"weights": "random-init"},
    )
    assert list(body) == ["model", "precision", "device", "shape", "dtype", "frames", "weights"]
    assert body["shape"] == [2, 3, 20, 24] and body["dtype"] == "uint16"
    decoded = json.loads(json.dumps(body))
    assert decoded == body
    for item in decoded["frames"]:
        assert set(item) == {"num_peaks", "panel", "ss", "fs", "npix", "intensity", "intensity_raw"}
        assert all(len(item[key]) == item["num_peaks"] for key in item if key != "num_peaks")
    assert sum(f["num_peaks"] for f in decoded["frames"]) > 0


def test_json_response_rejects_inconsistent_input():
    frames = detector_frames(1, 1, 8, 8, seed=1)
    common = dict(model="m", precision="fp32", device="cpu", dtype="float32", frames=frames)
    with pytest.raises(ValueError):
        json_response(shape=(2, 1, 8, 8), **common)  # 2 frames announced, 1 given
    with pytest.raises(ValueError):
        json_response(shape=(1, 8, 8), **common)
    with pytest.raises(ValueError):
        json_response(shape=(1, 1, 8, 8), extra={"frames": []}, **common)
