"""Detector response: photon shot noise, gain, read noise, bad pixels, conversion to uint16.

Mask convention (as psana/PeakNet use it): ``mask == 1`` marks a good pixel, ``0`` a bad one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UINT16_MAX = 65535


@dataclass(frozen=True)
class GainSwitch:
    """Auto-ranging (ePix10k, Jungfrau): pixels holding more than ``switch_photons`` photons are read
    in a gain stage ``ratio`` times less sensitive, so their read noise in calibrated ADU is
    ``ratio`` times the frame's (the calibrated value stays on the same ADU scale)."""

    switch_photons: float
    ratio: float


@dataclass(frozen=True)
class DetectorResponse:
    """Per-frame detector settings.

    Attributes:
        adu_per_photon: gain (ADU per detected photon).
        read_noise_adu: Gaussian read noise sigma (ADU).
        panel_offset_adu: (P,) float64 residual pedestal per panel (common-mode left-over).
        panel_gain: (P,) float64 flat-field residual gain factor per panel (~1).
        saturation_adu: values are clipped here.
        dead_fraction: fraction of pixels that read 0.
        hot_fraction: fraction of pixels that read a large constant.
        hot_unmasked_fraction: share of hot pixels the mask misses.
        gain_switch: the gain stage of bright pixels, or None (one gain stage).
    """

    adu_per_photon: float
    read_noise_adu: float
    panel_offset_adu: np.ndarray
    panel_gain: np.ndarray
    saturation_adu: float
    dead_fraction: float = 3e-4
    hot_fraction: float = 5e-5
    hot_unmasked_fraction: float = 0.3
    gain_switch: GainSwitch | None = None


def poisson_photons(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Detected photons per pixel: Poisson draws of ``expected`` (any shape), int64."""
    return rng.poisson(np.clip(expected, 0.0, None))


def photons_to_adu(rng: np.random.Generator, photons: np.ndarray, response: DetectorResponse) -> np.ndarray:
    """Photon counts (P, ss, fs) -> float32 ADU with gain, per-panel offsets, read noise, saturation.

    With a :class:`GainSwitch`, pixels above its switch point get the lower gain stage's extra
    read noise (drawn after the frame's, only then)."""
    gain = (response.adu_per_photon * response.panel_gain[:, None, None]).astype(np.float32)
    adu = photons.astype(np.float32) * gain + response.panel_offset_adu[:, None, None].astype(np.float32)
    noise = rng.standard_normal(size=photons.shape, dtype=np.float32)
    adu += np.float32(response.read_noise_adu) * noise
    switch = response.gain_switch
    if switch is not None:
        switched = photons > switch.switch_photons
        extra = response.read_noise_adu * np.sqrt(max(switch.ratio**2 - 1.0, 0.0))
        adu[switched] += np.float32(extra) * rng.standard_normal(int(switched.sum()), dtype=np.float32)
    return np.minimum(adu, np.float32(response.saturation_adu))


@dataclass(frozen=True)
class BadPixels:
    """Bad-pixel maps, each (P, ss, fs) bool."""

    dead: np.ndarray
    hot: np.ndarray
    border: np.ndarray
    beamstop: np.ndarray

    def good_mask(self, hot_masked: np.ndarray) -> np.ndarray:
        """uint8 mask, 1 = good. Hot pixels are masked only where ``hot_masked``."""
        bad = self.dead | (self.hot & hot_masked) | self.border | self.beamstop
        return (~bad).astype(np.uint8)


def sample_bad_pixels(
    rng: np.random.Generator, border: np.ndarray, beamstop: np.ndarray, response: DetectorResponse
) -> tuple[BadPixels, np.ndarray]:
    """Random dead and hot pixels on top of the fixed border and beamstop masks.

    Returns:
        ``(bad, hot_masked)``: the maps, and (P, ss, fs) bool telling which hot pixels the mask
        knows about (the others are left for the peak finder to ignore).
    """
    u = rng.random(border.shape, dtype=np.float32)
    dead = u < response.dead_fraction
    hot = (u >= response.dead_fraction) & (u < response.dead_fraction + response.hot_fraction)
    hot_masked = hot & (rng.random(border.shape, dtype=np.float32) >= response.hot_unmasked_fraction)
    return BadPixels(dead, hot, border, beamstop), hot_masked


def apply_bad_pixels(
    rng: np.random.Generator, adu: np.ndarray, bad: BadPixels, response: DetectorResponse
) -> np.ndarray:
    """Dead pixels read 0; hot pixels read a large, pixel-specific level (float32, in place)."""
    adu[bad.dead] = 0.0
    n_hot = int(bad.hot.sum())
    if n_hot:
        level = response.adu_per_photon * np.exp(rng.uniform(np.log(20.0), np.log(3000.0), size=n_hot))
        adu[bad.hot] = np.minimum(level, response.saturation_adu).astype(np.float32)
    return adu


def to_uint16(adu: np.ndarray) -> np.ndarray:
    """Round and clip float ADU to the uint16 range (negative read-noise excursions become 0)."""
    return np.clip(np.rint(adu), 0, UINT16_MAX).astype(np.uint16)
