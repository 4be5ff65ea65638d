"""Optional detector/sample artefacts (jet streak, beamstop support arm, common-mode offsets).

The first tests pin frames simulated with default settings bit for bit (SHA-256 of their arrays,
recorded before the artefacts existed): the committed accuracy numbers are computed on such frames
and must stay reproducible. The hashes hold for this numpy (2.x) on x86-64; a different numpy or
CPU could legitimately change float32 rounding, in which case re-record them from a checkout
without the artefact code, never from the new code.
"""

import hashlib
import math
from dataclasses import replace

import numpy as np
import pytest

from peaknet_serve.sim.peaksim.artefacts import (
    SHADOW_TRANSMISSION,
    Artefacts,
    BeamstopArm,
    CommonMode,
    JetStreak,
    arm_shadow,
    common_mode_blocks,
    common_mode_map,
    jet_streak_photons,
    sample_artefacts,
    sample_common_mode,
)
from peaknet_serve.sim.peaksim.background import background_photons, scattering_geometry
from peaknet_serve.sim.peaksim.frame import sample_frame_params, simulate_frame
from peaknet_serve.sim.peaksim.geometry import GEOMETRIES, get_geometry
from peaknet_serve.sim.peaksim.truth import STRONG_SNR, WEAK_SNR
from peaknet_serve.training.dataset import SimulatedCrops


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# (geometry, seed) -> SHA-256 of adu, label, mask, ignore; recorded at commit 79ce44e.
PINNED = {
    ("epix10k2m", 0): (
        "760f52f417322fe5e966252076cf6ae8b830854d0ce732187f2ab2e004670bd3",
        "4f6d8460b728b03343166cad8a37f9b72f7a0061d1df124c09f524ebc6087671",
        "8beec21c22138c908704a5c0c2d06c57d22f0970f825aa2fd559c1e24c1d7976",
        "27d5c4dadec6c30e93739320c290714a0247f3886be85de9a01c55bf98adfd01",
    ),
    ("epix10k2m", (20240, 1, 1)): (  # frame 1 of peaknet_serve.eval.evaluate's held-out ePix sequence
        "aceb694e7a5d1b269b650553d6d559278d4e749530559d2a4b3b03e638b22787",
        "84bbaf3ee7a96dc39fc3efd46ae8076cb401d8703ed27c778f88e6c739bf1413",
        "a14d8b44d2f6c47ae09262e43418e0fed52a1d111bf037831706b6dbad1f59c6",
        "8a0c5e81066b1ed08fdc23418b1cf0da3eb3acdf83455a6f07ae800bd2b31cff",
    ),
    ("cspad", 7): (
        "131ad5967b43c8e19c0eff893638332232d1dcd4e3a86fc8921ea954a7672326",
        "9501517b9162f4a3602820f299be06dd8c70aaeff3aeb2b7d61a4704b5471edd",
        "9e2d1324256b7183aaa6ae38a6722edb1a201dd47f8d5c634323dd0e3676956a",
        "89b97923683ec8c99b04fcd478083f189bfa504aece895258ec1e840c16b9c6a",
    ),
    ("cspad", (20240, 0, 1)): (  # frame 1 of the held-out CSPAD sequence
        "1ff4744cabba9a206e482a76d2099444bda19f3351c6925dd7c851b8ffceabb9",
        "184cd3ca3652132a018c22953660212aa4982f8c8956841cc88f5bdebae2a91b",
        "fa68c5694b1de47c457cdcd690969965574e77262837c4ae0c93b02f8b774a9a",
        "1268cac5236d1ab299a9eb873732eb11f9f4b01cf6fd8a3af609489073a04c3f",
    ),
}
# Four (image, target) crops of SimulatedCrops(seed=3, crop=64, crops_per_frame=2, target_ring=0), hashed
# in order (target_ring 0: the targets as simulated).
PINNED_CROPS = "f051fa92d9547ded18b411506476e672f2e474abcb6b4ca9fe2270ed504f9a83"


