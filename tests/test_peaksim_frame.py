"""End-to-end frames: reproducibility, truth/mask consistency, CXI files."""

import h5py
import numpy as np
import pytest
import torch

from handler.postprocess import find_peaks
from peaksim.cxi import read_frame, read_truth, write_cxi
from peaksim.frame import sample_frame_params, simulate_frame
from peaksim.geometry import get_geometry
from peaksim.matching import match_peaks
from peaksim.truth import STRONG_SNR, WEAK_SNR, merged_spots


@pytest.fixture(scope="module")
def epix_frames():
    geometry = get_geometry("epix10k2m")
    return [simulate_frame(geometry, np.random.default_rng(seed)) for seed in (0, 1)]


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["plain", "artefacts"])
def epix_frames_any(request, epix_frames):
    """The plain frames, and frames with every artefact of peaksim.artefacts."""
    if request.param == 0.0:
        return epix_frames
    geometry = get_geometry("epix10k2m")
    return [simulate_frame(geometry, np.random.default_rng(seed), artefact_probability=1.0) for seed in (0, 1)]


def test_same_seed_same_frame_other_seed_other_frame():
    geometry = get_geometry("cspad")
    a = simulate_frame(geometry, np.random.default_rng(11))
    b = simulate_frame(geometry, np.random.default_rng(11))
    c = simulate_frame(geometry, np.random.default_rng(12))
    np.testing.assert_array_equal(a.adu, b.adu)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.peaks.ss, b.peaks.ss)
    assert not np.array_equal(a.adu, c.adu)


@pytest.mark.parametrize("name", ["jungfrau4m", "rayonix"])
def test_frame_dtypes_and_shapes(name):
    geometry = get_geometry(name)
    frame = simulate_frame(geometry, np.random.default_rng(2))
    assert frame.adu.shape == geometry.frame_shape and frame.adu.dtype == np.float32
    assert frame.uint16.dtype == np.uint16 and frame.mask.dtype == np.uint8
    assert set(np.unique(frame.mask)) <= {0, 1}
    assert not frame.mask[:, 0, :].any()                       # panel borders are masked


def test_truth_and_segmentation_mask_agree(epix_frames_any):
    for frame in epix_frames_any:
        p = frame.peaks
        assert p.strong.sum() > 0
        assert not np.any(p.strong & p.weak)
        assert np.all(p.snr[p.strong] >= STRONG_SNR) and np.all(p.snr[p.weak] >= WEAK_SNR)
        centre = (p.panel, np.rint(p.ss).astype(int), np.rint(p.fs).astype(int))
        assert np.all(frame.label[centre][p.strong] == 1)         # every strong spot is labelled
        assert np.all(frame.mask[centre][p.strong] == 1)          # ... on a good pixel
        assert not np.any(frame.label.astype(bool) & frame.ignore)
        # every labelled pixel lies within 3 sigma (<= 3 * 3 px) of some strong spot
        lp, ls, lf = np.nonzero(frame.label)
        strong = np.flatnonzero(p.strong | p.merged)
        for i in np.random.default_rng(0).choice(len(lp), size=min(200, len(lp)), replace=False):
            on_panel = strong[p.panel[strong] == lp[i]]
            d = np.hypot(p.ss[on_panel] - ls[i], p.fs[on_panel] - lf[i])
            assert d.min() <= 9.5


def test_strong_spots_are_brighter_than_their_surroundings(epix_frames_any):
    frame = epix_frames_any[0]
    p = frame.peaks
    gain = frame.params.response.adu_per_photon
    bright = p.strong & (p.photons > 200)
    for i in np.flatnonzero(bright)[:20]:
        s, f = int(round(p.ss[i])), int(round(p.fs[i]))
        patch = frame.adu[p.panel[i], max(0, s - 1):s + 2, max(0, f - 1):f + 2]
        assert patch.sum() / gain > 0.2 * p.photons[i]


