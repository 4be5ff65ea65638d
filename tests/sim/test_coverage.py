"""The wider training conditions of peaksim.coverage and the lower-bar training target."""

from dataclasses import replace

import numpy as np
import pytest

from peaknet_serve.sim.peaksim.coverage import Coverage
from peaknet_serve.sim.peaksim.detector import DetectorResponse, GainSwitch, photons_to_adu
from peaknet_serve.sim.peaksim.frame import TARGET_IGNORE, sample_frame_params, simulate_frame
from peaknet_serve.sim.peaksim.geometry import get_geometry
from peaknet_serve.training.dataset import frame_target

ONLY = dict(
    sharp_probability=0.0,
    read_noise_probability=0.0,
    background_probability=0.0,
    saturation_probability=0.0,
    gain_switch_probability=0.0,
    point_probability=0.0,
)


def test_without_coverage_the_draws_are_those_of_the_default_simulator():
    geometry = get_geometry("epix10k2m")
    plain = sample_frame_params(np.random.default_rng(5), geometry)
    rng = np.random.default_rng(5)
    covered = sample_frame_params(rng, geometry, coverage=Coverage(**ONLY))
    assert covered.spot_sigma == plain.spot_sigma and covered.distance == plain.distance
    assert covered.background == plain.background and covered.min_spot_sigma == 0.1
    assert plain.min_spot_sigma == 0.4 and plain.response.gain_switch is None


def test_sharp_spots_fall_into_one_to_four_pixels():
    geometry = get_geometry("epix10k2m")
    coverage = Coverage(**{**ONLY, "sharp_probability": 1.0, "sharp_sigma": (0.12, 0.2)})
    for seed in range(6):
        params = sample_frame_params(np.random.default_rng(seed), geometry, coverage=coverage)
        if params.crystals:
            break
    assert 0.12 <= params.spot_sigma <= 0.2
    params = replace(
        params,
        background=replace(params.background, water=0.0, air=0.0, constant=0.0),
        response=replace(
            params.response, read_noise_adu=0.0, hot_fraction=0.0, panel_offset_adu=np.zeros(geometry.n_panels)
        ),
    )
    frame = simulate_frame(geometry, np.random.default_rng(1), params=params)
    p = frame.peaks
    bright = np.flatnonzero(p.strong & (p.photons > 500))[:20]
    assert len(bright) > 3
    gain = params.response.adu_per_photon
    for i in bright:
        s, f = int(round(p.ss[i])), int(round(p.fs[i]))
        patch = frame.adu[p.panel[i], s - 2 : s + 3, f - 2 : f + 3] / gain
        assert np.sort(patch, axis=None)[-4:].sum() > 0.95 * patch.sum()  # 1-4 pixels (by sub-pixel position)


def test_each_condition_applies_with_probability_one():
    geometry = get_geometry("cspad")
    base = sample_frame_params(np.random.default_rng(3), geometry)
    coverage = Coverage(
        sharp_probability=1.0,
        read_noise_probability=1.0,
        background_probability=1.0,
        saturation_probability=1.0,
        gain_switch_probability=1.0,
        point_probability=0.0,
    )
    params = sample_frame_params(np.random.default_rng(3), geometry, coverage=coverage)
    assert params.spot_sigma <= 0.5
    ratio = params.response.read_noise_adu / base.response.read_noise_adu
    assert 0.2 <= ratio <= 5.0 and ratio != 1.0
    scale = params.background.constant / base.background.constant
    assert 0.03 <= scale <= 6.0 and params.background.water == pytest.approx(base.background.water * scale)
    gain = params.response.adu_per_photon
    assert 150.0 * gain <= params.response.saturation_adu <= min(3000.0 * gain, base.response.saturation_adu)
    assert isinstance(params.response.gain_switch, GainSwitch)
    frame = simulate_frame(geometry, np.random.default_rng(4), params=params)
    assert frame.adu.max() <= params.response.saturation_adu


def test_gain_switch_raises_the_noise_of_bright_pixels_only():
    response = DetectorResponse(
        adu_per_photon=100.0,
        read_noise_adu=5.0,
        panel_offset_adu=np.zeros(1),
        panel_gain=np.ones(1),
        saturation_adu=1e9,
        gain_switch=GainSwitch(switch_photons=50.0, ratio=10.0),
    )
    photons = np.zeros((1, 200, 200), dtype=np.int64)
    photons[0, :100] = 100
    adu = photons_to_adu(np.random.default_rng(0), photons, response)
    residual = adu - photons * 100.0
    assert np.std(residual[0, 100:]) == pytest.approx(5.0, rel=0.05)  # not switched
    assert np.std(residual[0, :100]) == pytest.approx(50.0, rel=0.05)  # ratio x the read noise


