"""Training crops of simulated frames, normalised exactly as the server normalises panels.

Each worker simulates whole frames (so instance-norm statistics are those of the full panel, as at
serving time: :func:`peaknet_serve.device.preprocess.sanitize` -> :func:`peaknet_serve.device.preprocess.normalize_images`
-> :func:`peaknet_serve.device.preprocess.pad_to_multiple`), then cuts ``crops_per_frame`` square crops, most of
them around a strong peak, the rest anywhere. Crops get a random dihedral flip.

Targets are uint8: 0 background, 1 peak pixel, :data:`IGNORE_INDEX` for weak-spot pixels and, with
``target_ring`` r > 0, for the background pixels within r pixels of a peak pixel
(:func:`ring_ignore`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import IterableDataset, get_worker_info

from peaknet_serve.device.preprocess import normalize_images, pad_to_multiple, sanitize
from peaknet_serve.sim.peaksim.coverage import Coverage
from peaknet_serve.sim.peaksim.frame import TARGET_IGNORE, SimulatedFrame, simulate_frame
from peaknet_serve.sim.peaksim.geometry import DetectorGeometry, get_geometry

IGNORE_INDEX = TARGET_IGNORE
DEFAULT_GEOMETRY_WEIGHTS = {"epix10k2m": 0.35, "jungfrau4m": 0.2, "cspad": 0.25, "rayonix": 0.2}
DEFAULT_TARGET_RING = 1
MAX_TARGET_RING = 3


def normalized_panel(panel: np.ndarray) -> np.ndarray:
    """One (H, W) panel -> (Hp, Wp) float32, the server's sanitise + instance norm + zero pad."""
    x, _ = sanitize(torch.from_numpy(np.ascontiguousarray(panel))[None])
    return pad_to_multiple(normalize_images(x))[0].numpy()


def frame_target(frame: SimulatedFrame) -> np.ndarray:
    """(P, H, W) uint8 training target of a frame: its :attr:`~SimulatedFrame.target` when it has
    one, else label with ignored pixels set to IGNORE_INDEX."""
    if frame.target is not None:
        return frame.target
    target = frame.label.copy()
    target[frame.ignore] = IGNORE_INDEX
    return target


def ring_ignore(target: np.ndarray, ring: int, max_pixels: int = 0) -> np.ndarray:
    """Target with the background pixels near a peak pixel ignored.

    Every pixel of value 0 within Chebyshev distance ``ring`` of a pixel of value 1 (a
    ``(2 ring + 1) x (2 ring + 1)`` square around it) becomes :data:`IGNORE_INDEX`; peak pixels and
    pixels already ignored are kept. With ``max_pixels`` K > 0 only the peaks (8-connected
    components of value 1 in one panel) of at most K pixels get the ring: broad spots keep their
    targets as simulated, so the network keeps their outlines and the gaps between them. The square is taken in the last two axes only, so it never
    reaches across panels, and it ends at a panel's edge (no wrap-around).

    PeakNet scores at stride 4 and upsamples bilinearly, so its peak probability cannot be high on
    one pixel and low on all eight neighbours: a one-pixel target with background around it pulls
    the pixel's probability below 0.5. Ignoring the ring leaves the network free to spread the
    score over the neighbours.

    Args:
        target: (..., H, W) uint8 target, e.g. (P, H, W) of a frame, values 0, 1 and IGNORE_INDEX.
        ring: distance in pixels, >= 0; 0 returns ``target`` itself.
        max_pixels: largest peak (pixels) that gets the ring; 0: every peak.

    Returns:
        (..., H, W) uint8, a new array unless ``ring`` is 0.
    """
    if ring < 0:
        raise ValueError(f"ring must be >= 0, got {ring}")
    if ring == 0:
        return target
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0, got {max_pixels}")
    peaks = target == 1
    if max_pixels:
        structure = np.zeros((3,) * target.ndim, dtype=bool)
        structure[(1,) * (target.ndim - 2)] = True  # 8-connected in the last two axes only
        labels, _ = ndimage.label(peaks, structure=structure)
        sizes = np.bincount(labels.ravel())
        small = sizes <= max_pixels
        small[0] = False
        peaks = small[labels]
    width = 2 * ring + 1
    size = (1,) * (target.ndim - 2) + (width, width)
    near = ndimage.maximum_filter(peaks.view(np.uint8), size=size, mode="constant", cval=0)
    out = target.copy()
    out[(near > 0) & (target == 0)] = IGNORE_INDEX
    return out