@pytest.mark.parametrize("name,seed", list(PINNED))
def test_default_frames_are_bit_for_bit_unchanged(name, seed):
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
    frame = simulate_frame(get_geometry(name), rng)
    assert (_sha(frame.adu), _sha(frame.label), _sha(frame.mask), _sha(frame.ignore)) == PINNED[name, seed]


def test_default_training_crops_are_bit_for_bit_unchanged():
    stream = iter(SimulatedCrops(seed=3, crop=64, crops_per_frame=2, target_ring=0))
    digest = hashlib.sha256()
    for _ in range(4):
        image, target = next(stream)
        digest.update(image.numpy().tobytes())
        digest.update(target.numpy().tobytes())
    assert digest.hexdigest() == PINNED_CROPS


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def test_artefacts_are_drawn_after_everything_else_and_only_when_asked():
    geometry = get_geometry("epix10k2m")
    for seed in range(5):
        rng_off, rng_zero, rng_on = (np.random.default_rng(seed) for _ in range(3))
        off = sample_frame_params(rng_off, geometry)
        zero = sample_frame_params(rng_zero, geometry, artefact_probability=0.0)
        on = sample_frame_params(rng_on, geometry, artefact_probability=1.0)
        assert not off.artefacts.any and not zero.artefacts.any and on.artefacts.any
        assert rng_off.bit_generator.state == rng_zero.bit_generator.state  # p = 0 draws nothing
        assert rng_on.bit_generator.state != rng_off.bit_generator.state
        # everything but the artefacts is the frame the default settings give
        assert on.photon_energy_kev == off.photon_energy_kev and on.distance == off.distance
        assert on.background == off.background and on.beamstop_radius == off.beamstop_radius
        np.testing.assert_array_equal(on.response.panel_offset_adu, off.response.panel_offset_adu)
    with pytest.raises(ValueError):
        sample_frame_params(np.random.default_rng(0), geometry, artefact_probability=1.5)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_probability_one_gives_every_artefact_within_its_ranges(name):
    geometry = get_geometry(name)
    rng = np.random.default_rng(1)
    drawn = [sample_artefacts(rng, geometry, 1.0, water_photons=2.0, read_noise_adu=10.0) for _ in range(60)]
    assert all(a.jet is not None and a.arm is not None and a.common_mode is not None for a in drawn)
    pixel = geometry.pixel_size
    for a in drawn:
        assert 0.0 <= a.jet.angle <= math.pi and 1.0 <= a.jet.sigma / pixel <= 3.0
        assert 0.6 <= a.jet.peak <= 6.0 and 5e-3 <= a.jet.decay <= 50e-3
        assert 1.5e-3 <= a.arm.width <= 4e-3
        assert 3.0 <= a.common_mode.sigma_adu <= 15.0
        assert a.common_mode.block_rows in geometry.common_mode_rows
    masked = np.mean([a.arm.masked for a in drawn])
    assert 0.25 < masked < 0.75  # the mask misses the arm part of the time
    none = [sample_artefacts(rng, geometry, 0.0, 2.0, 10.0) for _ in range(20)]
    assert not any(a.any for a in none)
    half = [sample_artefacts(rng, geometry, 0.5, 2.0, 10.0) for _ in range(200)]
    assert 0.35 < np.mean([a.jet is not None for a in half]) < 0.65
    assert 0.35 < np.mean([a.common_mode is not None for a in half]) < 0.65


