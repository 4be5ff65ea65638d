"""Ground truth: which spots a peak finder must find, and which pixels belong to them.

Definitions (photon units; ``b`` = expected background photons in the spot's centre pixel,
``r`` = read noise in photons, ``N`` = expected spot photons, ``m`` = a pixel's share of the spot):

* integrated SNR: signal and noise inside the spot's 2-sigma ellipse (which holds
  ``1 - e^-2 = 86.5%`` of a 2-D Gaussian, area ``4 pi sigma_ss sigma_fs``)::

      snr_int = 0.865 N / sqrt(0.865 N + area (b + r^2))

* peak-pixel SNR: ``N m_max / sqrt(N m_max + b + r^2)`` for the brightest pixel.
* strong: ``snr_int >= 6`` and peak-pixel SNR ``>= 2``, centre pixel good (mask 1), the 2-sigma
  ellipse inside the panel (a spot cut by the panel edge has a biased centroid in any peak finder),
  and *resolved*: no other spot, strong or weak, in its blob (connected component of the
  segmentation mask together with the weak spots' ignore ellipses).
* merged: spots that pass the strong test but share a blob with another spot. A peak finder
  reports one peak per blob, so they cannot be found one by one (a segmentation marking every
  spot would miss them): they count as weak, and a detection at their blob's centroid counts
  neither way.
* weak: every other spot with ``snr_int >= 1.5``, and the merged ones (detections near them count
  neither way).
* segmentation mask: pixels of strong spots whose own SNR ``N m / sqrt(N m + b_pix + r^2) >= 1``,
  within 3 sigma (Mahalanobis) of the centre; the centre pixel is always included.
* ignore map: pixels within 2 sigma of a weak spot's centre that are not in the segmentation mask.

A liquid-jet streak (:mod:`peaknet_serve.sim.peaksim.artefacts`) is part of ``b``. With a beamstop support arm,
``N``, ``m`` and ``b`` are what the detector saw through the arm's shadow
(:func:`transmitted_fraction`), and a spot whose 2-sigma ellipse crosses the shadow's edge cannot
be strong (:func:`straddles`; like a spot cut by a panel edge). The beamstop disc keeps its
original handling (``N`` and ``b`` before its attenuation; its pixels are always masked, so spots
centred there are never strong), so that default frames stay what they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from peaknet_serve.sim.peaksim.spots import pixel_masses

# 8-connected within a panel, never across panels: what peaknet_serve.device.peaks.find_peaks uses.
_IN_PANEL_8_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_IN_PANEL_8_CONNECTED[1] = True

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
        photons: expected total photons (reaching the detector through a beamstop arm's shadow, when
            there is one; the beamstop disc's own attenuation is not applied).
        snr: integrated SNR.
        peak_snr: brightest-pixel SNR.
        strong: must be found.
        weak: not penalised either way (``strong`` and ``weak`` are disjoint); includes ``merged``.
        merged: bright enough to be strong but sharing a blob with another spot (see :func:`merged_spots`).
    """

    panel: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    photons: np.ndarray
    snr: np.ndarray
    peak_snr: np.ndarray
    strong: np.ndarray
    weak: np.ndarray
    merged: np.ndarray


def integrated_snr(
    photons: np.ndarray, sigma_ss: np.ndarray, sigma_fs: np.ndarray, background: np.ndarray, read_noise: float
) -> np.ndarray:
    """Integrated SNR of spots inside their 2-sigma ellipse (photon units, all (S,))."""
    area = np.maximum(4.0 * np.pi * sigma_ss * sigma_fs, 1.0)
    signal = ELLIPSE_2SIGMA_FRACTION * photons
    return signal / np.sqrt(signal + area * (background + read_noise**2) + 1e-12)


def peak_pixel_snr(
    photons: np.ndarray,
    ss: np.ndarray,
    fs: np.ndarray,
    sigma_ss: np.ndarray,
    sigma_fs: np.ndarray,
    background: np.ndarray,
    read_noise: float,
) -> np.ndarray:
    """SNR of each spot's brightest pixel (the one holding its centre)."""
    _, m_ss = pixel_masses(ss, sigma_ss, 0)
    _, m_fs = pixel_masses(fs, sigma_fs, 0)
    signal = photons * m_ss[:, 0] * m_fs[:, 0]
    return signal / np.sqrt(signal + background + read_noise**2 + 1e-12)


def inside_panel(
    ss: np.ndarray,
    fs: np.ndarray,
    sigma_ss: np.ndarray,
    sigma_fs: np.ndarray,
    n_ss: int,
    n_fs: int,
    sigmas: float = 2.0,
) -> np.ndarray:
    """(S,) bool: the spot's ``sigmas``-sigma box lies on the panel (pixel centres 0 .. n-1)."""
    return (
        (ss - sigmas * sigma_ss >= -0.5)
        & (ss + sigmas * sigma_ss <= n_ss - 0.5)
        & (fs - sigmas * sigma_fs >= -0.5)
        & (fs + sigmas * sigma_fs <= n_fs - 0.5)
    )