def _crop_origin(rng: np.random.Generator, size: int, crop: int, around: float | None) -> int:
    """Top/left of a crop along one axis of ``size`` pixels (0 when the axis is shorter)."""
    if size <= crop:
        return 0
    if around is None:
        return int(rng.integers(0, size - crop + 1))
    lo = max(0, int(around) - crop + 8)
    hi = min(size - crop, int(around) - 8)
    return int(rng.integers(lo, hi + 1)) if hi >= lo else int(np.clip(around - crop // 2, 0, size - crop))


def _cut(array: np.ndarray, top: int, left: int, crop: int, fill: float) -> np.ndarray:
    """``crop x crop`` window of a 2-D array, padded with ``fill`` where the array ends."""
    out = np.full((crop, crop), fill, dtype=array.dtype)
    piece = array[top : top + crop, left : left + crop]
    out[: piece.shape[0], : piece.shape[1]] = piece
    return out


def _dihedral(image: np.ndarray, target: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    if code & 1:
        image, target = image[::-1], target[::-1]
    if code & 2:
        image, target = image[:, ::-1], target[:, ::-1]
    if code & 4:
        image, target = image.T, target.T
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


def frame_crops(
    rng: np.random.Generator,
    frame: SimulatedFrame,
    crop: int,
    n_crops: int,
    peak_fraction: float = 0.7,
    uint16_probability: float = 0.3,
    target_ring: int = DEFAULT_TARGET_RING,
    ring_max_pixels: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(image (crop, crop) float32, target (crop, crop) uint8)`` crops of one frame.

    The frame's (P, H, W) target goes through :func:`ring_ignore` with ``target_ring`` (0: the
    target as simulated) and ``ring_max_pixels`` (0: every peak) before it is cut; the ring draws no random numbers, so the images of the
    crops do not depend on it.
    """
    raw = frame.uint16.astype(np.float32) if rng.random() < uint16_probability else frame.adu
    target = ring_ignore(frame_target(frame), target_ring, ring_max_pixels)
    strong = np.flatnonzero(frame.peaks.strong)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(n_crops):
        if len(strong) and rng.random() < peak_fraction:
            pick = strong[rng.integers(len(strong))]
            panel = int(frame.peaks.panel[pick])
            around = (float(frame.peaks.ss[pick]), float(frame.peaks.fs[pick]))
        else:
            panel, around = int(rng.integers(raw.shape[0])), (None, None)
        if panel not in cache:
            image = normalized_panel(raw[panel])
            padded_target = np.zeros(image.shape, dtype=np.uint8)
            padded_target[: target.shape[1], : target.shape[2]] = target[panel]
            cache[panel] = (image, padded_target)
        image, padded_target = cache[panel]
        top = _crop_origin(rng, image.shape[0], crop, around[0])
        left = _crop_origin(rng, image.shape[1], crop, around[1])
        yield _dihedral(
            _cut(image, top, left, crop, 0.0), _cut(padded_target, top, left, crop, 0), int(rng.integers(8))
        )


@dataclass
class SimulatedCrops(IterableDataset):
    """Endless stream of ``(image (1, crop, crop) float32, target (crop, crop) uint8)`` tensors.

    Deterministic: worker ``w`` draws from ``np.random.default_rng([seed, w])`` and a DataLoader
    interleaves workers in a fixed order, so the stream depends only on (seed, num_workers).

    ``artefact_probability`` (0..1) is passed to :func:`peaknet_serve.sim.peaksim.frame.simulate_frame`: the chance
    per frame of each artefact kind of :mod:`peaknet_serve.sim.peaksim.artefacts` (0, the default, gives the same
    stream as before artefacts existed). ``coverage`` (None: off) and ``target_snr`` (None: the
    truth's label) are passed to it too: the wider conditions of
    :mod:`peaknet_serve.sim.peaksim.coverage`, and the integrated-SNR bar of the peaks to learn.
    ``target_ring`` (pixels, 0..3) is passed to :func:`frame_crops`: the background within that
    distance of a peak pixel is ignored (:func:`ring_ignore`); 0 gives the targets as simulated.
    ``ring_max_pixels`` K > 0 rings only the peaks of at most K pixels.
    """

    seed: int
    crop: int = 256
    crops_per_frame: int = 8
    geometry_weights: dict[str, float] | None = None
    artefact_probability: float = 0.0
    coverage: Coverage | None = None
    target_snr: float | None = None
    target_ring: int = DEFAULT_TARGET_RING
    ring_max_pixels: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.target_ring <= MAX_TARGET_RING:
            raise ValueError(f"target_ring must be in [0, {MAX_TARGET_RING}], got {self.target_ring}")
        if self.ring_max_pixels < 0:
            raise ValueError(f"ring_max_pixels must be >= 0, got {self.ring_max_pixels}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, worker])
        weights = self.geometry_weights or DEFAULT_GEOMETRY_WEIGHTS
        names: Sequence[str] = sorted(weights)
        probs = np.array([weights[n] for n in names], dtype=np.float64)
        geometries: dict[str, DetectorGeometry] = {n: get_geometry(n) for n in names}
        while True:
            name = names[rng.choice(len(names), p=probs / probs.sum())]
            frame = simulate_frame(
                geometries[name],
                rng,
                artefact_probability=self.artefact_probability,
                coverage=self.coverage,
                target_snr=self.target_snr,
            )
            for image, target in frame_crops(
                rng,
                frame,
                self.crop,
                self.crops_per_frame,
                target_ring=self.target_ring,
                ring_max_pixels=self.ring_max_pixels,
            ):
                yield torch.from_numpy(image)[None], torch.from_numpy(target)
