"""CXI peak files: the HTTP answer's bytes re-read the way CrystFEL reads them, and data-bearing files whose
frames are a virtual slab over the user's file (4-D stacks, slabs, single panels), with the mask.
CrystFEL itself reads them in tests/e2e/test_crystfel_e2e.py and tests/geometry/."""

from __future__ import annotations

import io
import shutil

import h5py
import numpy as np
import pytest
import torch

from peaknet_serve.device.peaks import find_peaks, peaks_to_frames
from peaknet_serve.encode.cxi import (
    DATA_PATH,
    MASK_PATH,
    RESULT_GROUP,
    FrameSource,
    attach_frames,
    cxi_peaks,
    cxi_response,
    write_peak_file,
)

CXI_PEAK_GROUP = RESULT_GROUP
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PEAK_ARRAYS = ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakTotalIntensityRaw", "peakNPixels")


def frame(panel, ss, fs, npix, intensity, intensity_raw=None) -> dict:
    return {
        "num_peaks": len(panel),
        "panel": panel,
        "ss": ss,
        "fs": fs,
        "npix": npix,
        "intensity": intensity,
        "intensity_raw": intensity if intensity_raw is None else intensity_raw,
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
            np.testing.assert_array_equal(group["peakYPosRaw"][i, :k], expected_y.astype(np.float32))
            np.testing.assert_array_equal(group["peakTotalIntensity"][i, :k], np.float32(f["intensity"]))
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


def test_cxi_answer_says_it_has_no_frames_and_keeps_both_intensities():
    frames = [frame([0, 1], [1.0, 2.0], [3.0, 4.0], [4, 2], [10.0, -2.0], [30.0, 8.0])]
    with h5py.File(io.BytesIO(cxi_response(frames, (1, 2, 8, 8))), "r") as cxi:
        assert cxi.attrs["frames_included"] == 0
        assert "attach_frames" in cxi.attrs["frames_note"] and "peaknet-peakfind" in cxi.attrs["frames_note"]
        assert DATA_PATH not in cxi
        group = cxi[CXI_PEAK_GROUP]
        assert group["peakTotalIntensity"][0, :2].tolist() == [10.0, -2.0]
        assert group["peakTotalIntensityRaw"][0, :2].tolist() == [30.0, 8.0]


# ------------------------------------------------------------------------------------------
# data-bearing files: frames as a virtual slab over the input, the mask
# ------------------------------------------------------------------------------------------


def write_frames(path, data, mask=None, mask_name="/entry_1/data_1/mask"):
    with h5py.File(path, "w") as f:
        f.create_dataset(
            DATA_PATH, data=data, chunks=(1, *data.shape[1:]) if data.ndim > 2 else None, compression="gzip"
        )
        if mask is not None:
            f[mask_name] = mask


def peaks_for(n_frames, panels, height, width, seed=0):
    return cxi_peaks(detector_frames(n_frames, panels, height, width, seed), height)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_four_d_frames_become_a_slab_and_survive_moving_the_run(tmp_path, dtype):
    n, p, h, w = 3, 4, 10, 12
    data = np.random.default_rng(0).integers(0, 5000, (n, p, h, w)).astype(dtype)
    run = tmp_path / "run"
    (run / "raw").mkdir(parents=True)
    write_frames(run / "raw" / "r1.cxi", data)
    out = write_peak_file(
        run / "peaks" / "r1_peaks.cxi",
        peaks_for(n, p, h, w),
        FrameSource(run / "raw" / "r1.cxi", DATA_PATH, (n, p, h, w)),
    )
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    with h5py.File(moved / out.relative_to(run), "r") as f:
        slab = f[DATA_PATH]
        assert slab.is_virtual and slab.shape == (n, p * h, w) and slab.dtype == dtype
        assert slab.virtual_sources()[0].file_name == "../raw/r1.cxi"
        np.testing.assert_array_equal(slab[()], data.reshape(n, p * h, w))
        assert f.attrs["frames_included"] == 1 and f.attrs["complete"]
        np.testing.assert_array_equal(f[MASK_PATH][()], np.ones((p * h, w), np.uint8))
        assert f[MASK_PATH].attrs["from_input"] == 0


def test_slab_and_single_panel_inputs_are_referenced_as_they_are(tmp_path):
    rng = np.random.default_rng(1)
    slab = rng.integers(0, 100, (2, 3 * 8, 9)).astype(np.uint16)
    write_frames(tmp_path / "slab.h5", slab)
    single = rng.random((1, 16, 16)).astype(np.float32)[0]
    write_frames(tmp_path / "single.h5", single)
    out = write_peak_file(
        tmp_path / "a.cxi", peaks_for(2, 3, 8, 9), FrameSource(tmp_path / "slab.h5", DATA_PATH, (2, 3, 8, 9))
    )
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f[DATA_PATH][()], slab)
    out = write_peak_file(
        tmp_path / "b.cxi", peaks_for(1, 1, 16, 16), FrameSource(tmp_path / "single.h5", DATA_PATH, (1, 1, 16, 16))
    )
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f[DATA_PATH][()], single[None])
    with pytest.raises(ValueError, match="is not"):
        write_peak_file(
            tmp_path / "c.cxi", peaks_for(2, 3, 8, 10), FrameSource(tmp_path / "slab.h5", DATA_PATH, (2, 3, 8, 10))
        )
    with pytest.raises(ValueError, match="do not match"):
        write_peak_file(
            tmp_path / "d.cxi", peaks_for(3, 3, 8, 9), FrameSource(tmp_path / "slab.h5", DATA_PATH, (2, 3, 8, 9))
        )
    assert not (tmp_path / "c.cxi").exists() and not (tmp_path / "d.cxi").exists()


