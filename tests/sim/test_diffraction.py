"""Lattice and Ewald-sphere physics."""

import numpy as np

from peaknet_serve.sim.peaksim.diffraction import (
    CrystalState,
    ewald_reflections,
    wavelength_angstrom,
    wilson_intensities,
)
from peaknet_serve.sim.peaksim.lattice import UnitCell, random_rotation, random_unit_cell, reciprocal_matrix


def test_reciprocal_matrix_is_dual_basis():
    cell = UnitCell(50.0, 60.0, 120.0, 90.0, 105.0, 90.0)
    real = cell.real_space_matrix()
    np.testing.assert_allclose(real @ reciprocal_matrix(real).T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(real, axis=1), [50.0, 60.0, 120.0])


def test_random_rotation_is_proper_orthogonal():
    rot = random_rotation(np.random.default_rng(3))
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rot), 1.0)


def test_random_cells_stay_in_range():
    rng = np.random.default_rng(0)
    for _ in range(50):
        cell = random_unit_cell(rng, (30.0, 250.0))
        assert all(30.0 <= v <= 250.0 for v in (cell.a, cell.b, cell.c))
        assert cell.volume > 0


def _crystal(rotation_seed: int = 1) -> CrystalState:
    cell = UnitCell(79.0, 79.0, 38.0)  # lysozyme-like
    recip = reciprocal_matrix(cell.real_space_matrix()) @ random_rotation(np.random.default_rng(rotation_seed)).T
    return CrystalState(recip, mosaicity_rad=np.deg2rad(0.1), domain_size=1000.0, d_min=2.0)


def test_reflections_lie_near_the_ewald_sphere_and_within_resolution():
    wavelength = wavelength_angstrom(9.5)
    refl = ewald_reflections(_crystal(), wavelength, bandwidth=0.003)
    assert len(refl) > 50
    eps = np.linalg.norm(refl.s, axis=1) - 1.0 / wavelength
    # 3.5 sigma of the broadest width that any reflection here can have.
    assert np.abs(eps).max() < 3.5 * (np.deg2rad(0.1) * 0.5 + 1e-3 + 0.003 * 0.25 * wavelength / 2 + 1e-3)
    assert refl.d.min() >= 2.0 - 1e-9
    assert np.all((refl.partiality > 0) & (refl.partiality <= 1))
    np.testing.assert_allclose(refl.q, refl.hkl @ _crystal().reciprocal, atol=1e-12)


def test_ewald_enumeration_matches_brute_force():
    wavelength = wavelength_angstrom(8.0)
    crystal = _crystal(rotation_seed=7)
    fast = ewald_reflections(crystal, wavelength, bandwidth=0.003)
    n = 45
    grid = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    q = grid @ crystal.reciprocal
    qn = np.linalg.norm(q, axis=1)
    s = q + [0.0, 0.0, 1.0 / wavelength]
    eps = np.linalg.norm(s, axis=1) - 1.0 / wavelength
    sigma = np.sqrt(
        (crystal.mosaicity_rad * qn) ** 2 + (1.0 / crystal.domain_size) ** 2 + (0.003 * qn**2 * wavelength / 2) ** 2
    )
    keep = (qn > 0) & (qn <= 1 / crystal.d_min) & (np.abs(eps) <= 3.5 * sigma) & (s[:, 2] > 0)
    brute = {tuple(r) for r in grid[keep]}
    assert {tuple(r) for r in fast.hkl} == brute


def test_wilson_intensities_follow_b_factor_falloff():
    rng = np.random.default_rng(0)
    d_low, d_high = np.full(20000, 10.0), np.full(20000, 2.0)
    b = 40.0
    ratio = wilson_intensities(rng, d_high, b).mean() / wilson_intensities(rng, d_low, b).mean()
    expected = np.exp(-b / (2 * 2.0**2)) / np.exp(-b / (2 * 10.0**2))
    assert abs(ratio / expected - 1) < 0.05