def transmitted_fraction(mass: np.ndarray, seen_mass: np.ndarray, spot_id: np.ndarray, n_spots: int) -> np.ndarray:
    """(S,) float64 share of each spot's on-panel photons that reaches the detector.

    Args:
        mass: (K,) float64 footprint masses (see :func:`peaknet_serve.sim.peaksim.spots.spot_footprints`).
        seen_mass: (K,) the same times each pixel's transmission (0..1).
        spot_id: (K,) int64 spot of each footprint pixel.
    """
    total = np.bincount(spot_id, weights=mass, minlength=n_spots)
    seen = np.bincount(spot_id, weights=seen_mass, minlength=n_spots)
    return np.where(total > 0, seen / np.where(total > 0, total, 1.0), 1.0)


def straddles(
    shadow: np.ndarray,
    flat: np.ndarray,
    spot_id: np.ndarray,
    ss: np.ndarray,
    fs: np.ndarray,
    sigma_ss: np.ndarray,
    sigma_fs: np.ndarray,
    n_spots: int,
    sigmas: float = 2.0,
) -> np.ndarray:
    """(S,) bool: the spot's ``sigmas``-sigma ellipse holds pixels both inside and outside ``shadow``.

    Args:
        shadow: (P, ss, fs) bool.
        flat, spot_id: (K,) spot footprints (see :func:`peaknet_serve.sim.peaksim.spots.spot_footprints`).
        ss, fs, sigma_ss, sigma_fs: (S,) float64.
    """
    _, n_ss, n_fs = shadow.shape
    inside = _mahalanobis(flat, spot_id, ss, fs, sigma_ss, sigma_fs, n_ss, n_fs) <= sigmas
    dark = shadow.ravel()[flat] & inside
    n_inside = np.bincount(spot_id[inside], minlength=n_spots)
    n_dark = np.bincount(spot_id[dark], minlength=n_spots)
    return (n_dark > 0) & (n_dark < n_inside)


def classify_peaks(
    photons: np.ndarray,
    snr: np.ndarray,
    peak_snr: np.ndarray,
    centre_good: np.ndarray,
    strong_snr: float = STRONG_SNR,
    strong_peak_snr: float = STRONG_PEAK_PIXEL_SNR,
) -> tuple[np.ndarray, np.ndarray]:
    """``(strong, weak)`` bool (S,) from the SNRs and ``centre_good``: the centre pixel is good and the
    spot lies on its panel (see :func:`inside_panel`). ``strong_snr`` and ``strong_peak_snr`` are the
    integrated and peak-pixel SNR bars of strong spots (:data:`STRONG_SNR` and
    :data:`STRONG_PEAK_PIXEL_SNR` for the truth; training targets may set them lower)."""
    strong = (snr >= strong_snr) & (peak_snr >= strong_peak_snr) & centre_good
    weak = ~strong & (snr >= WEAK_SNR)
    return strong, weak