def test_the_inputs_mask_comes_along_static_or_per_frame(tmp_path):
    n, p, h, w = 2, 2, 6, 5
    rng = np.random.default_rng(2)
    data = rng.random((n, p, h, w)).astype(np.float32)
    static = (rng.random((p, h, w)) > 0.2).astype(np.uint8)
    per_frame = (rng.random((n, p, h, w)) > 0.2).astype(np.uint8)
    write_frames(tmp_path / "static.cxi", data, static * 7)  # any non-zero value is good
    write_frames(tmp_path / "frames.cxi", data, per_frame)
    peaks = peaks_for(n, p, h, w)
    with h5py.File(
        write_peak_file(tmp_path / "s_peaks.cxi", peaks, FrameSource(tmp_path / "static.cxi", DATA_PATH, (n, p, h, w)))
    ) as f:
        np.testing.assert_array_equal(f[MASK_PATH][()], static.reshape(p * h, w))
        assert f[MASK_PATH].attrs["from_input"] == 1
    with h5py.File(
        write_peak_file(tmp_path / "f_peaks.cxi", peaks, FrameSource(tmp_path / "frames.cxi", DATA_PATH, (n, p, h, w)))
    ) as f:
        assert f[MASK_PATH].is_virtual
        np.testing.assert_array_equal(f[MASK_PATH][()], per_frame.reshape(n, p * h, w))


def test_attach_frames_turns_an_answer_into_the_file_peakfind_writes(tmp_path):
    n, p, h, w = 2, 3, 12, 10
    data = np.random.default_rng(3).integers(0, 900, (n, p, h, w)).astype(np.uint16)
    write_frames(tmp_path / "sent.h5", data, np.ones((p, h, w), np.uint8))
    frames = detector_frames(n, p, h, w, seed=4)
    answer = tmp_path / "answer.cxi"
    answer.write_bytes(cxi_response(frames, (n, p, h, w), attrs={"bad_pixel_mask": "request"}))
    attach_frames(answer, tmp_path / "sent.h5")
    direct = write_peak_file(
        tmp_path / "direct.cxi", cxi_peaks(frames, h), FrameSource(tmp_path / "sent.h5", DATA_PATH, (n, p, h, w))
    )
    with h5py.File(answer) as a, h5py.File(direct) as d:
        assert a.attrs["frames_included"] == 1 and a.attrs["n_frames"] == n and "frames_note" not in a.attrs
        assert a.attrs["bad_pixel_mask"] == "request"  # what the server said is kept
        for name in ("nPeaks", *PEAK_ARRAYS):
            np.testing.assert_array_equal(a[f"{RESULT_GROUP}/{name}"][()], d[f"{RESULT_GROUP}/{name}"][()])
        np.testing.assert_array_equal(a[DATA_PATH][()], d[DATA_PATH][()])
        np.testing.assert_array_equal(a[MASK_PATH][()], d[MASK_PATH][()])
    answer.write_bytes(cxi_response(frames, (n, p, h, w)))
    write_frames(tmp_path / "other.h5", data[:1])
    with pytest.raises(ValueError, match="is not the"):
        attach_frames(answer, tmp_path / "other.h5")
