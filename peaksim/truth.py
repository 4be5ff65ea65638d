"""Ground truth: which spots a peak finder must find, and which pixels belong to them.

Definitions (photon units; ``b`` = expected background photons in the spot's centre pixel,
``r`` = read noise in photons, ``N`` = expected spot photons, ``m`` = a pixel's share of the spot):

* integrated SNR: signal and noise inside the spot's 2-sigma ellipse (which holds
  ``1 - e^-2 = 86.5%`` of a 2-D Gaussian, area ``4 pi sigma_ss sigma_fs``)::

      snr_int = 0.865 N / sqrt(0.865 N + area (b + r^2))

* peak-pixel SNR: ``N m_max / sqrt(N m_max + b + r^2)`` for the brightest pixel.
* strong: ``snr_int >= 6`` and peak-pixel SNR ``>= 2``, centre pixel good (mask 1).
* weak: every other spot with ``snr_int >= 1.5`` (detections near them count neither way).
* segmentation mask: pixels of strong spots whose own SNR ``N m / sqrt(N m + b_pix + r^2) >= 1``,
  within 3 sigma (Mahalanobis) of the centre; the centre pixel is always included.
* ignore map: pixels within 2 sigma of a weak spot's centre that are not in the segmentation mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peaksim.spots import pixel_masses

ELLIPSE_2SIGMA_FRACTION = 1.0 - np.exp(-2.0)
STRONG_SNR = 6.0
STRONG_PEAK_PIXEL_SNR = 2.0
WEAK_SNR = 1.5
MASK_PIXEL_SNR = 1.0
MASK_MAX_MAHALANOBIS = 3.0
IGNORE_MAX_MAHALANOBIS = 2.0


@dataclass(frozen=True)
class PeakTruth:
    """Per-spot truth, each (S,).

    Attributes:
        panel, ss, fs: position (pixel centres at integers).
        photons: expected total photons.
        snr: integrated SNR.
        peak_snr: brightest-pixel SNR.
        strong: must be found.
        weak: not penalised either way (``strong`` and ``weak`` are disjoint).
    """

    panel: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    photons: np.ndarray
    snr: np.ndarray
    peak_snr: np.ndarray
    strong: np.ndarray
    weak: np.ndarray


def integrated_snr(photons: np.ndarray, sigma_ss: np.ndarray, sigma_fs: np.ndarray,
                   background: np.ndarray, read_noise: float) -> np.ndarray:
    """Integrated SNR of spots inside their 2-sigma ellipse (photon units, all (S,))."""
    area = np.maximum(4.0 * np.pi * sigma_ss * sigma_fs, 1.0)
    signal = ELLIPSE_2SIGMA_FRACTION * photons
    return signal / np.sqrt(signal + area * (background + read_noise ** 2) + 1e-12)


def peak_pixel_snr(photons: np.ndarray, ss: np.ndarray, fs: np.ndarray, sigma_ss: np.ndarray,
                   sigma_fs: np.ndarray, background: np.ndarray, read_noise: float) -> np.ndarray:
    """SNR of each spot's brightest pixel (the one holding its centre)."""
    _, m_ss = pixel_masses(ss, sigma_ss, 0)
    _, m_fs = pixel_masses(fs, sigma_fs, 0)
    signal = photons * m_ss[:, 0] * m_fs[:, 0]
    return signal / np.sqrt(signal + background + read_noise ** 2 + 1e-12)


def classify_peaks(photons: np.ndarray, snr: np.ndarray, peak_snr: np.ndarray,
                   centre_good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(strong, weak)`` bool (S,) from the SNRs and whether the centre pixel is good."""
    strong = (snr >= STRONG_SNR) & (peak_snr >= STRONG_PEAK_PIXEL_SNR) & centre_good
    weak = ~strong & (snr >= WEAK_SNR)
    return strong, weak


def _mahalanobis(flat: np.ndarray, spot_id: np.ndarray, ss: np.ndarray, fs: np.ndarray,
                 sigma_ss: np.ndarray, sigma_fs: np.ndarray, n_ss: int, n_fs: int) -> np.ndarray:
    pix_ss = (flat // n_fs) % n_ss
    pix_fs = flat % n_fs
    return np.sqrt(((pix_ss - ss[spot_id]) / sigma_ss[spot_id]) ** 2
                   + ((pix_fs - fs[spot_id]) / sigma_fs[spot_id]) ** 2)


def segmentation_maps(frame_shape: tuple[int, int, int], flat: np.ndarray, mass: np.ndarray,
                      spot_id: np.ndarray, photons: np.ndarray, panel: np.ndarray, ss: np.ndarray,
                      fs: np.ndarray, sigma_ss: np.ndarray, sigma_fs: np.ndarray, strong: np.ndarray,
                      weak: np.ndarray, background: np.ndarray, read_noise: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation mask of strong spots and ignore map of weak ones.

    Args:
        frame_shape: (P, ss, fs).
        flat, mass, spot_id: spot footprints (see :func:`peaksim.spots.spot_footprints`).
        photons, panel, ss, fs, sigma_ss, sigma_fs, strong, weak: per spot (S,).
        background: (P, ss, fs) expected background photons.
        read_noise: photons.

    Returns:
        ``(label, ignore)``: (P, ss, fs) uint8 label (1 = peak pixel) and bool ignore map.
    """
    _, n_ss, n_fs = frame_shape
    label = np.zeros(int(np.prod(frame_shape)), dtype=np.uint8)
    ignore = np.zeros(label.shape, dtype=bool)
    distance = _mahalanobis(flat, spot_id, ss, fs, sigma_ss, sigma_fs, n_ss, n_fs)
    signal = photons[spot_id] * mass
    pixel_snr = signal / np.sqrt(signal + background.ravel()[flat] + read_noise ** 2 + 1e-12)
    in_strong = strong[spot_id]
    label[flat[in_strong & (pixel_snr >= MASK_PIXEL_SNR) & (distance <= MASK_MAX_MAHALANOBIS)]] = 1
    centres = (panel * n_ss + np.rint(ss).astype(np.int64)) * n_fs + np.rint(fs).astype(np.int64)
    label[centres[strong]] = 1
    ignore[flat[weak[spot_id] & (distance <= IGNORE_MAX_MAHALANOBIS)]] = True
    ignore[centres[weak]] = True
    ignore &= label == 0
    return label.reshape(frame_shape), ignore.reshape(frame_shape)
