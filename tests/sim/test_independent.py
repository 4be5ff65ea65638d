"""peaknet_serve.sim.independent (the second, independent frame simulator) and
peaknet_serve.eval.independent (the bundled model scored on its frames)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from peaknet_serve.sim import independent as sim

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "model_store" / "peaknet" / "peaknet.yaml"
SHAPES = {
    "epix10k2m": (16, 352, 384),
    "jungfrau4m": (8, 512, 1024),
    "cspad": (32, 185, 388),
    "rayonix": (1, 1920, 1920),
}


@pytest.fixture(scope="module")
def frames():
    """One frame per detector (seeds used nowhere else)."""
    return {name: sim.simulate(name, np.random.default_rng([97, i])) for i, name in enumerate(sim.DETECTOR_NAMES)}


def test_shapes_dtypes_and_truth_arrays(frames):
    for name, f in frames.items():
        assert f.adu.shape == f.uint16.shape == f.mask.shape == SHAPES[name]
        assert f.adu.dtype == np.float32 and f.uint16.dtype == np.uint16 and f.mask.dtype == np.uint8
        assert np.isfinite(f.adu).all()
        assert set(np.unique(f.mask)) <= {0, 1} and 0.9 < f.mask.mean() < 1.0
        t = f.truth
        n = len(t.panel)
        for arr in (t.ss, t.fs, t.photons, t.i_over_sigma, t.strong, t.weak, t.sigma_major):
            assert arr.shape == (n,)
        assert t.hkl.shape == (n, 3)
        assert not (t.strong & t.weak).any()
        assert (t.panel >= 0).all() and (t.panel < SHAPES[name][0]).all()
        assert (t.ss > -0.5).all() and (t.ss < SHAPES[name][1] - 0.5).all()
        assert (t.fs > -0.5).all() and (t.fs < SHAPES[name][2] - 0.5).all()
        assert (t.sigma_minor >= 0.55).all() and (t.sigma_major <= 3.5).all()
        assert f.strong_points.shape == (int(t.strong.sum()), 3)
        # The rule as documented.
        assert (t.i_over_sigma[t.strong] >= sim.STRONG_I_OVER_SIGMA).all()
        assert (t.peak_photons[t.strong] >= sim.PEAK_PIXEL_SIGMAS * t.peak_noise[t.strong]).all()
        assert (t.i_over_sigma[t.weak] >= sim.WEAK_I_OVER_SIGMA).all()
        assert (t.i_over_sigma[~(t.strong | t.weak)] < sim.WEAK_I_OVER_SIGMA).all()
        centre = f.mask[t.panel, np.rint(t.ss).astype(int), np.rint(t.fs).astype(int)]
        assert (centre[t.strong] == 1).all()
    assert sum(int(f.truth.strong.sum()) for f in frames.values()) > 20


def test_deterministic_per_seed():
    a = sim.simulate("cspad", np.random.default_rng([5, 1]))
    b = sim.simulate("cspad", np.random.default_rng([5, 1]))
    c = sim.simulate("cspad", np.random.default_rng([5, 2]))
    np.testing.assert_array_equal(a.adu, b.adu)
    np.testing.assert_array_equal(a.uint16, b.uint16)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.truth.points(), b.truth.points())
    np.testing.assert_array_equal(a.truth.strong, b.truth.strong)
    assert not np.array_equal(a.adu, c.adu)


def test_uint16_matches_float(frames):
    for f in frames.values():
        assert 8 <= f.offset < 5000
        back = f.uint16.astype(np.float64) - f.offset
        inside = (f.adu + f.offset >= 0) & (f.adu + f.offset <= 65535)
        assert np.abs(back[inside] - f.adu[inside]).max() <= 0.5 + 1e-3
        assert (f.uint16[~inside & (f.adu < 0)] == 0).all()
        assert f.adu.max() + f.offset <= 65535  # saturation clips below the uint16 ceiling
        live = f.mask.astype(bool)
        assert (f.uint16[live] == 0).mean() < 1e-4  # the background sits above zero


def test_layouts_do_not_overlap_and_invert():
    rng = np.random.default_rng(0)
    for name in sim.DETECTOR_NAMES:
        det = sim.detector(name)
        beam = (0.3, -0.7)
        x, y = sim.pixel_xy(det, beam)
        p = rng.integers(0, det.frame_shape[0], 500)
        s = rng.integers(0, det.frame_shape[1], 500)
        q = rng.integers(0, det.frame_shape[2], 500)
        panel, ss, fs = sim.xy_to_panel(det, x[p, s, q], y[p, s, q], beam)
        np.testing.assert_array_equal(panel, p)
        np.testing.assert_allclose(ss, s, atol=1e-6)
        np.testing.assert_allclose(fs, q, atol=1e-6)
        # No pixel centre of one panel lies on another panel (overlap would map to the first).
        corners = np.array([[0, 0], [0, -1], [-1, 0], [-1, -1]])
        for k in range(det.frame_shape[0]):
            panel, _, _ = sim.xy_to_panel(
                det, x[k][corners[:, 0], corners[:, 1]], y[k][corners[:, 0], corners[:, 1]], beam
            )
            assert (panel == k).all()
    # fast axes point in several lab directions (unlike a plain grid).
    assert len({tuple(np.round(v, 6)) for v in sim.detector("epix10k2m").fs_dirs}) == 4


def test_ewald_intersection_finds_every_reflection_a_brute_force_search_finds():
    det = sim.detector("epix10k2m")
    params = sim.sample_params(det, np.random.default_rng(11))
    crystal = sim.Crystal(
        "triclinic", (31.0, 37.0, 44.0, 80.0, 100.0, 95.0), sim.random_rotation(np.random.default_rng(3)), 100.0
    )
    params = dataclasses.replace(params, mosaicity_rad=math.radians(0.3), crystals=(crystal,))
    s_max = 0.35
    hkl, g, _ = sim.ewald_reflections(crystal, params, s_max)
    real = sim.real_space_matrix(crystal.cell) @ crystal.rotation.T
    recip = np.linalg.inv(real).T
    np.testing.assert_allclose(g, hkl @ recip, atol=1e-12)
    r = np.arange(-20, 21)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    gg = grid @ recip
    glen = np.linalg.norm(gg, axis=1)
    k = 1.0 / params.wavelength_a
    e = np.linalg.norm(gg + [0, 0, k], axis=1) - k
    brute = grid[(glen > 0) & (glen <= s_max) & (np.abs(e) <= 3 * sim.rocking_width(glen, params))]
    assert len(brute) > 50
    assert {tuple(v) for v in hkl} == {tuple(v) for v in brute}


def test_spot_profiles_are_centred_and_conserve_photons():
    det = sim.detector("epix10k2m")
    shape = det.frame_shape
    rng = np.random.default_rng(4)
    base = sim.sample_params(det, rng)
    n = shape[0]
    ss, fs = rng.uniform(20, 330, n), rng.uniform(20, 360, n)
    minor = rng.uniform(0.55, 2.0, n)
    angle = rng.uniform(0, np.pi, n)
    spots = sim.Spots(
        np.arange(n),
        ss,
        fs,
        np.full(n, 500.0),
        np.clip(minor * rng.uniform(1, 3, n), minor, 3.5),
        minor,
        np.cos(angle),
        np.sin(angle),
        np.zeros((n, 3), np.int64),
        np.zeros(n, np.int64),
        np.ones(n),
    )
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    for kind, shape_param in (("moffat", 2.5), ("pvoigt", 0.4)):
        params = dataclasses.replace(base, profile=kind, profile_shape=shape_param)
        out = sim.render_spots(spots, params, shape, np.zeros(shape, np.float32), np.ones(shape, np.float32))
        total = out.image.sum(axis=(1, 2))
        np.testing.assert_allclose(total, 500.0, rtol=1e-9)
        np.testing.assert_allclose((out.image * yy).sum(axis=(1, 2)) / total, ss, atol=0.15)
        np.testing.assert_allclose((out.image * xx).sum(axis=(1, 2)) / total, fs, atol=0.15)
        assert ((out.box_photons > 0.5 * 500) & (out.box_photons <= 500 + 1e-9)).all()


def _box_measurements(f, which, clean_radius=10.0):
    """Background-subtracted box sums of isolated, unsaturated spots in the noisy frame (ADU / gain,
    background = mean of a surrounding square ring of ~4x the box pixels, as the truth rule assumes).

    Returns:
        ``(index, signal, sigma)``: spot indices and measured signal and its noise (photons).
    """
    t, p = f.truth, f.params
    pts = t.points()
    img = f.adu.astype(np.float64) / p.gain
    saturated = 0.95 * f.adu.max() / p.gain
    rows = []
    for i in np.flatnonzero(which):
        panel, s, q = t.panel[i], round(t.ss[i]), round(t.fs[i])
        h = int(sim.integration_half_size(t.sigma_major[i : i + 1])[0])
        outer = math.ceil((math.sqrt(5.0) * (2 * h + 1) - 1) / 2)
        if not (outer <= s < img.shape[1] - outer and outer <= q < img.shape[2] - outer):
            continue
        same = pts[pts[:, 0] == panel]
        if (np.hypot(same[:, 1] - t.ss[i], same[:, 2] - t.fs[i]) < clean_radius).sum() > 1:
            continue
        region = img[panel, s - outer : s + outer + 1, q - outer : q + outer + 1]
        if not f.mask[panel, s - outer : s + outer + 1, q - outer : q + outer + 1].all() or region.max() >= saturated:
            continue
        inner = np.zeros(region.shape, dtype=bool)
        inner[outer - h : outer + h + 1, outer - h : outer + h + 1] = True
        n = inner.sum()
        b = region[~inner].mean()
        signal = region[inner].sum() - n * b
        sigma = math.sqrt(max(signal, 0.0) + 1.25 * n * (max(b, 0.0) + p.read_noise**2))
        rows.append((i, signal, sigma))
    out = np.array(rows).reshape(-1, 3)
    return out[:, 0].astype(np.int64), out[:, 1], out[:, 2]


def test_strong_spots_stand_out_and_weak_ones_are_dimmer():
    # A moderate background, quiet electronics and many compact spots.
    det = sim.detector("epix10k2m")
    rng = np.random.default_rng([61, 2])
    params = sim.sample_params(det, rng)
    crystal = sim.Crystal("orthorhombic", (120.0, 140.0, 160.0, 90.0, 90.0, 90.0), params.crystals[0].rotation, 300.0)
    params = dataclasses.replace(
        params,
        crystals=(crystal,),
        background_level=2.0,
        jet=None,
        d_limit_a=2.0,
        distance_mm=200.0,
        wavelength_a=1.3,
        common_mode=0.0,
        panel_offset=0.0,
        read_noise=0.1,
        panel_gain_rms=0.0,
        pixel_gain_rms=0.005,
        width_px=1.0,
        streak="round",
        profile="pvoigt",
        profile_shape=0.1,
    )
    f = sim.simulate("epix10k2m", rng, params)
    t = f.truth
    _, signal, sigma = _box_measurements(f, t.strong)
    assert len(signal) > 30
    snr_strong = signal / sigma
    # Strong spots: the box sum exceeds the local background by > 3 noise sigmas (expected I/sigma >= 6).
    assert (snr_strong > 3.0).mean() > 0.97
    assert np.median(snr_strong) > 8.0
    # Weak-for-brightness spots are dimmer.
    _, signal_w, sigma_w = _box_measurements(f, t.weak & (t.i_over_sigma < sim.STRONG_I_OVER_SIGMA))
    assert len(signal_w) > 30
    snr_weak = signal_w / sigma_w
    assert np.median(snr_weak) < 6.0 < np.median(snr_strong)
    assert (snr_weak > 9.0).mean() < 0.05
    # The truth's expected box photons are what the data show, within the truth's own noise model.
    index, signal, _ = _box_measurements(f, t.strong | t.weak)
    expected_sigma = t.box_photons[index] / t.i_over_sigma[index]
    pulls = (signal - t.box_photons[index]) / expected_sigma
    assert len(pulls) > 60
    assert abs(np.median(pulls)) < 0.3
    assert 0.7 < np.std(pulls) < 1.4


@pytest.mark.skipif(not BUNDLED.is_file(), reason="bundled model not present (model_store/peaknet)")
def test_evaluate_independent_smoke(tmp_path):
    from peaknet_serve.eval import independent as ev

    frame = sim.simulate("cspad", ev.frame_rng(5, "cspad", 0))
    assert (
        ev.main(
            [
                "--config",
                str(BUNDLED),
                "--geometries",
                "cspad",
                "--frames",
                "1",
                "--device",
                "cpu",
                "--seed",
                "5",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "robustness.json").read_text())
    acc = report["per_geometry"]["cspad"]["accuracy"]["float32"]
    assert acc["tp"] + acc["fn"] == int(frame.truth.strong.sum())
    assert 0.0 <= acc["precision"] <= 1.0 and 0.0 <= acc["recall"] <= 1.0
    assert report["per_geometry"]["cspad"]["frames"][0]["strong"] == int(frame.truth.strong.sum())
    md = (tmp_path / "robustness.md").read_text()
    assert "| cspad |" in md and "Reproduce: `peaknet-evaluate-independent" in md
    assert (tmp_path / "robustness.png").stat().st_size > 1000