def test_masked_and_unmasked_arms_over_several_frames():
    geometry = get_geometry("cspad")
    seen = set()
    border = geometry.border_mask()
    for seed in range(3):
        frame = simulate_frame(geometry, np.random.default_rng([7, seed]), artefact_probability=1.0)
        arm = frame.params.artefacts.arm
        x, y = geometry.pixel_lab_xy(frame.params.beam_offset)
        beamstop = x.astype(np.float64) ** 2 + y.astype(np.float64) ** 2 < frame.params.beamstop_radius**2
        shadow = arm_shadow(x, y, arm) & ~beamstop & ~border
        assert shadow.sum() > 1000
        good = frame.mask[shadow].mean()
        assert good == 0.0 if arm.masked else good > 0.99
        seen.add(arm.masked)
    assert seen == {True, False}


# ------------------------------------------------------------------------------------------------
# Each artefact in a frame (same seed with and without it)
# ------------------------------------------------------------------------------------------------


def _pair(name: str, seed: int, artefacts: Artefacts, **background):
    """The same frame without and with ``artefacts`` (and the background terms replaced)."""
    geometry = get_geometry(name)
    frames = []
    for extra in (Artefacts(), artefacts):
        rng = np.random.default_rng(seed)
        params = sample_frame_params(rng, geometry)
        params = replace(params, artefacts=extra, background=replace(params.background, **background))
        frames.append(simulate_frame(geometry, rng, params))
    return geometry, frames[0], frames[1]


