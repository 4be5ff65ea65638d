"""End-to-end frames: reproducibility, truth/mask consistency, CXI files."""

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage

from peaknet_serve.device.peaks import find_peaks
from peaknet_serve.sim.peaksim.cxi import read_frame, read_truth, write_cxi
from peaknet_serve.sim.peaksim.frame import sample_frame_params, simulate_frame
from peaknet_serve.sim.peaksim.geometry import get_geometry
from peaknet_serve.sim.peaksim.truth import STRONG_SNR, WEAK_SNR, merged_spots


@pytest.fixture(scope="module")
def epix_frames():
    geometry = get_geometry("epix10k2m")
    return [simulate_frame(geometry, np.random.default_rng(seed)) for seed in (0, 1)]


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["plain", "artefacts"])
def epix_frames_any(request, epix_frames):
    """The plain frames, and frames with every artefact of peaknet_serve.sim.peaksim.artefacts."""
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
    assert not frame.mask[:, 0, :].any()  # panel borders are masked


def test_truth_and_segmentation_mask_agree(epix_frames_any):
    for frame in epix_frames_any:
        p = frame.peaks
        assert p.strong.sum() > 0
        assert not np.any(p.strong & p.weak)
        assert np.all(p.snr[p.strong] >= STRONG_SNR) and np.all(p.snr[p.weak] >= WEAK_SNR)
        centre = (p.panel, np.rint(p.ss).astype(int), np.rint(p.fs).astype(int))
        assert np.all(frame.label[centre][p.strong] == 1)  # every strong spot is labelled
        assert np.all(frame.mask[centre][p.strong] == 1)  # ... on a good pixel
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
        patch = frame.adu[p.panel[i], max(0, s - 1) : s + 2, max(0, f - 1) : f + 2]
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
    assert min(gains) < 10 and max(gains) > 100  # ePix10k medium .. high gain
    assert any(len(p.crystals) == 0 for p in params) and any(len(p.crystals) == 2 for p in params)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_cxi_layout_round_trip(tmp_path, epix_frames, compression):
    path = write_cxi(
        tmp_path / "frames.cxi",
        epix_frames,
        as_uint16=compression is not None,
        compression=compression,
        detector="epix10k2m",
    )
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
        np.testing.assert_allclose(result["peakXPosRaw"][0, : n[0]], first.fs[strong], rtol=1e-6)
        np.testing.assert_allclose(
            result["peakYPosRaw"][0, : n[0]], first.panel[strong] * 352 + first.ss[strong], rtol=1e-6
        )
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


def _score(frame, mask: np.ndarray):
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(frame.adu)).to_host()
    return frame.score(np.stack([table.image_index, table.ss, table.fs], axis=1))


@pytest.mark.parametrize("artefact_probability", [0.0, 1.0], ids=["plain", "artefacts"])
@pytest.mark.parametrize("name", ["epix10k2m", "rayonix", "cspad"])
def test_perfect_segmentations_score_f1_one(name, artefact_probability):
    """Both perfect answers score F1 = 1: the training label (strong spots only) and the label
    together with the weak spots' ignore ellipses (every spot marked, as a network free on weak
    pixels may do). Strong spots are resolvable one per blob; blobs where a strong spot meets
    another spot count neither way (also with every artefact of peaknet_serve.sim.peaksim.artefacts)."""
    geometry = get_geometry(name)
    for seed in range(6 if artefact_probability == 0 else 3):
        frame = simulate_frame(geometry, np.random.default_rng([99, seed]), artefact_probability=artefact_probability)
        assert frame.params.artefacts.any == (artefact_probability > 0)
        for answer, mask in (
            ("label", frame.label.astype(bool)),
            ("label|ignore", frame.label.astype(bool) | frame.ignore),
        ):
            counts = _score(frame, mask)
            assert counts.fp == 0 and counts.fn == 0, (seed, answer, counts)
        assert not np.any(frame.peaks.strong & frame.peaks.merged)
        assert np.all(frame.peaks.weak[frame.peaks.merged])


