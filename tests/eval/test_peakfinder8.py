"""OM's peakfinder8 through its worker, in the environment `make pf8-venv` creates."""

from __future__ import annotations

import os

import numpy as np
import pytest

from peaknet_serve.eval import peakfinder8 as pf8
from peaknet_serve.eval.evaluate import pf8_frame
from peaknet_serve.eval.peakfinder8 import Peakfinder8, Peakfinder8Params, Pf8Frame, parameter_grid, score, tune
from peaknet_serve.sim.peaksim.frame import simulate_frame
from peaknet_serve.sim.peaksim.geometry import get_geometry
from peaknet_serve.sim.peaksim.matching import match_peaks


def _python_available() -> bool:
    try:
        pf8.pf8_python()
    except FileNotFoundError:
        return False
    return True


needs_pf8 = pytest.mark.skipif(not _python_available(), reason="no peakfinder8 environment (make pf8-venv)")


@pytest.fixture(scope="module")
def finder():
    with Peakfinder8() as running:
        yield running


def spots_frame(gain: float = 50.0) -> tuple[Pf8Frame, np.ndarray]:
    """Three panels of Poisson background (2 photons) with bright 3x3 spots at known centres."""
    rng = np.random.default_rng(0)
    expected = np.full((3, 64, 80), 2.0)
    centres = np.array([[0, 10.0, 20.0], [0, 40.0, 60.0], [2, 30.0, 5.0], [2, 62.0, 40.0]])
    kernel = np.array([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]])
    for p, s, f in centres[:3].astype(int):
        expected[p, s - 1 : s + 2, f - 1 : f + 2] += 400.0 * kernel
    expected[2, 62, 40] += 400.0  # one bright pixel at the panel's edge row 62
    adu = (rng.poisson(expected) * gain).astype(np.float32)
    mask = np.ones(adu.shape, dtype=np.uint8)
    mask[:, 0, :] = mask[:, -1, :] = 0
    radius = np.broadcast_to(
        np.hypot(*np.meshgrid(np.arange(64) - 32.0, np.arange(80) - 40.0, indexing="ij")), adu.shape
    )
    return Pf8Frame(adu, mask, radius, gain), centres


def test_missing_environment_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setenv(pf8.PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(FileNotFoundError, match="make pf8-venv"):
        pf8.pf8_python()


def test_adc_threshold_is_converted_with_the_frame_gain():
    group = Peakfinder8Params(adc_threshold_photons=3.0, minimum_snr=5.0).for_gain(40.0)
    assert group["adc_threshold"] == 120.0 and group["minimum_snr"] == 5.0 and "adc_threshold_photons" not in group
    grid = parameter_grid(
        minimum_snr=(4.0, 6.0), min_pixel_count=(1,), local_bg_radius=(3,), adc_threshold_photons=(0.0,)
    )
    assert [p.minimum_snr for p in grid] == [4.0, 6.0]


@needs_pf8
def test_peaks_come_back_per_panel_in_pixel_index_coordinates(finder):
    frame, centres = spots_frame()
    assert finder.version()["numpy"].startswith("1.")
    params = Peakfinder8Params(minimum_snr=10.0, min_pixel_count=1, local_bg_radius=3)
    result = finder.find(frame, [params], repeat=2)[0]
    assert result.ms > 0
    found = result.peaks
    assert len(found) == 4, found
    order = np.lexsort((found[:, 2], found[:, 1], found[:, 0]))
    np.testing.assert_allclose(found[order], centres, atol=0.15)  # Poisson noise moves the centroid a little


@needs_pf8
def test_grid_search_picks_the_setting_that_scores_best(finder):
    frame, centres = spots_frame()
    scorer = lambda found: match_peaks(found, centres)
    too_strict = Peakfinder8Params(minimum_snr=10.0, min_pixel_count=2, local_bg_radius=3)  # loses the 1-pixel spot
    right = Peakfinder8Params(minimum_snr=10.0, min_pixel_count=1, local_bg_radius=3)
    noisy = Peakfinder8Params(minimum_snr=1.0, min_pixel_count=1, local_bg_radius=3)  # background fluctuations
    tuned = tune(finder, [(frame, scorer)], [too_strict, noisy, right])
    assert tuned.best == right
    counts = dict(tuned.counts)
    assert counts[right].f1 == 1.0 and counts[too_strict].recall == 0.75 and counts[noisy].precision < 0.5
    held_out, result = score(finder, frame, scorer, tuned.best)
    assert held_out.f1 == 1.0 and len(result.peaks) == 4


@needs_pf8
def test_a_failing_request_is_an_error_and_the_worker_goes_on(finder, tmp_path):
    frame, _ = spots_frame()
    with pytest.raises(RuntimeError, match="FileNotFoundError"):
        finder._request(
            {"op": "find", "data": str(tmp_path / "missing.npy"), "mask": "", "radius": "", "layout": {}, "params": []}
        )
    with pytest.raises(RuntimeError, match="unknown op"):
        finder._request({"op": "explode"})
    assert len(finder.find(frame, [Peakfinder8Params(min_pixel_count=1)])[0].peaks) == 4


@needs_pf8
@pytest.mark.slow
def test_tuned_peakfinder8_finds_peaksim_spots(finder):
    geometry = get_geometry("epix10k2m")
    frame = simulate_frame(geometry, np.random.default_rng(3))
    counts, _ = score(finder, pf8_frame(frame, geometry), frame.score, Peakfinder8Params(minimum_snr=6.0))
    assert frame.peaks.strong.sum() > 20 and counts.recall > 0.8 and counts.precision > 0.5


def test_environment_variable_names_the_python(monkeypatch, tmp_path):
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv(pf8.PYTHON_ENV, os.fspath(python))
    assert pf8.pf8_python() == python
