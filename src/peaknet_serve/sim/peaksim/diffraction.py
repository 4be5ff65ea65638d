"""Reflections of a still crystal on the Ewald sphere: positions, partiality, Wilson intensities.

Reciprocal vectors ``q`` are in 1/Angstrom without 2*pi (``|q| = 1/d``). The incident wave vector
is ``k0 = (0, 0, 1/lambda)``; a reflection diffracts along ``s = q + k0`` and is in the diffraction
condition when ``|s| = 1/lambda``. Its excitation error is ``eps = |s| - 1/lambda``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HC_KEV_ANGSTROM = 12.398419843


def wavelength_angstrom(photon_energy_kev: float) -> float:
    """X-ray wavelength (Angstrom) of a photon energy (keV)."""
    return HC_KEV_ANGSTROM / photon_energy_kev


@dataclass(frozen=True)
class CrystalState:
    """A crystal in the beam.

    Attributes:
        reciprocal: (3, 3) rows a*, b*, c* already rotated into the lab frame (1/Angstrom).
        mosaicity_rad: full mosaic spread (radians, Gaussian sigma of block tilts).
        domain_size: mosaic block size (Angstrom); sets the size of the reciprocal-lattice point.
        d_min: intrinsic diffraction limit (Angstrom); no reflection with d < d_min is produced.
    """

    reciprocal: np.ndarray
    mosaicity_rad: float
    domain_size: float
    d_min: float


@dataclass(frozen=True)
class Reflections:
    """Reflections near the Ewald sphere.

    Attributes:
        hkl: (N, 3) int64 Miller indices.
        q: (N, 3) float64 lab-frame reciprocal vectors (1/Angstrom).
        s: (N, 3) float64 diffracted wave vectors ``q + k0``.
        partiality: (N,) float64 in (0, 1].
        d: (N,) float64 resolution (Angstrom).
    """

    hkl: np.ndarray
    q: np.ndarray
    s: np.ndarray
    partiality: np.ndarray
    d: np.ndarray

    def __len__(self) -> int:
        return int(self.hkl.shape[0])

    def take(self, keep: np.ndarray) -> Reflections:
        return Reflections(self.hkl[keep], self.q[keep], self.s[keep], self.partiality[keep], self.d[keep])


def excitation_width(q_norm: np.ndarray, crystal: CrystalState, wavelength: float, bandwidth: float) -> np.ndarray:
    """Gaussian sigma (1/Angstrom) of the excitation error a reflection tolerates.

    Three independent broadenings in quadrature: mosaic spread (``eta * |q|``), finite domain
    size (``1 / domain``), and the beam's relative bandwidth (``bw * |q|^2 * lambda / 2``).
    """
    mosaic = crystal.mosaicity_rad * q_norm
    domain = np.full_like(q_norm, 1.0 / crystal.domain_size)
    band = bandwidth * q_norm**2 * wavelength / 2.0
    return np.sqrt(mosaic**2 + domain**2 + band**2)


def _longest_axis_last(reciprocal: np.ndarray) -> np.ndarray:
    """Permutation that puts the shortest reciprocal axis (longest real axis) last."""
    return np.argsort(-np.linalg.norm(reciprocal, axis=1))


def _row_sphere_roots(u: np.ndarray, c: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the lattice rows ``u + l c`` cross a sphere of ``radius`` about the origin.

    Returns:
        ``(lo, hi, hits)``: (M,) continuous l of the two crossings and whether the row meets it.
    """
    cc = c @ c
    cu = u @ c
    disc = cu**2 - cc * (np.einsum("ij,ij->i", u, u) - radius**2)
    root = np.sqrt(np.clip(disc, 0.0, None))
    return (-cu - root) / cc, (-cu + root) / cc, disc >= 0