def test_sampled_parameters_cover_the_requested_ranges():
    geometry = get_geometry("epix10k2m")
    rng = np.random.default_rng(0)
    params = [sample_frame_params(rng, geometry) for _ in range(200)]
    energies = [p.photon_energy_kev for p in params]
    sigmas = [p.spot_sigma for p in params]
    gains = [p.response.adu_per_photon for p in params]
    assert 6.0 <= min(energies) and max(energies) <= 12.0
    assert min(sigmas) < 0.7 and max(sigmas) > 2.3
    assert min(gains) < 10 and max(gains) > 100                  # ePix10k medium .. high gain
    assert any(len(p.crystals) == 0 for p in params) and any(len(p.crystals) == 2 for p in params)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_cxi_layout_round_trip(tmp_path, epix_frames, compression):
    path = write_cxi(tmp_path / "frames.cxi", epix_frames, as_uint16=compression is not None,
                     compression=compression, detector="epix10k2m")
    with h5py.File(path, "r") as h5:
        data = h5["entry_1/data_1/data"]
        assert data.shape == (2, 16, 352, 384)
        assert data.dtype == (np.uint16 if compression else np.float32)
        assert (data.compression == "gzip") == (compression == "gzip")
        assert h5["entry_1/data_1/mask"].shape == (16, 352, 384)
        result = h5["entry_1/result_1"]
        n = result["nPeaks"][:]
        assert n.tolist() == [int(f.peaks.strong.sum()) for f in epix_frames]
        for key in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"):
            assert result[key].shape == (2, n.max())
        first = epix_frames[0].peaks
        strong = np.flatnonzero(first.strong)
        np.testing.assert_allclose(result["peakXPosRaw"][0, :n[0]], first.fs[strong], rtol=1e-6)
        np.testing.assert_allclose(result["peakYPosRaw"][0, :n[0]], first.panel[strong] * 352 + first.ss[strong],
                                   rtol=1e-6)
    strong_peaks, weak_peaks = read_truth(path, 1)
    assert len(strong_peaks.panel) == epix_frames[1].peaks.strong.sum()
    assert len(weak_peaks.panel) == epix_frames[1].peaks.weak.sum()
    frame = read_frame(path, 0)
    expected = epix_frames[0].uint16 if compression else epix_frames[0].adu
    np.testing.assert_array_equal(frame, expected)


def test_cxi_single_panel_drops_panel_axis(tmp_path):
    frame = simulate_frame(get_geometry("rayonix"), np.random.default_rng(4))
    path = write_cxi(tmp_path / "r.cxi", [frame], detector="rayonix")
    with h5py.File(path, "r") as h5:
        assert h5["entry_1/data_1/data"].shape == (1, 1920, 1920)
    assert read_frame(path, 0).shape == (1, 1920, 1920)


@pytest.mark.parametrize("artefact_probability", [0.0, 1.0], ids=["plain", "artefacts"])
@pytest.mark.parametrize("name", ["epix10k2m", "rayonix", "cspad"])
def test_the_segmentation_mask_itself_scores_f1_one(name, artefact_probability):
    """A perfect segmentation (the training label) finds every strong spot and nothing else: strong
    spots are resolvable one per blob, and blobs of merged spots count neither way (also with
    every artefact of peaksim.artefacts: jet streak, beamstop arm, common mode)."""
    geometry = get_geometry(name)
    for seed in range(6 if artefact_probability == 0 else 3):
        frame = simulate_frame(geometry, np.random.default_rng([99, seed]), artefact_probability=artefact_probability)
        assert frame.params.artefacts.any == (artefact_probability > 0)
        table = find_peaks(torch.from_numpy(frame.label.astype(bool)), torch.from_numpy(frame.adu)).to_host()
        strong, excused = frame.scoring_points()
        counts = match_peaks(np.stack([table.image_index, table.ss, table.fs], axis=1), strong, excused)
        assert counts.fp == 0 and counts.fn == 0, (seed, counts)
        assert not np.any(frame.peaks.strong & frame.peaks.merged)
        assert np.all(frame.peaks.weak[frame.peaks.merged])


def test_two_touching_bright_spots_merge_into_one_excused_blob():
    label = np.zeros((2, 20, 20), dtype=np.uint8)
    label[0, 5:8, 5:12] = 1                       # one blob holding spots at fs 6 and 10
    label[1, 3, 3] = 1                            # a lone spot on the other panel
    panel, ss, fs = np.array([0, 0, 1, 0]), np.array([6.0, 6.0, 3.0, 15.0]), np.array([6.0, 10.0, 3.0, 15.0])
    strong = np.array([True, True, True, False])
    merged, blobs = merged_spots(label, panel, ss, fs, strong)
    assert merged.tolist() == [True, True, False, False]
    assert np.allclose(blobs, [[0, 6.0, 8.0]])
