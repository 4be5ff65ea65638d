"""Unit cells, crystal orientations and reciprocal lattices (lengths in Angstrom)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CRYSTAL_SYSTEMS = ("cubic", "tetragonal", "orthorhombic", "hexagonal", "monoclinic", "triclinic")


@dataclass(frozen=True)
class UnitCell:
    """Cell edges (Angstrom) and angles (degrees)."""

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0

    def real_space_matrix(self) -> np.ndarray:
        """(3, 3) float64 whose rows are the cell vectors a, b, c (standard orientation: a along x,
        b in the xy-plane)."""
        al, be, ga = np.deg2rad([self.alpha, self.beta, self.gamma])
        a_vec = np.array([self.a, 0.0, 0.0])
        b_vec = np.array([self.b * np.cos(ga), self.b * np.sin(ga), 0.0])
        cx = self.c * np.cos(be)
        cy = self.c * (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
        cz = np.sqrt(max(self.c**2 - cx**2 - cy**2, 1e-12))
        return np.stack([a_vec, b_vec, np.array([cx, cy, cz])])

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.real_space_matrix())))


def reciprocal_matrix(real_space: np.ndarray) -> np.ndarray:
    """(3, 3) rows a*, b*, c* (1/Angstrom, no 2*pi) of the lattice whose rows are a, b, c.

    Satisfies ``real_space @ reciprocal.T == identity``.
    """
    return np.linalg.inv(real_space).T


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A (3, 3) rotation matrix drawn uniformly from SO(3) (normalised Gaussian quaternion)."""
    w, x, y, z = rng.normal(size=4) / 1.0
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_unit_cell(rng: np.random.Generator, length_range: tuple[float, float] = (30.0, 250.0)) -> UnitCell:
    """A cell of a random crystal system, edges log-uniform in ``length_range`` (Angstrom)."""
    lo, hi = np.log(length_range[0]), np.log(length_range[1])
    a, b, c = np.exp(rng.uniform(lo, hi, size=3))
    system = CRYSTAL_SYSTEMS[rng.integers(len(CRYSTAL_SYSTEMS))]
    if system == "cubic":
        return UnitCell(a, a, a)
    if system == "tetragonal":
        return UnitCell(a, a, c)
    if system == "orthorhombic":
        return UnitCell(a, b, c)
    if system == "hexagonal":
        return UnitCell(a, a, c, 90.0, 90.0, 120.0)
    if system == "monoclinic":
        return UnitCell(a, b, c, 90.0, float(rng.uniform(95.0, 120.0)), 90.0)
    angles = rng.uniform(80.0, 110.0, size=3)
    return UnitCell(a, b, c, *map(float, angles))
