"""pattern_sim test frames: the CrystFEL geometry, the detector response and the truth rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from peaknet_serve.sim.patternsim import (
    STRONG_I_OVER_SIGMA,
    build_frame,
    crystfel_geometry,
    detector_frame,
    run_pattern_sim,
    spot_truth,
)
from peaknet_serve.sim.peaksim.geometry import DetectorGeometry, get_geometry

PATTERN_SIM = shutil.which("pattern_sim") or str(
    Path(__file__).parents[3] / "shared" / "tools" / "crystfel" / "bin" / "pattern_sim"
)
HAVE_PATTERN_SIM = Path(PATTERN_SIM).is_file()


def small_detector() -> DetectorGeometry:
    """Two 96 x 128 panels of 100 um, side by side around the beam."""
    corners = np.array([[-12.85e-3, -4.75e-3], [0.05e-3, -4.75e-3]])
    return DetectorGeometry(
        "small",
        (96, 128),
        100e-6,
        corners,
        np.tile([1.0, 0.0], (2, 1)),
        np.tile([0.0, 1.0], (2, 1)),
        distance_range=(0.05, 0.05),
    )


def test_geometry_stacks_panels_along_ss_with_outer_corners():
    geometry = get_geometry("epix10k2m")
    text = crystfel_geometry(geometry, 0.12, 9500.0)
    lines = dict(line.split(" = ") for line in text.splitlines() if " = " in line)
    assert lines["clen"] == "0.12" and lines["photon_energy"] == "9500" and float(lines["res"]) == 10000.0
    assert lines["p15/min_ss"] == str(15 * 352) and lines["p15/max_ss"] == str(16 * 352 - 1)
    assert lines["p0/max_fs"] == "383" and lines["p3/fs"] == "+1.000000x +0.000000y"
    # corner_x/y is the outer corner of pixel (0, 0): half a pixel before its centre
    assert float(lines["p0/corner_x"]) == pytest.approx(geometry.corners[0, 0] / 100e-6 - 0.5, abs=1e-3)


def test_truth_strong_weak_and_merged_spots():
    shape = (1, 40, 40)
    spots = np.zeros(shape)
    spots[0, 10, 10] = 200.0  # one bright pixel: strong
    spots[0, 10, 30] = 6.0  # a dim pixel: weak (I/sigma 2.2)
    spots[0, 30, 10], spots[0, 30, 12] = 100.0, 90.0
    spots[0, 30, 11] = 20.0  # two maxima in one component: weak
    spots[0, 0, 20] = 300.0  # on the panel's edge row: not strong
    background = np.full(shape, 0.1, dtype=np.float32)
    mask = np.ones(shape, dtype=np.uint8)
    strong, weak, ios = spot_truth(spots, background, mask, read_noise=0.05)
    np.testing.assert_allclose(strong, [[0, 10, 10]])
    assert ios[0] > STRONG_I_OVER_SIGMA
    assert {tuple(np.round(w, 1)) for w in weak} == {(0, 10, 30), (0, 0, 20), (0, 30, 11.0)}
    mask[0, 10, 10] = 0  # the centre pixel is bad: not strong
    strong, _, _ = spot_truth(spots, background, mask, read_noise=0.05)
    assert len(strong) == 0


def test_detector_frame_is_reproducible_and_saturates():
    geometry = small_detector()
    spots = np.zeros(geometry.frame_shape, dtype=np.float32)
    spots[0, 40, 60] = 1.0
    a = build_frame(np.random.default_rng(1), geometry, spots, 0.05, 1.3)
    b = build_frame(np.random.default_rng(1), geometry, spots, 0.05, 1.3)
    np.testing.assert_array_equal(a.adu, b.adu)
    assert a.adu.max() <= a.settings.saturation_adu and a.mask[:, 0].sum() == 0
    np.testing.assert_allclose(a.strong, [[0, 40, 60]])
    adu, _, expected, background, settings = detector_frame(np.random.default_rng(2), geometry, spots, 0.05, 1.3)
    assert expected.max() == pytest.approx(settings.brightest_photons)
    assert background.max() == pytest.approx(settings.background, rel=1e-5)


@pytest.mark.skipif(not HAVE_PATTERN_SIM, reason="CrystFEL's pattern_sim is not installed")
def test_pattern_sim_gives_sharp_spots_that_the_truth_finds():
    geometry = small_detector()
    images = run_pattern_sim(geometry, 2, 0.05, 9500.0, 150.0, 400.0, program=PATTERN_SIM)
    assert len(images) == 2 and all(im.shape == geometry.frame_shape and im.dtype == np.float32 for im in images)
    assert not np.array_equal(images[0], images[1])  # two orientations
    frame = build_frame(np.random.default_rng(0), geometry, images[0], 0.05, 12398.4 / 9500.0)
    assert len(frame.strong) >= 2
    # sharp: the brightest pixel of a strong spot holds most of its light
    spots = images[0] / images[0].max()
    for p, s, f in np.rint(frame.strong[:5]).astype(int):
        patch = spots[p, max(s - 2, 0) : s + 3, max(f - 2, 0) : f + 3]
        assert patch.max() > 0.4 * patch.sum()
