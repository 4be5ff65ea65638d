"""Diffuse background: liquid-jet water ring, air scatter and a constant, per pixel.

All terms are expected photons per pixel, scaled by the pixel's solid angle relative to a pixel
at the beam centre (``cos^3(2 theta)`` obliquity for a flat detector) and by polarisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Water's first (strongest) scattering maximum and its weaker second one, in Q = 4 pi sin(theta)/lambda.
WATER_Q1 = 2.0
WATER_Q2 = 2.9


@dataclass(frozen=True)
class BackgroundParams:
    """Photons per pixel (at the beam centre's solid angle) of each term.

    Attributes:
        water: peak height of the first water ring.
        water_q: its centre (1/Angstrom, Q with the 4 pi), around :data:`WATER_Q1`.
        water_width: its Gaussian sigma in Q.
        air: air-scatter level at Q = 0, decaying as ``exp(-Q / air_q)``.
        air_q: decay constant in Q.
        constant: flat level (fluorescence, stray light).
    """

    water: float
    water_q: float
    water_width: float
    air: float
    air_q: float
    constant: float


def scattering_geometry(
    x: np.ndarray, y: np.ndarray, distance: float, wavelength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel ``(Q, cos(2 theta), polarisation)`` for pixel-centre lab coordinates (metres).

    Returns:
        Three arrays of the shape of ``x`` (float32); Q in 1/Angstrom including 4 pi.
    """
    r2 = x.astype(np.float64) ** 2 + y.astype(np.float64) ** 2
    norm = np.sqrt(r2 + distance**2)
    cos2t = distance / norm
    sin_t = np.sqrt(np.clip((1.0 - cos2t) / 2.0, 0.0, 1.0))
    q = 4.0 * np.pi * sin_t / wavelength
    polarization = 1.0 - (x / norm) ** 2
    return q.astype(np.float32), cos2t.astype(np.float32), polarization.astype(np.float32)


def background_photons(
    params: BackgroundParams, q: np.ndarray, cos2t: np.ndarray, polarization: np.ndarray
) -> np.ndarray:
    """Expected background photons per pixel (same shape as ``q``, float32)."""
    water = params.water * (
        np.exp(-0.5 * ((q - params.water_q) / params.water_width) ** 2)
        + 0.35 * np.exp(-0.5 * ((q - WATER_Q2) / (1.4 * params.water_width)) ** 2)
    )
    air = params.air * np.exp(-q / params.air_q)
    obliquity = cos2t**3
    return ((water + air) * polarization * obliquity + params.constant).astype(np.float32)


def sample_background(rng: np.random.Generator) -> BackgroundParams:
    """Background drawn from wide ranges: from nearly empty to a thick, bright jet."""
    return BackgroundParams(
        water=float(np.exp(rng.uniform(np.log(0.02), np.log(40.0)))),
        water_q=float(rng.uniform(1.85, 2.15)),
        water_width=float(rng.uniform(0.2, 0.45)),
        air=float(np.exp(rng.uniform(np.log(0.01), np.log(8.0)))),
        air_q=float(rng.uniform(0.3, 1.5)),
        constant=float(np.exp(rng.uniform(np.log(0.005), np.log(2.0)))),
    )