def test_merged_spots_need_another_spot_in_the_blob():
    """On a dense frame some strong spots touch weak ones; spots alone in their blob stay strong."""
    frame = simulate_frame(get_geometry("epix10k2m"), np.random.default_rng([99, 1]))
    peaks = frame.peaks
    assert peaks.merged.sum() > 0 and peaks.strong.sum() > 0
    in_panel = np.zeros((3, 3, 3), dtype=bool)
    in_panel[1] = True  # 8-connected within a panel
    blobs = ndimage.label(frame.label.astype(bool) | frame.ignore, structure=in_panel)[0]
    centre = blobs[peaks.panel, np.rint(peaks.ss).astype(int), np.rint(peaks.fs).astype(int)]
    visible = peaks.strong | peaks.weak
    for index in np.flatnonzero(peaks.strong):
        assert np.count_nonzero(visible & (centre == centre[index])) == 1


def test_two_touching_bright_spots_merge_into_one_excused_blob():
    label = np.zeros((2, 20, 20), dtype=np.uint8)
    label[0, 5:8, 5:12] = 1  # one blob holding spots at fs 6 and 10
    label[1, 3, 3] = 1  # a lone spot on the other panel
    ignore = np.zeros(label.shape, dtype=bool)
    panel, ss, fs = np.array([0, 0, 1, 0]), np.array([6.0, 6.0, 3.0, 15.0]), np.array([6.0, 10.0, 3.0, 15.0])
    strong = np.array([True, True, True, False])
    merged, blobs, region = merged_spots(label, ignore, panel, ss, fs, strong, np.zeros(4, dtype=bool))
    assert merged.tolist() == [True, True, False, False]
    assert region.sum() == 21 and region[0, 5:8, 5:12].all()  # the blob; not the lone spot
    assert np.allclose(blobs, [[0, 6.0, 8.0], [0, 6.0, 8.0]])  # the blob, and the same label component


def test_a_bright_spot_touching_a_weak_one_is_excused_with_its_blob():
    label = np.zeros((1, 20, 20), dtype=np.uint8)
    label[0, 5:8, 5:8] = 1  # strong spot at (6, 6)
    label[0, 14, 14] = 1  # strong spot at (14, 14), alone
    ignore = np.zeros(label.shape, dtype=bool)
    ignore[0, 5:8, 8:11] = True  # weak spot at (6, 9), its ellipse touching the first
    ignore[0, 1:3, 16:19] = True  # weak spot at (2, 17), alone
    panel = np.zeros(4, dtype=int)
    ss, fs = np.array([6.0, 14.0, 6.0, 2.0]), np.array([6.0, 14.0, 9.0, 17.0])
    strong, weak = np.array([True, True, False, False]), np.array([False, False, True, True])
    merged, blobs, region = merged_spots(label, ignore, panel, ss, fs, strong, weak)
    assert merged.tolist() == [True, False, False, False]
    assert region[0, 5:8, 5:11].all() and region[0, 1:3, 16:19].all() and not region[0, 14, 14]
    assert region.sum() == 18 + 6
    # the 3x6 blob and the lone weak ellipse count neither way; label alone holds one spot per blob
    assert np.allclose(blobs, [[0, 1.5, 17.0], [0, 6.0, 7.5]])


def test_detections_on_merged_blobs_count_neither_way_and_on_background_count_as_false():
    """In a dense frame a network's blob of touching spots differs from the truth's, so its
    centroid lands anywhere on the merged region: there it is excused, on background it is not."""
    frame = simulate_frame(get_geometry("epix10k2m"), np.random.default_rng([99, 1]))
    strong, excused = frame.scoring_points()
    region = frame.excused_region
    far = np.ones(region.shape, dtype=bool)  # pixels > 2 px from every point
    for panel, ss, fs in np.concatenate([strong, excused]):
        far[int(panel), max(0, int(ss) - 3) : int(ss) + 4, max(0, int(fs) - 3) : int(fs) + 4] = False
    on_region = np.argwhere(region & far)[:5].astype(float)
    on_background = np.argwhere(~region & far & ~frame.label.astype(bool) & ~frame.ignore)[:5].astype(float)
    assert len(on_region) == 5 and len(on_background) == 5
    assert frame.score(on_region).excused == 5 and frame.score(on_region).fp == 0
    assert frame.score(on_background).fp == 5