def test_jet_streak_raises_the_background_along_its_line_and_the_truth_sees_it():
    jet = JetStreak(angle=0.4, offset=2e-4, sigma=2.2e-4, peak=4.0, decay=0.03)
    geometry, plain, streaked = _pair("cspad", 6, Artefacts(jet=jet))
    x, y = geometry.pixel_lab_xy(plain.params.beam_offset)
    _, cos2t, _ = scattering_geometry(x, y, plain.params.distance, plain.params.wavelength)
    streak = jet_streak_photons(x, y, cos2t, jet)
    gain = plain.params.response.adu_per_photon
    good = (
        (plain.mask == 1)
        & (streaked.mask == 1)
        & (plain.label == 0)
        & (streaked.label == 0)
        & (plain.ignore == 0)
        & (x**2 + y**2 > plain.params.beamstop_radius**2)
    )
    on_line = good & (streak > 1.0)
    off_line = good & (streak < 1e-4)
    assert on_line.sum() > 2000
    excess = (streaked.adu - plain.adu) / gain
    assert excess[on_line].mean() == pytest.approx(streak[on_line].mean(), rel=0.15)
    assert abs(excess[off_line].mean()) < 0.02
    # along the line, it decays away from the beam
    along = np.abs(np.cos(jet.angle) * x + np.sin(jet.angle) * y)
    near, far = on_line & (along < 0.02), on_line & (along > 0.05)
    assert excess[near].mean() > 1.5 * excess[far].mean() > 0
    # the truth uses the streak as background: spots on it have a lower SNR, the others the same
    p0, p1 = plain.peaks, streaked.peaks
    np.testing.assert_array_equal(p0.ss, p1.ss)
    centre = (p0.panel, np.rint(p0.ss).astype(int), np.rint(p0.fs).astype(int))
    on = streak[centre] > 0.5
    assert on.sum() >= 5
    assert np.all(p1.snr[on] < p0.snr[on])
    np.testing.assert_allclose(p1.snr[streak[centre] == 0], p0.snr[streak[centre] == 0], rtol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_beamstop_arm_darkens_its_strip_and_the_truth_sees_it(masked):
    arm = BeamstopArm(angle=2.0, width=6e-3, masked=masked)
    geometry, plain, shaded = _pair("cspad", 6, Artefacts(arm=arm), constant=2.0)
    x, y = geometry.pixel_lab_xy(plain.params.beam_offset)
    beamstop = x.astype(np.float64) ** 2 + y.astype(np.float64) ** 2 < plain.params.beamstop_radius**2
    shadow = arm_shadow(x, y, arm) & ~beamstop
    gain = plain.params.response.adu_per_photon
    live = shadow & (plain.mask == 1)
    assert live.sum() > 10000
    assert shaded.adu[live].mean() < 0.05 * plain.adu[live].mean()
    assert plain.adu[live].mean() / gain > 1.5
    assert (shaded.mask[shadow] == 0).all() if masked else shaded.mask[shadow].mean() > 0.95
    # truth: the same spots; in the shadow dimmed (and never strong when masked), across its edge
    # never strong, far from it untouched
    p0, p1 = plain.peaks, shaded.peaks
    np.testing.assert_array_equal(p0.ss, p1.ss)
    centre = (p0.panel, np.rint(p0.ss).astype(int), np.rint(p0.fs).astype(int))
    lab = np.stack([x[centre], y[centre]])
    across = np.abs(np.cos(arm.angle) * lab[1] - np.sin(arm.angle) * lab[0])
    along = np.cos(arm.angle) * lab[0] + np.sin(arm.angle) * lab[1]
    reach = 13 * geometry.pixel_size  # > 4 sigma of the widest spot
    # the whole spot in the shadow (and clear of the beamstop disc, which keeps its own handling)
    dark = shadow[centre] & (across < arm.width / 2 - reach) & (along > plain.params.beamstop_radius + reach)
    assert dark.sum() >= 10 and (p0.strong[dark]).sum() >= 3
    np.testing.assert_allclose(p1.photons[dark], SHADOW_TRANSMISSION * p0.photons[dark], rtol=1e-6)
    assert np.all(p1.snr[dark] < 0.2 * p0.snr[dark])
    # ... with the background the detector saw there: snr = s / sqrt(s + area (b + r^2)), s = 0.865 N
    q, cos2t, pol = scattering_geometry(x, y, plain.params.distance, plain.params.wavelength)
    b0 = background_photons(plain.params.background, q, cos2t, pol)[centre][dark].astype(np.float64)
    r2 = plain.params.read_noise_photons**2
    s0, s1 = 0.865 * p0.photons[dark], 0.865 * p1.photons[dark]
    area = ((s0 / p0.snr[dark]) ** 2 - s0) / (b0 + r2)
    np.testing.assert_allclose(p1.snr[dark], s1 / np.sqrt(s1 + area * (SHADOW_TRANSMISSION * b0 + r2)), rtol=1e-3)
    assert not p1.strong[shadow[centre]].any() if masked else p1.strong[dark].sum() < p0.strong[dark].sum()
    edge = (along > 0) & (np.abs(across - arm.width / 2) < 0.5 * geometry.pixel_size)
    assert edge.sum() >= 3 and not p1.strong[edge].any()
    far = (across > arm.width / 2 + 15 * geometry.pixel_size) | (along < -15 * geometry.pixel_size)
    good = (plain.mask[centre] == 1) & (shaded.mask[centre] == 1)  # dead pixels differ (other draws)
    np.testing.assert_array_equal(p1.strong[far & good], p0.strong[far & good])
    np.testing.assert_array_equal(p1.snr[far], p0.snr[far])
    assert np.all(p1.snr[p1.strong] >= STRONG_SNR) and np.all(p1.snr[p1.weak] >= WEAK_SNR)


def test_common_mode_blocks_restart_at_every_asic():
    row_block, col_asic = common_mode_blocks(10, 7, (4, 3), 3)
    assert row_block.tolist() == [0, 0, 0, 1, 2, 2, 2, 3, 4, 4]  # 4-row ASICs: blocks of 3 + 1 rows
    assert col_asic.tolist() == [0, 0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_common_mode_offsets_are_constant_within_a_row_block_and_differ_between_blocks(name):
    geometry = get_geometry(name)
    _, n_ss, n_fs = geometry.frame_shape
    a_ss, a_fs = geometry.common_mode_asic
    for block_rows in geometry.common_mode_rows:
        row_block, col_asic = common_mode_blocks(n_ss, n_fs, (a_ss, a_fs), block_rows)
        # blocks are runs of block_rows rows that never cross an ASIC boundary
        starts = np.flatnonzero(np.diff(row_block)) + 1
        assert set(starts) >= set(range(a_ss, n_ss, a_ss))
        assert set(np.diff(np.r_[0, starts, n_ss])) <= {block_rows, a_ss % block_rows or block_rows}
        assert np.array_equal(np.flatnonzero(np.diff(col_asic)) + 1, np.arange(a_fs, n_fs, a_fs))
    cm = sample_common_mode(np.random.default_rng(0), geometry, read_noise_adu=4.0)
    offsets = common_mode_map(cm, geometry.frame_shape)
    assert offsets.shape == geometry.frame_shape and offsets.dtype == np.float32
    row_block, col_asic = common_mode_blocks(n_ss, n_fs, cm.asic_shape, cm.block_rows)
    panel = offsets[0]
    same_row = np.diff(row_block) == 0
    assert np.all(np.diff(panel, axis=0)[same_row] == 0)  # constant within a block
    assert np.all(np.diff(panel, axis=0)[~same_row] != 0)  # a step between blocks
    same_asic = np.diff(col_asic) == 0
    assert np.all(np.diff(panel, axis=1)[:, same_asic] == 0)
    assert np.all(np.diff(panel, axis=1)[:, ~same_asic] != 0)
    assert 0.3 * 4.0 <= cm.sigma_adu <= 1.5 * 4.0
    assert cm.offsets_adu.std() == pytest.approx(cm.sigma_adu, rel=0.5)


def test_common_mode_is_added_to_the_adu_after_the_noise():
    geometry = get_geometry("epix10k2m")
    n_ss, n_fs = geometry.panel_shape
    blocks = common_mode_blocks(n_ss, n_fs, geometry.common_mode_asic, 16)
    offsets = (
        np.random.default_rng(3)
        .normal(0.0, 5.0, (geometry.n_panels, blocks[0][-1] + 1, blocks[1][-1] + 1))
        .astype(np.float32)
    )
    cm = CommonMode(16, geometry.common_mode_asic, offsets, 5.0)
    _, plain, offset = _pair("epix10k2m", 2, Artefacts(common_mode=cm))
    # nothing else changes: the same photons, noise, bad pixels and truth
    np.testing.assert_array_equal(plain.mask, offset.mask)
    np.testing.assert_array_equal(plain.label, offset.label)
    np.testing.assert_array_equal(plain.peaks.snr, offset.peaks.snr)
    expected = common_mode_map(cm, geometry.frame_shape)
    dead = plain.adu == 0
    hot = plain.adu >= 20 * plain.params.response.adu_per_photon
    live = ~dead & ~hot & (plain.adu < plain.params.response.saturation_adu)
    np.testing.assert_allclose((offset.adu - plain.adu)[live], expected[live], atol=0.02)
    np.testing.assert_array_equal(offset.adu[dead], 0.0)


# ------------------------------------------------------------------------------------------------
# Truth with everything on
# ------------------------------------------------------------------------------------------------


def test_truth_invariants_hold_with_every_artefact_on_jungfrau():
    """(ePix10k2M frames with artefacts run test_peaksim_frame's invariants.)"""
    geometry = get_geometry("jungfrau4m")
    for seed in range(2):
        frame = simulate_frame(geometry, np.random.default_rng([31, seed]), artefact_probability=1.0)
        assert frame.params.artefacts.any
        p = frame.peaks
        assert not np.any(p.strong & p.weak)
        assert np.all(p.snr[p.strong] >= STRONG_SNR) and np.all(p.snr[p.weak] >= WEAK_SNR)
        centre = (p.panel, np.rint(p.ss).astype(int), np.rint(p.fs).astype(int))
        assert np.all(frame.label[centre][p.strong] == 1)
        assert np.all(frame.mask[centre][p.strong] == 1)
        assert not np.any(frame.label.astype(bool) & frame.ignore)