def _integers_in(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All integers in the intervals ``[lo_i, hi_i]``: ``(row_index, value)`` flat arrays."""
    first = np.ceil(lo).astype(np.int64)
    count = np.maximum(np.floor(hi).astype(np.int64) - first + 1, 0)
    rows = np.repeat(np.arange(len(lo)), count)
    offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return rows, first[rows] + offsets


def ewald_reflections(
    crystal: CrystalState, wavelength: float, bandwidth: float = 0.003, max_sigmas: float = 3.5
) -> Reflections:
    """All reflections within ``max_sigmas`` excitation widths of the Ewald sphere.

    Vectorised and exact: for every (h, k) pair of the two densest indices, the lattice row
    ``h a* + k b* + l c*`` crosses the shell between spheres of radius ``1/lambda -+ t`` (``t`` =
    ``max_sigmas`` times the largest excitation width up to the resolution limit) in at most two
    l-intervals; only the integers inside them are examined.

    Returns:
        :class:`Reflections` with partiality ``exp(-eps^2 / (2 sigma^2))``, forward-scattered only.
    """
    order = _longest_axis_last(crystal.reciprocal)
    recip = crystal.reciprocal[order]
    radius = 1.0 / wavelength
    q_max = 1.0 / crystal.d_min
    # |index_i| <= |q| * |real axis_i|
    real = np.linalg.inv(recip).T
    limits = np.ceil(q_max * np.linalg.norm(real, axis=1)).astype(int)
    hh, kk = np.meshgrid(np.arange(-limits[0], limits[0] + 1), np.arange(-limits[1], limits[1] + 1), indexing="ij")
    hh, kk = hh.ravel(), kk.ravel()
    k0 = np.array([0.0, 0.0, radius])
    u = hh[:, None] * recip[0] + kk[:, None] * recip[1] + k0  # (M, 3)
    shell = max_sigmas * float(excitation_width(np.array([q_max]), crystal, wavelength, bandwidth)[0])
    out_lo, out_hi, out_hit = _row_sphere_roots(u, recip[2], radius + shell)
    in_lo, in_hi, in_hit = _row_sphere_roots(u, recip[2], max(radius - shell, 0.0))
    # Inside the outer sphere but outside the inner one: [out_lo, in_lo] and [in_hi, out_hi],
    # or the whole [out_lo, out_hi] when the row misses the inner sphere.
    first_hi = np.where(in_hit, in_lo, out_hi)
    second_lo = np.where(in_hit, in_hi, np.inf)
    rows_a, l_a = _integers_in(np.where(out_hit, out_lo, 0.0), np.where(out_hit, first_hi, -1.0))
    rows_b, l_b = _integers_in(np.where(out_hit & in_hit, second_lo, 0.0), np.where(out_hit & in_hit, out_hi, -1.0))
    rows = np.concatenate([rows_a, rows_b])
    hkl = np.stack([hh[rows], kk[rows], np.concatenate([l_a, l_b])], axis=1)
    hkl = np.unique(hkl, axis=0)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    q = hkl @ recip
    q_norm = np.linalg.norm(q, axis=1)
    keep = q_norm <= q_max
    hkl, q, q_norm = hkl[keep], q[keep], q_norm[keep]
    s = q + k0
    eps = np.linalg.norm(s, axis=1) - radius
    sigma = excitation_width(q_norm, crystal, wavelength, bandwidth)
    keep = (np.abs(eps) <= max_sigmas * sigma) & (s[:, 2] > 0)
    partiality = np.exp(-0.5 * (eps[keep] / sigma[keep]) ** 2)
    inverse = np.argsort(order)
    return Reflections(hkl[keep][:, inverse], q[keep], s[keep], partiality, 1.0 / q_norm[keep])


def wilson_intensities(
    rng: np.random.Generator, d: np.ndarray, b_factor: float, centric_fraction: float = 0.1
) -> np.ndarray:
    """Relative reflection intensities drawn from Wilson statistics with a B-factor falloff.

    Acentric ``|F|^2`` are exponential, centric ones ``chi^2_1``-distributed, both with mean
    ``exp(-B / (2 d^2))`` (``2 B sin^2(theta) / lambda^2 = B / (2 d^2)``).

    Returns:
        (N,) float64 intensities, mean 1 at d -> infinity.
    """
    mean = np.exp(-b_factor / (2.0 * d**2))
    acentric = rng.exponential(1.0, size=d.shape)
    centric = rng.normal(size=d.shape) ** 2
    is_centric = rng.random(d.shape) < centric_fraction
    return mean * np.where(is_centric, centric, acentric)


def polarization_factor(s: np.ndarray, horizontal_fraction: float = 0.99) -> np.ndarray:
    """Polarisation factor of scattering along ``s`` (N, 3) for a beam polarised along x."""
    unit = s / np.linalg.norm(s, axis=1, keepdims=True)
    return horizontal_fraction * (1 - unit[:, 0] ** 2) + (1 - horizontal_fraction) * (1 - unit[:, 1] ** 2)