def _mahalanobis(
    flat: np.ndarray,
    spot_id: np.ndarray,
    ss: np.ndarray,
    fs: np.ndarray,
    sigma_ss: np.ndarray,
    sigma_fs: np.ndarray,
    n_ss: int,
    n_fs: int,
) -> np.ndarray:
    pix_ss = (flat // n_fs) % n_ss
    pix_fs = flat % n_fs
    return np.sqrt(
        ((pix_ss - ss[spot_id]) / sigma_ss[spot_id]) ** 2 + ((pix_fs - fs[spot_id]) / sigma_fs[spot_id]) ** 2
    )


def segmentation_maps(
    frame_shape: tuple[int, int, int],
    flat: np.ndarray,
    mass: np.ndarray,
    spot_id: np.ndarray,
    photons: np.ndarray,
    panel: np.ndarray,
    ss: np.ndarray,
    fs: np.ndarray,
    sigma_ss: np.ndarray,
    sigma_fs: np.ndarray,
    strong: np.ndarray,
    weak: np.ndarray,
    background: np.ndarray,
    read_noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation mask of strong spots and ignore map of weak ones.

    Args:
        frame_shape: (P, ss, fs).
        flat, mass, spot_id: spot footprints (see :func:`peaknet_serve.sim.peaksim.spots.spot_footprints`).
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
    pixel_snr = signal / np.sqrt(signal + background.ravel()[flat] + read_noise**2 + 1e-12)
    in_strong = strong[spot_id]
    label[flat[in_strong & (pixel_snr >= MASK_PIXEL_SNR) & (distance <= MASK_MAX_MAHALANOBIS)]] = 1
    centres = (panel * n_ss + np.rint(ss).astype(np.int64)) * n_fs + np.rint(fs).astype(np.int64)
    label[centres[strong]] = 1
    ignore[flat[weak[spot_id] & (distance <= IGNORE_MAX_MAHALANOBIS)]] = True
    ignore[centres[weak]] = True
    ignore &= label == 0
    return label.reshape(frame_shape), ignore.reshape(frame_shape)


def _blob_centroids(components: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(K, 3) float64 unweighted centroids (panel, ss, fs) of the components numbered ``ids``."""
    pixels = np.flatnonzero(np.isin(components, ids))
    if pixels.size == 0:
        return np.zeros((0, 3))
    _, which = np.unique(components.ravel()[pixels], return_inverse=True)
    size = np.bincount(which)
    coords = np.unravel_index(pixels, components.shape)
    return np.stack([np.bincount(which, weights=c) / size for c in coords], axis=1)


def _shared_components(
    mask: np.ndarray, panel: np.ndarray, ss: np.ndarray, fs: np.ndarray, counted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components of ``mask`` holding the centres of two or more ``counted`` spots.

    Returns:
        ``(components, centre_component, shared_ids)``: the labelled (P, ss, fs) int array, the
        component of every spot's centre pixel (S,) (0 = background), and the shared ids.
    """
    components, _ = ndimage.label(mask, structure=_IN_PANEL_8_CONNECTED)
    _, n_ss, n_fs = mask.shape
    centre = components[
        panel, np.clip(np.rint(ss).astype(np.int64), 0, n_ss - 1), np.clip(np.rint(fs).astype(np.int64), 0, n_fs - 1)
    ]
    ids, counts = np.unique(centre[counted], return_counts=True)
    return components, centre, ids[(counts > 1) & (ids > 0)]


def merged_spots(
    label: np.ndarray,
    ignore: np.ndarray,
    panel: np.ndarray,
    ss: np.ndarray,
    fs: np.ndarray,
    strong: np.ndarray,
    weak: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strong spots that share a blob with another spot, so no peak finder can report them alone.

    A blob is a connected component of the spot mask ``label | ignore``: the strong spots'
    segmentation pixels together with the weak spots' 2-sigma ellipses, where training leaves the
    model free to answer either way. A strong spot whose blob also holds the centre of another
    spot, strong or weak, is merged: a network that marks both spots (a correct answer) reports
    one peak at the blob's centroid, which may lie more than the match radius from either centre.

    Args:
        label: (P, ss, fs) uint8 segmentation mask of strong spots; components are 8-connected
            within a panel, as :func:`peaknet_serve.device.peaks.find_peaks` forms them.
        ignore: (P, ss, fs) bool pixels of weak spots (the centre pixel of every weak spot is in
            ``label | ignore``).
        panel, ss, fs, strong, weak: per spot (S,); every strong spot's centre pixel is labelled.

    Returns:
        ``(merged, blobs, excused_region)``: (S,) bool; (K, 3) float64 rows (panel, ss, fs): the unweighted
        centroids of every blob that is not one resolved strong spot's (blobs of several spots,
        and blobs of weak spots only, whose centroid moves away from the centre when touching weak
        ellipses join or a panel edge cuts one), and of the components of ``label`` alone that
        hold two or more strong spots (what a network marking only the strong spots reports);
        and the (P, ss, fs) bool pixel bounding boxes of those blobs: a detection in them is a
        detection on weak or merged spots.
    """
    blobs, centre, shared = _shared_components(label.astype(bool) | ignore, panel, ss, fs, strong | weak)
    merged = strong & np.isin(centre, shared)
    excused = np.setdiff1d(np.arange(1, blobs.max() + 1), centre[strong & ~merged])
    strong_only, _, strong_shared = _shared_components(label.astype(bool), panel, ss, fs, strong)
    centroids = np.concatenate([_blob_centroids(blobs, excused), _blob_centroids(strong_only, strong_shared)])
    return merged, centroids, _bounding_boxes(blobs, excused)


def _bounding_boxes(components: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(P, ss, fs) bool: the pixel bounding boxes (within its panel) of each component in ``ids``.

    A finder's peak on a component lies at a weighted mean of its pixels (unweighted, or by
    background-subtracted intensity), which can fall off the component when it is not convex, but
    never outside its bounding box: its nearest pixel is always in this region."""
    region = np.zeros(components.shape, dtype=bool)
    wanted = np.zeros(int(components.max()) + 1, dtype=bool)
    wanted[ids] = True
    for label, box in enumerate(ndimage.find_objects(components), start=1):
        if box is not None and wanted[label]:
            region[box] = True
    return region
