"""Response bodies: JSON schema, and CXI bytes re-read the way CrystFEL reads them."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
import torch

from peaknet_serve.device.peaks import find_peaks, peaks_to_frames
from peaknet_serve.encode.response import CXI_PEAK_GROUP, cxi_response, json_response

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PEAK_ARRAYS = ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakNPixels")


def frame(panel, ss, fs, npix, intensity) -> dict:
    return {
        "num_peaks": len(panel),
        "panel": panel,
        "ss": ss,
        "fs": fs,
        "npix": npix,
        "intensity": intensity,
    }


def detector_frames(n_frames: int, panels: int, height: int, width: int, seed: int):
    """Real peak lists: random blobs through find_peaks + peaks_to_frames."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_frames * panels, height, width)) < 0.04
    image = rng.integers(0, 3000, mask.shape).astype(np.uint16)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    return peaks_to_frames(table, n_frames, panels)


def crystfel_read_peaks(
    data: bytes, event: int, geometry: list[tuple[int, int]]
) -> list[tuple[int, float, float, float]]:
    """What libcrystfel's image_hdf5_read_peaks_cxi does for event ``//event``: nPeaks[event]
    read as int, row ``event`` of the X/Y/intensity arrays read as float, then file (slab)
    coordinates -> (panel, fs, ss) through each panel's min_ss/max_ss rows (half-pixel shift
    left out). Returns (panel, fs, ss, intensity)."""
    with h5py.File(io.BytesIO(data), "r") as cxi:
        group = cxi[CXI_PEAK_GROUP]
        count = int(group["nPeaks"][event])
        xs, ys, values = (group[name][event].astype(np.float32) for name in PEAK_ARRAYS[:3])
    peaks = []
    for x, y, value in zip(xs[:count], ys[:count], values[:count], strict=True):
        (panel,) = [p for p, (min_ss, max_ss) in enumerate(geometry) if min_ss <= int(y) <= max_ss]
        peaks.append((panel, float(x), float(y) - geometry[panel][0], float(value)))
    return peaks


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
        assert set(item) == {"num_peaks", "panel", "ss", "fs", "npix", "intensity"}
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


# ------------------------------------------------------------------------------------------
# CXI
# ------------------------------------------------------------------------------------------


def test_cxi_layout_dtypes_and_padding():
    n_frames, panels, height, width = 3, 4, 30, 26
    frames = detector_frames(n_frames, panels, height, width, seed=2)
    data = cxi_response(frames, (n_frames, panels, height, width), max_peaks=256)
    assert data.startswith(HDF5_SIGNATURE)
    with h5py.File(io.BytesIO(data), "r") as cxi:
        group = cxi[CXI_PEAK_GROUP]
        assert group["nPeaks"].dtype == np.int32 and group["nPeaks"].shape == (n_frames,)
        for name in PEAK_ARRAYS:
            assert group[name].dtype == np.float32 and group[name].shape == (n_frames, 256)
        n_peaks = group["nPeaks"][:]
        assert n_peaks.tolist() == [f["num_peaks"] for f in frames]
        assert 0 < n_peaks.max() < 256
        for i, f in enumerate(frames):
            k = n_peaks[i]
            np.testing.assert_array_equal(group["peakXPosRaw"][i, :k], np.float32(f["fs"]))
            expected_y = np.array(f["panel"]) * height + np.array(f["ss"])
            np.testing.assert_array_equal(
                group["peakYPosRaw"][i, :k], expected_y.astype(np.float32)
            )
            np.testing.assert_array_equal(
                group["peakTotalIntensity"][i, :k], np.float32(f["intensity"])
            )
            np.testing.assert_array_equal(group["peakNPixels"][i, :k], np.float32(f["npix"]))
            for name in PEAK_ARRAYS:
                assert not group[name][i, k:].any()
        assert group.attrs["peaks_dropped"].tolist() == [0] * n_frames
        assert group.attrs["max_peaks"] == 256 and group.attrs["panels"] == panels
        assert group.attrs["panel_shape"].tolist() == [height, width]


def test_cxi_slab_coordinates_map_back_to_panels_like_crystfel():
    n_frames, panels, height, width = 2, 3, 16, 20
    frames = detector_frames(n_frames, panels, height, width, seed=3)
    data = cxi_response(frames, (n_frames, panels, height, width))
    geometry = [(p * height, p * height + height - 1) for p in range(panels)]
    for event, f in enumerate(frames):
        read = crystfel_read_peaks(data, event, geometry)
        assert [p for p, *_ in read] == f["panel"]
        np.testing.assert_allclose([fs for _, fs, _, _ in read], f["fs"], atol=1e-3)
        np.testing.assert_allclose([ss for _, _, ss, _ in read], f["ss"], atol=1e-3)
        np.testing.assert_allclose([v for *_, v in read], f["intensity"], rtol=1e-6)


def test_cxi_known_peak_positions():
    frames = [
        frame([0, 2], [1.5, 0.0], [3.25, 7.0], [4, 1], [10.0, 2.0]),
        frame([], [], [], [], []),
    ]
    data = cxi_response(frames, (2, 3, 10, 8), max_peaks=4)
    with h5py.File(io.BytesIO(data), "r") as cxi:
        group = cxi[CXI_PEAK_GROUP]
        assert group["nPeaks"][:].tolist() == [2, 0]
        assert group["peakXPosRaw"][:].tolist() == [[3.25, 7.0, 0, 0], [0, 0, 0, 0]]
        assert group["peakYPosRaw"][:].tolist() == [[1.5, 20.0, 0, 0], [0, 0, 0, 0]]
        assert group["peakNPixels"][0].tolist() == [4, 1, 0, 0]


def test_cxi_keeps_the_brightest_peaks_in_order_and_counts_the_rest():
    intensity = [5.0, 1.0, 9.0, 3.0, 9.0, 7.0]
    frames = [
        frame([0] * 6, list(range(6)), [0.0] * 6, [1] * 6, intensity),
        frame([0], [2.0], [2.0], [1], [1.0]),
    ]
    data = cxi_response(frames, (2, 1, 8, 8), max_peaks=3)
    with h5py.File(io.BytesIO(data), "r") as cxi:
        group = cxi[CXI_PEAK_GROUP]
        assert group["nPeaks"][:].tolist() == [3, 1]
        assert group["peakTotalIntensity"][0].tolist() == [9.0, 9.0, 7.0]
        assert group["peakYPosRaw"][0].tolist() == [2.0, 4.0, 5.0]  # original order kept
        assert group.attrs["peaks_dropped"].tolist() == [3, 0]


def test_cxi_rejects_inconsistent_input():
    with pytest.raises(ValueError):
        cxi_response([frame([], [], [], [], [])], (2, 1, 4, 4))
    with pytest.raises(ValueError):
        cxi_response([frame([], [], [], [], [])], (1, 1, 4, 4), max_peaks=0)
