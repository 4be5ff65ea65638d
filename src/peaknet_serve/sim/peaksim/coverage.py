"""Wider frame conditions for training: sharp (sub-pixel) spots, photon counting and noisy
integrating detectors, very low and very high background, saturation, gain switching, and
bright point spots on a nearly empty frame.

Off by default: :func:`peaknet_serve.sim.peaksim.frame.sample_frame_params` draws these only when
given a :class:`Coverage` (after everything else, so frames without one are exactly the frames
of the default simulator). Each condition is drawn per frame with its own probability:

* **sharp spots**: the spot width is drawn log-uniform in :attr:`Coverage.sharp_sigma` (0.15 to
  0.5 px: a centred 0.15 px spot puts 99.8% of its photons into one pixel), as crystals of a few hundred
  nm give on a pixel detector, instead of 0.5-2.5 px;
* **read noise**: the read noise is scaled log-uniformly over :attr:`Coverage.read_noise_scale`
  (0.2x: photon counting, the gain far above the noise; 5x: an integrating detector whose noise
  is a sizeable fraction of a photon);
* **background**: every background term is scaled log-uniformly over
  :attr:`Coverage.background_scale` (an empty, dry frame to a thick jet);
* **saturation**: the pixels clip at a level drawn log-uniform in
  :attr:`Coverage.saturation_photons` photons (bright spots flat-topped);
* **gain switching** (:class:`~peaknet_serve.sim.peaksim.detector.GainSwitch`): pixels above a switch point (photons) are read in a
  lower gain stage whose noise is ``ratio`` times the read noise (ePix10k / Jungfrau
  auto-ranging; the calibrated value stays in the same ADU scale);
* **point spots**: crystals of 150-400 nm on a clean, photon-counting setup: the spot width is
  drawn log-uniform in :attr:`Coverage.point_sigma` (0.08 to 0.3 px: by its sub-pixel position a
  spot's brightest pixel holds 49-99% of it and its pixelated second moment is 0.06-0.43 px,
  10th-90th percentiles), the crystals' brightness is multiplied log-uniformly over
  :attr:`Coverage.point_brightness`, the background scaled over
  :attr:`Coverage.point_background_scale` (0.005x-0.3x, on top of the background condition) and
  the hot-pixel rate by :attr:`Coverage.point_hot_scale`. The network sees no mask, so an
  unmasked hot pixel and a one-pixel Bragg spot are the same pixels; frames of point spots
  keep few hot pixels, so that a single bright pixel among them is taught as the spot it most
  likely is. Applied after the other conditions (its width replaces the sharp-spot width); its
  numbers are drawn only when :attr:`Coverage.point_probability` is above 0, so a coverage with
  ``point_probability=0`` draws exactly what the other conditions alone draw.

All randomness of the conditions is in the parameters; in the frame, only the gain stage's extra
read noise is drawn (:func:`~peaknet_serve.sim.peaksim.detector.photons_to_adu`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from peaknet_serve.sim.peaksim.detector import GainSwitch

if TYPE_CHECKING:
    from peaknet_serve.sim.peaksim.background import BackgroundParams
    from peaknet_serve.sim.peaksim.frame import FrameParams


@dataclass(frozen=True)
class Coverage:
    """Per-frame probabilities and ranges of the wider conditions (see the module docstring)."""

    sharp_probability: float = 0.35
    sharp_sigma: tuple[float, float] = (0.15, 0.5)
    read_noise_probability: float = 0.5
    read_noise_scale: tuple[float, float] = (0.2, 5.0)
    background_probability: float = 0.5
    background_scale: tuple[float, float] = (0.03, 6.0)
    saturation_probability: float = 0.2
    saturation_photons: tuple[float, float] = (150.0, 3000.0)
    gain_switch_probability: float = 0.2
    gain_switch_photons: tuple[float, float] = (80.0, 800.0)
    gain_switch_ratio: tuple[float, float] = (3.0, 30.0)
    min_spot_sigma: float = 0.1
    point_probability: float = 0.3
    point_sigma: tuple[float, float] = (0.08, 0.3)
    point_brightness: tuple[float, float] = (1.0, 10.0)
    point_background_scale: tuple[float, float] = (0.005, 0.3)
    point_hot_scale: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "sharp_probability",
            "read_noise_probability",
            "background_probability",
            "saturation_probability",
            "gain_switch_probability",
            "point_probability",
            "point_hot_scale",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _scaled_background(b: BackgroundParams, scale: float) -> BackgroundParams:
    """``b`` with its water, air and constant terms times ``scale``."""
    return replace(b, water=b.water * scale, air=b.air * scale, constant=b.constant * scale)


def apply_coverage(rng: np.random.Generator, params: FrameParams, coverage: Coverage) -> FrameParams:
    """``params`` with the conditions of ``coverage`` drawn from ``rng`` (always the same number of
    draws, whichever conditions apply)."""
    draws = rng.random(5)
    sharp_sigma = _log_uniform(rng, coverage.sharp_sigma)
    noise_scale = _log_uniform(rng, coverage.read_noise_scale)
    background_scale = _log_uniform(rng, coverage.background_scale)
    saturation_photons = _log_uniform(rng, coverage.saturation_photons)
    switch = GainSwitch(_log_uniform(rng, coverage.gain_switch_photons), _log_uniform(rng, coverage.gain_switch_ratio))

    changes: dict = {"min_spot_sigma": coverage.min_spot_sigma}
    if draws[0] < coverage.sharp_probability:
        changes["spot_sigma"] = sharp_sigma
    response = params.response
    if draws[1] < coverage.read_noise_probability:
        response = replace(response, read_noise_adu=response.read_noise_adu * noise_scale)
    if draws[3] < coverage.saturation_probability:
        response = replace(
            response, saturation_adu=min(response.saturation_adu, saturation_photons * response.adu_per_photon)
        )
    if draws[4] < coverage.gain_switch_probability:
        response = replace(response, gain_switch=switch)
    changes["response"] = response
    if draws[2] < coverage.background_probability:
        changes["background"] = _scaled_background(params.background, background_scale)
    params = replace(params, **changes)
    if coverage.point_probability > 0.0:
        params = _point_spots(rng, params, coverage)
    return params


def _point_spots(rng: np.random.Generator, params: FrameParams, coverage: Coverage) -> FrameParams:
    """``params`` with the point-spot condition drawn from ``rng`` (always four draws)."""
    applies = rng.random() < coverage.point_probability
    sigma = _log_uniform(rng, coverage.point_sigma)
    brightness = _log_uniform(rng, coverage.point_brightness)
    background_scale = _log_uniform(rng, coverage.point_background_scale)
    if not applies:
        return params
    return replace(
        params,
        spot_sigma=sigma,
        min_spot_sigma=min(params.min_spot_sigma, coverage.point_sigma[0]),
        crystals=tuple(
            replace(c, photons_per_reflection=c.photons_per_reflection * brightness) for c in params.crystals
        ),
        background=_scaled_background(params.background, background_scale),
        response=replace(params.response, hot_fraction=params.response.hot_fraction * coverage.point_hot_scale),
    )
