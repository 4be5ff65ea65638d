"""Optional artefacts of real SFX frames: a liquid-jet streak, the beamstop's support arm and
common-mode offsets of ASIC row blocks.

They are off by default (:func:`peaknet_serve.sim.peaksim.frame.sample_frame_params` draws them only when its
``artefact_probability`` is above 0, and then with that probability per frame and per kind), so
frames simulated with default settings stay bit for bit what they were before this module existed.

* **Jet streak** (:class:`JetStreak`): diffuse scatter of the liquid jet, a bright line through
  (or near) the beam centre at a random angle, Gaussian across (a few pixels), decaying as
  ``1 / (1 + |along| / decay)`` away from the beam, as bright as ~0.3-3x the water ring's peak.
  Added to the expected background photons (so it gets Poisson noise and counts as background in
  the truth).
* **Beamstop support arm** (:class:`BeamstopArm`): a strip a few mm wide from the beam (the
  beamstop) to the detector edge at a random angle, in which the expected photons are scaled by
  :data:`SHADOW_TRANSMISSION` like the beamstop itself; masked in the frame's mask only in a
  fraction :data:`ARM_MASKED_PROBABILITY` of frames (real masks are often imperfect).
* **Common mode** (:class:`CommonMode`): a Gaussian ADU offset per block of rows of each readout
  ASIC of each panel (see :attr:`peaknet_serve.sim.peaksim.geometry.DetectorGeometry.common_mode_rows`), sigma
  0.3-1.5x the read noise, added to the ADU after the read noise.

All randomness is in the parameters (drawn by :func:`sample_artefacts`); applying them draws
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from peaknet_serve.sim.peaksim.geometry import DetectorGeometry

# Expected-photon factor in the beamstop's and its arm's shadow.
SHADOW_TRANSMISSION = 0.01
# Share of frames with an arm whose mask covers it.
ARM_MASKED_PROBABILITY = 0.5

JET_PEAK_RANGE = (0.3, 3.0)  # x the water ring's peak photons, log-uniform
JET_SIGMA_PX_RANGE = (1.0, 3.0)  # Gaussian sigma across the streak, pixels
JET_OFFSET_SIGMA_PX = 3.0  # rms distance of the streak's line from the beam, pixels
JET_DECAY_RANGE = (5.0e-3, 50.0e-3)  # metres along the streak to half intensity, log-uniform
ARM_WIDTH_RANGE = (1.5e-3, 4.0e-3)  # metres
COMMON_MODE_SIGMA_RANGE = (0.3, 1.5)  # x the read noise


@dataclass(frozen=True)
class JetStreak:
    """Liquid-jet streak.

    Attributes:
        angle: radians, direction of the line in the lab (x, y) plane (0 = +x).
        offset: metres, signed perpendicular distance of the line from the beam.
        sigma: metres, Gaussian width across the line.
        peak: expected photons per pixel on the line at its closest approach to the beam (before
            the ``cos^3(2 theta)`` obliquity).
        decay: metres along the line at which the intensity has halved.
    """

    angle: float
    offset: float
    sigma: float
    peak: float
    decay: float


@dataclass(frozen=True)
class BeamstopArm:
    """The beamstop's support arm: a strip from the beam to the detector edge.

    Attributes:
        angle: radians, direction from the beam towards the detector edge in the lab (x, y) plane.
        width: metres.
        masked: the frame's mask covers the arm's shadow.
    """

    angle: float
    width: float
    masked: bool


@dataclass(frozen=True)
class CommonMode:
    """Common-mode offsets: one per block of ``block_rows`` rows of each ASIC of each panel.

    Attributes:
        block_rows: rows per block (1 = per-row line noise); the last block of an ASIC may be shorter.
        asic_shape: ``(ss, fs)`` of one readout ASIC (the whole panel for a CCD).
        offsets_adu: (P, n_ss_blocks, n_fs_asics) float32 ADU, ``n_ss_blocks`` =
            ``ceil(n_ss / asic_ss) * ceil(asic_ss / block_rows)``, ``n_fs_asics = ceil(n_fs / asic_fs)``.
        sigma_adu: the Gaussian sigma the offsets were drawn with (ADU).
    """

    block_rows: int
    asic_shape: tuple[int, int]
    offsets_adu: np.ndarray
    sigma_adu: float


@dataclass(frozen=True)
class Artefacts:
    """The artefacts of one frame (``None`` = absent; the default has none)."""

    jet: JetStreak | None = None
    arm: BeamstopArm | None = None
    common_mode: CommonMode | None = None

    @property
    def any(self) -> bool:
        return self.jet is not None or self.arm is not None or self.common_mode is not None


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def common_mode_blocks(
    n_ss: int, n_fs: int, asic_shape: tuple[int, int], block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Block index of every row and ASIC index of every column of a panel.

    Returns:
        ``(row_block, col_asic)``: (n_ss,) and (n_fs,) int64.
    """
    a_ss, a_fs = asic_shape
    per_asic = -(-a_ss // block_rows)
    rows = np.arange(n_ss, dtype=np.int64)
    return (rows // a_ss) * per_asic + (rows % a_ss) // block_rows, np.arange(n_fs, dtype=np.int64) // a_fs


def sample_common_mode(rng: np.random.Generator, geometry: DetectorGeometry, read_noise_adu: float) -> CommonMode:
    """Block height from the geometry's options, sigma ``0.3-1.5x`` the read noise, one offset per block."""
    n_ss, n_fs = geometry.panel_shape
    asic = geometry.common_mode_asic
    block_rows = int(geometry.common_mode_rows[int(rng.integers(len(geometry.common_mode_rows)))])
    sigma = float(rng.uniform(*COMMON_MODE_SIGMA_RANGE)) * read_noise_adu
    row_block, col_asic = common_mode_blocks(n_ss, n_fs, asic, block_rows)
    shape = (geometry.n_panels, int(row_block[-1]) + 1, int(col_asic[-1]) + 1)
    offsets = (rng.standard_normal(shape) * sigma).astype(np.float32)
    return CommonMode(block_rows, asic, offsets, sigma)


def sample_artefacts(
    rng: np.random.Generator,
    geometry: DetectorGeometry,
    probability: float,
    water_photons: float,
    read_noise_adu: float,
) -> Artefacts:
    """Each artefact kind with ``probability``, its parameters from the ranges above.

    Args:
        water_photons: the frame's water-ring peak height (photons per pixel), the jet's scale.
        read_noise_adu: the frame's read noise, the common mode's scale.
    """
    has_jet, has_arm, has_cm = (rng.random() < probability for _ in range(3))
    pixel = geometry.pixel_size
    jet = arm = cm = None
    if has_jet:
        jet = JetStreak(
            angle=float(rng.uniform(0.0, math.pi)),
            offset=float(rng.normal(0.0, JET_OFFSET_SIGMA_PX)) * pixel,
            sigma=float(rng.uniform(*JET_SIGMA_PX_RANGE)) * pixel,
            peak=water_photons * _log_uniform(rng, *JET_PEAK_RANGE),
            decay=_log_uniform(rng, *JET_DECAY_RANGE),
        )
    if has_arm:
        arm = BeamstopArm(
            angle=float(rng.uniform(0.0, 2.0 * math.pi)),
            width=float(rng.uniform(*ARM_WIDTH_RANGE)),
            masked=bool(rng.random() < ARM_MASKED_PROBABILITY),
        )
    if has_cm:
        cm = sample_common_mode(rng, geometry, read_noise_adu)
    return Artefacts(jet, arm, cm)


def jet_streak_photons(x: np.ndarray, y: np.ndarray, cos2t: np.ndarray, jet: JetStreak) -> np.ndarray:
    """Expected streak photons per pixel.

    Args:
        x, y: (P, ss, fs) float32 lab coordinates of pixel centres (metres, relative to the beam).
        cos2t: (P, ss, fs) float32 ``cos(2 theta)`` (the ``cos^3`` obliquity is applied).

    Returns:
        (P, ss, fs) float32 photons.
    """
    c, s = np.float32(math.cos(jet.angle)), np.float32(math.sin(jet.angle))
    across = (c * y - s * x - np.float32(jet.offset)) / np.float32(jet.sigma)
    along = np.abs(c * x + s * y) / np.float32(jet.decay)
    streak = np.float32(jet.peak) * np.exp(np.float32(-0.5) * across * across) / (1.0 + along)
    return (streak * cos2t**3).astype(np.float32)


def arm_shadow(x: np.ndarray, y: np.ndarray, arm: BeamstopArm) -> np.ndarray:
    """(P, ss, fs) bool: pixel centres (lab x, y in metres relative to the beam, any float dtype)
    inside the arm's strip (from the beam outwards along ``arm.angle``)."""
    c, s = math.cos(arm.angle), math.sin(arm.angle)
    along = c * x + s * y
    across = c * y - s * x
    return (along > 0) & (np.abs(across) < arm.width / 2)


def common_mode_map(common_mode: CommonMode, frame_shape: tuple[int, int, int]) -> np.ndarray:
    """(P, ss, fs) float32 ADU offsets of every pixel."""
    _, n_ss, n_fs = frame_shape
    row_block, col_asic = common_mode_blocks(n_ss, n_fs, common_mode.asic_shape, common_mode.block_rows)
    return common_mode.offsets_adu[:, row_block[:, None], col_asic[None, :]]
