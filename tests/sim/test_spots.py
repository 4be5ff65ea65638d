"""Pixel-integrated spots, background, detector noise."""

import numpy as np
from scipy.stats import norm

from peaknet_serve.sim.peaksim.background import BackgroundParams, background_photons, scattering_geometry
from peaknet_serve.sim.peaksim.detector import DetectorResponse, photons_to_adu, poisson_photons, to_uint16
from peaknet_serve.sim.peaksim.spots import pixel_masses, render_spots, spot_footprints


def test_pixel_masses_are_exact_gaussian_integrals():
    idx, mass = pixel_masses(np.array([10.3]), np.array([0.8]), 3)
    expected = norm.cdf(idx + 0.5, 10.3, 0.8) - norm.cdf(idx - 0.5, 10.3, 0.8)
    np.testing.assert_allclose(mass, expected, rtol=1e-10)
    assert idx[0, 3] == 10


def test_rendered_spot_conserves_photons_and_centroid():
    shape = (2, 40, 50)
    ss, fs = np.array([20.3, 10.0]), np.array([24.6, 30.2])
    flat, mass, sid = spot_footprints(np.array([1, 0]), ss, fs, np.array([1.5, 0.6]), np.array([0.9, 2.0]), shape)
    image = render_spots(np.array([1000.0, 50.0]), flat, mass, sid, shape)
    assert np.isclose(image[1].sum(), 1000.0, rtol=1e-4) and np.isclose(image[0].sum(), 50.0, rtol=1e-4)
    rows, cols = np.indices(shape[1:])
    assert abs((image[1] * rows).sum() / image[1].sum() - 20.3) < 1e-3
    assert abs((image[1] * cols).sum() / image[1].sum() - 24.6) < 1e-3


def test_spots_at_panel_edge_lose_photons_off_panel():
    shape = (1, 20, 20)
    flat, mass, sid = spot_footprints(
        np.array([0]), np.array([0.0]), np.array([10.0]), np.array([1.0]), np.array([1.0]), shape
    )
    image = render_spots(np.array([100.0]), flat, mass, sid, shape)
    assert 50.0 < image.sum() < 75.0


def test_water_ring_peaks_at_its_q():
    x = np.linspace(0.0, 0.15, 2000, dtype=np.float32)[None, None]
    y = np.zeros_like(x)
    q, cos2t, pol = scattering_geometry(x, y, distance=0.1, wavelength=1.3)
    params = BackgroundParams(water=10.0, water_q=2.0, water_width=0.3, air=0.0, air_q=1.0, constant=0.0)
    bg = background_photons(params, q, cos2t, pol)
    q_at_max = q.ravel()[np.argmax(bg.ravel())]
    assert 1.7 < q_at_max < 2.05  # obliquity and polarisation pull it slightly inwards


def test_poisson_statistics_and_gain():
    rng = np.random.default_rng(0)
    expected = np.full((1, 300, 300), 4.0)
    photons = poisson_photons(rng, expected)
    assert abs(photons.mean() - 4.0) < 0.03 and abs(photons.var() - 4.0) < 0.1
    response = DetectorResponse(
        adu_per_photon=20.0,
        read_noise_adu=3.0,
        panel_offset_adu=np.zeros(1),
        panel_gain=np.ones(1),
        saturation_adu=65535.0,
    )
    adu = photons_to_adu(rng, photons, response)
    assert adu.dtype == np.float32
    assert abs(adu.mean() - 80.0) < 0.6
    assert abs(adu.var() - (400.0 * 4.0 + 9.0)) < 0.03 * 1609.0


def test_uint16_conversion_rounds_and_clips():
    out = to_uint16(np.array([-3.2, 0.4, 0.6, 70000.0, 123.5], dtype=np.float32))
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 0, 1, 65535, 124]