def test_point_spots_are_bright_one_pixel_targets_on_a_nearly_empty_frame():
    geometry = get_geometry("epix10k2m")
    coverage = Coverage(**{**ONLY, "point_probability": 1.0})
    for seed in range(6):
        base = sample_frame_params(np.random.default_rng(seed), geometry, coverage=Coverage(**ONLY))
        params = sample_frame_params(np.random.default_rng(seed), geometry, coverage=coverage)
        if params.crystals:
            break
    assert 0.08 <= params.spot_sigma <= 0.3 and params.min_spot_sigma == 0.08
    scale = params.background.constant / base.background.constant
    assert 0.005 <= scale <= 0.3 and params.background.water == pytest.approx(base.background.water * scale)
    assert params.response.hot_fraction == pytest.approx(0.02 * base.response.hot_fraction)
    brightness = params.crystals[0].photons_per_reflection / base.crystals[0].photons_per_reflection
    assert 1.0 <= brightness <= 10.0
    assert all(
        c.photons_per_reflection == pytest.approx(b.photons_per_reflection * brightness)
        for c, b in zip(params.crystals, base.crystals)
    )

    frame = simulate_frame(geometry, np.random.default_rng(2), params=params, target_snr=4.5)
    p = frame.peaks
    bright = np.flatnonzero(p.strong & (p.photons > 100))
    assert len(bright) > 5
    gain = params.response.adu_per_photon
    shares = []
    for i in bright:
        s, f = int(round(p.ss[i])), int(round(p.fs[i]))
        if not 2 <= s < geometry.panel_shape[0] - 2 or not 2 <= f < geometry.panel_shape[1] - 2:
            continue
        patch = frame.adu[p.panel[i], s - 2 : s + 3, f - 2 : f + 3] / gain
        shares.append((patch.max() / patch.sum(), np.sort(patch, axis=None)[-4:].sum() / patch.sum()))
        assert frame.target[p.panel[i], s, f] == 1  # a peak to learn
    shares = np.array(shares)
    assert np.median(shares[:, 0]) > 0.45  # about half or more of a spot in its brightest pixel
    assert np.quantile(shares[:, 1], 0.05) > 0.9  # and nearly all of it in four
    centre = (p.panel, np.rint(p.ss).astype(int), np.rint(p.fs).astype(int))
    on_panel = (centre[1] >= 0) & (centre[1] < geometry.panel_shape[0]) & (centre[2] >= 0)
    on_panel &= centre[2] < geometry.panel_shape[1]
    targets = int((frame.target[tuple(c[on_panel] for c in centre)] == 1).sum())
    assert (frame.target == 1).sum() <= 4 * targets  # each target of one to four pixels


def test_without_point_spots_no_point_numbers_are_drawn():
    geometry = get_geometry("cspad")
    plain, covered = np.random.default_rng(8), np.random.default_rng(8)
    sample_frame_params(plain, geometry, coverage=Coverage(point_probability=0.0))
    sample_frame_params(covered, geometry, coverage=Coverage(point_probability=0.5))
    assert covered.random() == plain.random(5)[4]  # the point condition always draws four numbers


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_probabilities_outside_0_1_are_refused(value):
    with pytest.raises(ValueError, match="sharp_probability"):
        Coverage(sharp_probability=value)


def test_target_with_a_lower_bar_holds_every_truth_peak_and_more():
    geometry = get_geometry("epix10k2m")
    frame = simulate_frame(geometry, np.random.default_rng(0), target_snr=4.0)
    plain = simulate_frame(geometry, np.random.default_rng(0))
    np.testing.assert_array_equal(frame.adu, plain.adu)  # the frame and its truth are unchanged
    np.testing.assert_array_equal(frame.label, plain.label)
    assert plain.target is None
    target = frame.target
    assert target.dtype == np.uint8 and set(np.unique(target)) <= {0, 1, TARGET_IGNORE}
    assert np.all(target[frame.label == 1] == 1)  # every truth peak pixel is a target
    assert (target == 1).sum() > (frame.label == 1).sum()  # and spots of SNR 4-6 too
    p = frame.peaks
    extra = p.weak & ~p.merged & (p.snr >= 4.5) & (p.peak_snr >= 1.0)
    centre = (p.panel[extra], np.rint(p.ss[extra]).astype(int), np.rint(p.fs[extra]).astype(int))
    assert extra.any() and np.mean(target[centre] == 1) > 0.8
    np.testing.assert_array_equal(frame_target(frame), target)
