"""Segmentation output -> Bragg-peak lists, on the model's device, in pure torch.

Pipeline (all tensors stay on the input device until :meth:`PeakTable.to_host`):

1. :func:`peak_mask` / :func:`peak_mask_from_score`: 2-class logits (or their difference) -> mask.
2. :func:`bounded_components`: 8-connected component labelling, data-parallel (no SciPy/CuPy),
   with its work bounded (:class:`LabelLimits`).
3. :func:`find_peaks`: per component the position (:func:`weighted_centroids`: the centroid of
   the pixel values above the local background of :func:`local_background`, as peakfinder8
   reports it), pixel count and integrated intensity (raw, and less the local background), as a
   :class:`PeakTable` sorted by ``(image_index, ss, fs)``.
4. :func:`peaks_to_frames`: one device->host copy, then python lists per detector frame.

Coordinates are pixel-index coordinates of the panel: the centre of pixel ``[ss, fs]`` is at
``(ss, fs)`` (the convention of ``scipy.ndimage.center_of_mass`` and of Cheetah/psocake CXI peak
lists). Components, sizes and ``intensity_raw`` equal ``scipy.ndimage.label(mask,
structure=np.ones((3, 3)))`` followed by ``sum`` of ones and ``sum`` of the image, positions
``center_of_mass`` of the background-subtracted image clipped at 0 (see
``tests/device/test_peaks.py``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Components",
    "HostPeaks",
    "LabelLimits",
    "PeakTable",
    "bounded_components",
    "find_peaks",
    "weighted_centroids",
    "local_background",
    "peak_mask",
    "peak_mask_from_score",
    "peaks_to_frames",
]


# --------------------------------------------------------------------------------------------
# Logits -> mask
# --------------------------------------------------------------------------------------------


def _score_threshold(threshold: float) -> float:
    """Smallest float32 ``t`` with ``sigmoid(s) >= threshold  <=>  s >= t`` for every float32 ``s``.

    ``logit(threshold)`` is rounded *up* to float32 so that the float32 comparison is exact.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"probability threshold must lie in (0, 1), got {threshold!r}")
    exact = math.log(threshold) - math.log1p(-threshold)
    t32 = torch.tensor(exact, dtype=torch.float32)
    if t32.item() < exact:
        t32 = torch.nextafter(t32, torch.tensor(math.inf, dtype=torch.float32))
    return t32.item()


def peak_mask_from_score(score: Tensor, threshold: float | None = None) -> Tensor:
    """Peak mask from the class-1-minus-class-0 score ``logit1 - logit0``.

    Args:
        score: ``(B, 1, H, W)`` or ``(B, H, W)``, any float dtype.
        threshold: ``None`` -> ``score > 0`` (argmax of the two classes, ties go to class 0).
            ``p`` in (0, 1) -> ``sigmoid(score) >= p``, evaluated exactly as ``float32(score) >= t``
            with ``t`` = ``logit(p)`` rounded up to float32. ``sigmoid(l1 - l0)`` is the softmax
            probability of class 1.

    Returns:
        bool ``(B, H, W)``. NaN scores are background.
    """
    if score.dim() == 4:
        if score.shape[1] != 1:
            raise ValueError(f"score must have one channel, got shape {tuple(score.shape)}")
        score = score[:, 0]
    if score.dim() != 3:
        raise ValueError(f"score must be (B, 1, H, W) or (B, H, W), got {tuple(score.shape)}")
    if threshold is None:
        return score > 0
    return score.float() >= _score_threshold(threshold)


def peak_mask(logits: Tensor, threshold: float | None = None) -> Tensor:
    """Peak mask from 2-class segmentation logits.

    Args:
        logits: ``(B, 2, H, W)``, any float dtype (bf16/fp16/fp32); channel 1 is "peak".
        threshold: ``None`` -> argmax (class 1 wins only when strictly larger, as ``torch.argmax``
            resolves ties to class 0). ``p`` in (0, 1) -> softmax probability of class 1 ``>= p``,
            computed in float32 as ``sigmoid(float32(l1) - float32(l0)) >= p``.

    Returns:
        bool ``(B, H, W)``; identical to :func:`peak_mask_from_score` on
        ``logits[:, 1].float() - logits[:, 0].float()``. NaN logits are background.
    """
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must be (B, 2, H, W), got {tuple(logits.shape)}")
    if threshold is None:
        return logits[:, 1] > logits[:, 0]
    return peak_mask_from_score(logits[:, 1].float() - logits[:, 0].float(), threshold)


# --------------------------------------------------------------------------------------------
# Connected components
# --------------------------------------------------------------------------------------------


_NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _neighbour_table(pixel: Tensor, mask: Tensor) -> Tensor:
    """For each foreground pixel, the positions in ``pixel`` of its 8 neighbours.

    Args:
        pixel: int64 ``(K,)`` sorted global linear indices (into ``mask.reshape(-1)``) of the
            foreground pixels.
        mask: bool ``(B, H, W)``.

    Returns:
        int64 ``(K, 8)``; a missing neighbour (outside the image or background) is ``K``.
    """
    _, height, width = mask.shape
    count = pixel.numel()
    within = pixel % (height * width)
    row, col = within // width, within % width
    offsets = torch.tensor(_NEIGHBOUR_OFFSETS, dtype=torch.int64, device=pixel.device)
    n_row = row[:, None] + offsets[:, 0]
    n_col = col[:, None] + offsets[:, 1]
    inside = (n_row >= 0) & (n_row < height) & (n_col >= 0) & (n_col < width)
    target = pixel[:, None] + offsets[:, 0] * width + offsets[:, 1]
    position = torch.searchsorted(pixel, target).clamp_(max=max(count - 1, 0))
    found = inside & (pixel[position] == target)
    return torch.where(found, position, count)


def _propagate_step(parent: Tensor, neighbours: Tensor, jumps: int) -> None:
    """One in-place iteration on ``parent`` ``(K + 1,)`` (see :func:`_component_roots`)."""
    body = parent[:-1]
    smallest = torch.minimum(body, parent[neighbours].amin(dim=1))
    old = body.clone()
    body.copy_(smallest)
    # Hook: the pixel the old pointer named takes the smaller value too, so a whole tree moves
    # at once instead of waiting for propagation to walk to its root.
    parent.scatter_reduce_(0, old, smallest, reduce="amin")
    for _ in range(jumps):
        body.copy_(parent[body])


def _component_roots(
    mask: Tensor, check_every: int = 4, jumps: int = 2, max_iterations: int | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """8-connected components of a bool ``(B, H, W)`` mask as a forest over its foreground pixels.

    The foreground pixels, in raster order over the whole batch, are nodes ``0 .. K-1``; edges join
    8-neighbours of the same image. Every node starts as its own parent; each iteration
    (a) takes the minimum parent over itself and its neighbours, (b) *hooks*: the node its old
    parent named takes that minimum too (``scatter_reduce amin``), (c) pointer-jumps
    ``parent = parent[parent]`` ``jumps`` times. A parent is always a node of the same component
    and never larger than the node itself, so each component ends pointing at its smallest node:
    its first pixel in raster order, the order ``scipy.ndimage.label`` numbers components in.

    Bounded: parents never exceed what plain min-propagation gives after the same number of
    iterations, and plain propagation is done after (geodesic diameter + 1) <= K iterations, so
    ``K + check_every`` iterations always suffice; hooking and jumping converge in
    O(log diameter) iterations in practice, snakes and spirals included. Convergence (nothing
    changed) is checked with one host sync every ``check_every`` iterations. Components are
    independent: one whose nodes did not change in an iteration is final.

    Args:
        max_iterations: stop after this many iterations even if some components are not final
            (``None``: run to convergence).

    Returns:
        ``pixel``: int64 ``(K,)`` global linear indices of the foreground pixels (sorted);
        ``root``: int64 ``(K,)`` node index of each pixel's component root (``root[root] == root``
        where converged); ``unsettled``: ``None`` when every component converged, else bool
        ``(K,)``, true for the nodes that still changed in the last iteration (each component
        that is not final has at least one).
    """
    if check_every < 1 or jumps < 0:
        raise ValueError("check_every must be >= 1 and jumps >= 0")
    if max_iterations is not None and max_iterations < 1:
        raise ValueError("max_iterations must be >= 1")
    pixel = mask.reshape(-1).nonzero().squeeze(1)
    count = pixel.numel()
    neighbours = _neighbour_table(pixel, mask)
    # Slot K is a sink for missing neighbours: it holds K, larger than every real node.
    parent = torch.arange(count + 1, dtype=torch.int64, device=mask.device)
    limit = count + check_every if max_iterations is None else max_iterations
    iteration = 0
    while True:
        steps = min(check_every, limit - iteration)
        for _ in range(steps - 1):
            _propagate_step(parent, neighbours, jumps)
        before = parent.clone()
        _propagate_step(parent, neighbours, jumps)
        iteration += steps
        if torch.equal(before, parent):
            return pixel, parent[:-1], None
        if iteration >= limit:
            if max_iterations is None:  # unreachable by the bound above; guards against bugs
                raise RuntimeError(f"labelling did not converge in {iteration} iterations")
            return pixel, parent[:-1], before[:-1] != parent[:-1]


@dataclass(frozen=True)
class LabelLimits:
    """Bounds on the labelling work of one batch, so that no mask costs much more than a typical one.

    A panel whose mask marks most of its pixels (a model without trained weights, a saturated or
    washed-out panel) would otherwise cost labelling time in proportion to its pixel count.

    Attributes:
        max_panel_fraction: a panel whose mask marks more than this fraction of its pixels is
            capped before labelling: it is not labelled and reports no peaks. ``None``: no cap.
        max_iterations: labelling iterations per batch; panels with a component that is still
            changing after them are capped (they report no peaks). ``None``: until converged.
    """

    max_panel_fraction: float | None = 0.25
    max_iterations: int | None = 64

    def __post_init__(self) -> None:
        if self.max_panel_fraction is not None and not 0.0 <= self.max_panel_fraction <= 1.0:
            raise ValueError(f"max_panel_fraction must lie in [0, 1], got {self.max_panel_fraction!r}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations!r}")


UNBOUNDED = LabelLimits(max_panel_fraction=None, max_iterations=None)


@dataclass(frozen=True)
class Components:
    """8-connected components of a ``(B, H, W)`` mask (see :func:`bounded_components`).

    Attributes:
        shape: ``(B, H, W)`` of the labelled mask.
        pixel: int64 ``(K,)`` sorted linear indices (into the flattened batch) of the labelled
            foreground pixels.
        root: int64 ``(K,)`` position in ``pixel`` of each pixel's component root (its first
            pixel in raster order); final for every panel that is not capped.
        capped: bool ``(B,)``, panels left out by :class:`LabelLimits`; their peaks are not
            reported.
    """

    shape: tuple[int, int, int]
    pixel: Tensor
    root: Tensor
    capped: Tensor

    def labels(self) -> Tensor:
        """int64 ``(B, H, W)`` label image: 0 for background and capped panels, else 1 + the linear
        index (into the flattened batch) of the component's first pixel in raster order, the order
        ``scipy.ndimage.label`` numbers components in. Unique across the batch, not consecutive."""
        labels = torch.zeros(math.prod(self.shape), dtype=torch.int64, device=self.pixel.device)
        labels[self.pixel] = self.pixel[self.root] + 1
        labels = labels.view(self.shape)
        labels[self.capped] = 0
        return labels


def bounded_components(
    mask: Tensor, limits: LabelLimits = UNBOUNDED, check_every: int = 4, jumps: int = 2
) -> Components:
    """8-connected components of each panel of ``mask``, with the labelling work bounded by ``limits``.

    Panels over ``limits.max_panel_fraction`` are dropped from the mask before labelling (one
    reduction over the mask, no host sync), so an all-ones mask costs less than a typical one.
    Panels whose labelling has not converged after ``limits.max_iterations`` iterations are
    capped too. Every other panel is labelled exactly (:meth:`Components.labels`).

    Args:
        mask: bool ``(B, H, W)``.

    Returns:
        :class:`Components`; ``capped`` is on ``mask``'s device.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got {tuple(mask.shape)}")
    mask = mask.bool()
    batch, height, width = mask.shape
    if limits.max_panel_fraction is None:
        capped = torch.zeros(batch, dtype=torch.bool, device=mask.device)
    else:
        capped = mask.sum(dim=(1, 2)) > limits.max_panel_fraction * height * width
        mask = mask & ~capped[:, None, None]
    pixel, root, unsettled = _component_roots(mask, check_every, jumps, limits.max_iterations)
    if unsettled is not None:
        capped = capped.clone()
        capped[torch.div(pixel[unsettled], height * width, rounding_mode="floor")] = True
    return Components((batch, height, width), pixel, root, capped)


# --------------------------------------------------------------------------------------------
# Peak table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeakTable:
    """Peaks of a batch of ``B`` images; all fields are 1-D tensors of length K on one device.

    Attributes:
        image_index: int64, which of the B images (panels) the peak is on.
        ss: float64, position along slow scan (row), pixel-index coordinates: the centroid of the
            peak's pixel values above ``background`` (:func:`weighted_centroids`).
        fs: float64, same along fast scan (column).
        npix: int64, number of pixels of the peak.
        intensity: float64, ``intensity_raw - npix * background``: the peak's signal above its local
            background (ADU), as peakfinder8 integrates.
        intensity_raw: float64, sum of the input image (ADU) over the peak's pixels.
        background: float64, mean value per pixel of the annulus around the peak
            (:func:`local_background`; 0 where the annulus has no usable pixel).
    """

    image_index: Tensor
    ss: Tensor
    fs: Tensor
    npix: Tensor
    intensity: Tensor
    intensity_raw: Tensor
    background: Tensor

    def __len__(self) -> int:
        return self.image_index.numel()

    def to_host(self) -> HostPeaks:
        """All columns to numpy with a single device->host copy."""
        packed = torch.stack([getattr(self, f.name).to(torch.float64) for f in fields(self)])
        host = packed.cpu().numpy()
        return HostPeaks(
            image_index=host[0].astype(np.int64),
            ss=host[1],
            fs=host[2],
            npix=host[3].astype(np.int64),
            intensity=host[4],
            intensity_raw=host[5],
            background=host[6],
        )


@dataclass(frozen=True)
class HostPeaks:
    """:class:`PeakTable` as numpy arrays (same fields, same order)."""

    image_index: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    npix: np.ndarray
    intensity: np.ndarray
    intensity_raw: np.ndarray
    background: np.ndarray

    def __len__(self) -> int:
        return self.image_index.size


def _stable_order(*keys: Tensor) -> Tensor:
    """Permutation sorting by ``keys`` lexicographically (first key most significant), ties kept
    in their current order."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def _rank_within_image(image_index: Tensor, intensity: Tensor) -> Tensor:
    """Rank 0, 1, ... of each peak by descending intensity among the peaks of its image."""
    order = _stable_order(image_index, -intensity)
    sorted_images = image_index[order]
    first_of_image = torch.searchsorted(sorted_images, sorted_images, right=False)
    rank_sorted = torch.arange(order.numel(), device=order.device) - first_of_image
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


# Unsigned types that torch indexes on some devices only: read them through a signed view.
_UNSIGNED_AS_SIGNED = {torch.uint16: (torch.int16, 0xFFFF), torch.uint32: (torch.int32, 0xFFFFFFFF)}


def _pixel_values(image: Tensor, pixel: Tensor) -> Tensor:
    """``image.reshape(-1)[pixel]`` as float64, for every dtype on every device."""
    flat = image.reshape(-1)
    if flat.dtype in _UNSIGNED_AS_SIGNED:
        signed, bits = _UNSIGNED_AS_SIGNED[flat.dtype]
        return (flat.view(signed)[pixel].to(torch.int64) & bits).to(torch.float64)
    return flat[pixel].to(torch.float64)


def _mean_positions(component: Tensor, row: Tensor, col: Tensor, npix: Tensor) -> tuple[Tensor, Tensor]:
    """Unweighted centre of mass of each component's pixels.

    Args:
        component: int64 ``(N,)`` component id ``0 .. C-1`` of each foreground pixel.
        row, col: int64 ``(N,)`` the pixel's row (ss) and column (fs) in its panel.
        npix: int64 ``(C,)`` pixels per component (all > 0).

    Returns:
        ``(ss, fs)``: float64 ``(C,)`` each. Coordinate sums are int64 (exact).
    """
    sums = torch.zeros(2, npix.numel(), dtype=torch.int64, device=row.device)
    sums[0].index_add_(0, component, row)
    sums[1].index_add_(0, component, col)
    mean = sums.to(torch.float64) / npix
    return mean[0], mean[1]


MAX_CENTROID_SHIFT_PX = 1.0


def weighted_centroids(
    component: Tensor,
    row: Tensor,
    col: Tensor,
    signal: Tensor,
    mean_ss: Tensor,
    mean_fs: Tensor,
    max_shift: float = MAX_CENTROID_SHIFT_PX,
) -> tuple[Tensor, Tensor]:
    """Intensity-weighted centroid of each component, as peakfinder8 reports a peak's position.

    Each pixel weighs ``max(signal, 0)``, its value above the peak's local background; a
    non-finite signal (e.g. a masked pixel) weighs 0. A component whose weights are all 0
    (nothing above the background) takes its unweighted centre ``(mean_ss, mean_fs)``, and so does
    one whose weighted centroid lies more than ``max_shift`` pixels from that centre: one pixel
    far above the rest (an unmasked hot pixel inside a spot) or the brighter of two touching spots
    dominates its weights, and the unweighted centre is the better position there.

    Args:
        component: int64 ``(N,)`` component id ``0 .. C-1`` of each foreground pixel.
        row, col: int64 ``(N,)`` the pixel's row (ss) and column (fs) in its panel.
        signal: float64 ``(N,)`` the pixel's value less its component's background (ADU).
        mean_ss, mean_fs: float64 ``(C,)`` unweighted centres of the components.

    Returns:
        ``(ss, fs)``: float64 ``(C,)`` each, pixel-index coordinates.
    """
    zero = torch.zeros((), dtype=torch.float64, device=signal.device)
    weight = torch.where(torch.isfinite(signal) & (signal > 0), signal, zero)
    sums = torch.zeros(3, mean_ss.numel(), dtype=torch.float64, device=signal.device)
    sums[0].index_add_(0, component, weight)
    sums[1].index_add_(0, component, weight * row)
    sums[2].index_add_(0, component, weight * col)
    weighted = sums[0] > 0
    total = torch.where(weighted, sums[0], torch.ones((), dtype=torch.float64, device=signal.device))
    ss, fs = sums[1] / total, sums[2] / total
    weighted &= torch.hypot(ss - mean_ss, fs - mean_fs) <= max_shift
    return torch.where(weighted, ss, mean_ss), torch.where(weighted, fs, mean_fs)


def find_peaks(
    mask: Tensor,
    image: Tensor,
    min_pixels: int = 1,
    max_peaks_per_image: int | None = None,
    valid: Tensor | None = None,
    components: Components | None = None,
) -> PeakTable:
    """Connected components of ``mask`` as peaks with position, size and integrated intensity.

    Args:
        mask: bool ``(B, H, W)`` peak mask (see :func:`peak_mask`).
        image: ``(B, H, W)`` raw detector values (any int/float dtype, ADU), same device as mask.
        min_pixels: drop components with fewer pixels.
        max_peaks_per_image: keep at most this many peaks per image, the brightest (largest
            background-subtracted ``intensity``; ties to the earlier component in raster order).
        valid: bool ``(B, H, W)`` good pixels, or None (all good). A bad pixel stays in its
            component (it keeps the peak connected) but counts in neither ``npix`` nor the sums,
            the background annulus or the position; a component without a good pixel is dropped
            (a lone hot pixel the mask knows).
        components: ``mask``'s components from :func:`bounded_components` (capped panels report
            no peaks); ``None`` labels ``mask`` without limits.

    Returns:
        :class:`PeakTable` sorted by ``(image_index, ss, fs)``, exact ties by raster order of the
        component's first pixel. The local background's annulus is centred on the component's
        unweighted centre (which does not depend on the background); the reported position is the
        centroid of the pixel values above that background (:func:`weighted_centroids`). Pixel
        counts are accumulated in int64 (exact), intensities and weighted sums in float64, so
        positions match SciPy's ``center_of_mass`` to float64 rounding.
    """
    if mask.shape != image.shape or mask.dim() != 3:
        raise ValueError(f"mask and image must both be (B, H, W), got {tuple(mask.shape)} and {tuple(image.shape)}")
    if max_peaks_per_image is not None and max_peaks_per_image < 0:
        raise ValueError("max_peaks_per_image must be >= 0")
    _, height, width = mask.shape
    num_pixels = height * width
    if components is None:
        components = bounded_components(mask)
    elif components.shape != tuple(mask.shape):
        raise ValueError(f"components of a {components.shape} mask for a {tuple(mask.shape)} one")
    pixel, root = components.pixel, components.root
    node = torch.arange(pixel.numel(), device=mask.device)
    is_root = root == node
    component = (torch.cumsum(is_root, 0) - 1)[root]  # consecutive ids in raster order of roots
    first_pixel = pixel[is_root]
    count = first_pixel.numel()

    image_of_pixel = torch.div(pixel, num_pixels, rounding_mode="floor")
    within = pixel - image_of_pixel * num_pixels
    row = torch.div(within, width, rounding_mode="floor")
    col = within - row * width
    all_pixels = torch.bincount(component, minlength=count)
    values = _pixel_values(image, pixel)
    good = None if valid is None else _pixel_values(valid, pixel) > 0
    if good is not None:  # a bad pixel counts in no sum
        values = torch.where(good, values, torch.zeros_like(values))
    npix = all_pixels if good is None else torch.bincount(component, weights=good.double(), minlength=count).long()
    intensity_raw = torch.zeros(count, dtype=torch.float64, device=mask.device)
    intensity_raw.index_add_(0, component, values)
    image_index = torch.div(first_pixel, num_pixels, rounding_mode="floor")
    mean_ss, mean_fs = _mean_positions(component, row, col, all_pixels)
    background, _ = local_background(mask.bool(), image, image_index, mean_ss, mean_fs, valid)
    intensity = intensity_raw - npix * background
    signal = values - background[component]
    if good is not None:  # a bad pixel weighs nothing in the position either
        signal = torch.where(good, signal, torch.full_like(signal, math.nan))
    ss, fs = weighted_centroids(component, row, col, signal, mean_ss, mean_fs)

    keep = (npix >= max(min_pixels, 1)) & ~components.capped[image_index]
    if max_peaks_per_image is not None:
        keep &= _rank_within_image(image_index, torch.where(keep, intensity, -math.inf)) < max_peaks_per_image
    columns = (image_index, ss, fs, npix, intensity, intensity_raw, background)
    image_index, ss, fs, npix, intensity, intensity_raw, background = (t[keep] for t in columns)

    order = _stable_order(image_index, ss, fs)
    return PeakTable(
        image_index=image_index[order],
        ss=ss[order],
        fs=fs[order],
        npix=npix[order],
        intensity=intensity[order],
        intensity_raw=intensity_raw[order],
        background=background[order],
    )


# --------------------------------------------------------------------------------------------
# Local background
# --------------------------------------------------------------------------------------------


BACKGROUND_INNER_RADIUS = 4.0
BACKGROUND_OUTER_RADIUS = 7.0


def annulus_offsets(inner: float, outer: float) -> np.ndarray:
    """``(M, 2)`` int64 ``(d_ss, d_fs)`` pixel offsets with ``inner < sqrt(d_ss^2 + d_fs^2) <= outer``,
    in raster order."""
    if not 0 <= inner < outer:
        raise ValueError(f"need 0 <= inner < outer, got {inner}, {outer}")
    reach = int(math.floor(outer))
    d_ss, d_fs = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    r2 = d_ss**2 + d_fs**2
    ring = (r2 > inner**2) & (r2 <= outer**2)
    return np.stack([d_ss[ring], d_fs[ring]], axis=1).astype(np.int64)


def local_background(
    mask: Tensor,
    image: Tensor,
    image_index: Tensor,
    ss: Tensor,
    fs: Tensor,
    valid: Tensor | None = None,
    inner: float = BACKGROUND_INNER_RADIUS,
    outer: float = BACKGROUND_OUTER_RADIUS,
) -> tuple[Tensor, Tensor]:
    """Mean background per pixel in an annulus around each peak, as peakfinder8 estimates it.

    The annulus is centred on ``(ss, fs)`` rounded to the nearest pixel (:func:`find_peaks` passes
    the unweighted centre of the peak's pixels) and holds the
    pixels at a distance in ``(inner, outer]`` pixels; pixels of any peak (``mask``), pixels that
    ``valid`` marks bad and pixels outside the peak's own image (panel) are left out.

    Args:
        mask: bool ``(B, H, W)`` peak mask.
        image: ``(B, H, W)`` detector values (any int/float dtype).
        image_index, ss, fs: ``(K,)`` int64 / float64 / float64, the peaks (see :class:`PeakTable`).
        valid: bool ``(B, H, W)`` good-pixel mask, or None (every pixel good).
        inner, outer: annulus radii (pixels).

    Returns:
        ``(background, count)``: float64 ``(K,)`` mean value per pixel (0 where no annulus pixel
        is usable) and int64 ``(K,)`` pixels it averaged.
    """
    _, height, width = mask.shape
    device = mask.device
    offsets = torch.as_tensor(annulus_offsets(inner, outer), device=device)
    centre_ss = torch.round(ss).to(torch.int64)
    centre_fs = torch.round(fs).to(torch.int64)
    row = centre_ss[:, None] + offsets[:, 0]
    col = centre_fs[:, None] + offsets[:, 1]
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    flat = image_index[:, None] * (height * width) + row.clamp(0, height - 1) * width + col.clamp(0, width - 1)
    usable = inside & ~mask.reshape(-1)[flat]
    if valid is not None:
        usable &= valid.reshape(-1).bool()[flat]
    values = _pixel_values(image, flat.reshape(-1)).view(flat.shape)
    count = usable.sum(dim=1)
    total = torch.where(usable, values, torch.zeros((), dtype=values.dtype, device=device)).sum(dim=1)
    background = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return background, count


# --------------------------------------------------------------------------------------------
# Back to requests / frames
# --------------------------------------------------------------------------------------------


def peaks_to_frames(
    table: PeakTable | HostPeaks,
    num_frames: int,
    panels_per_frame: int,
    first_image: int = 0,
) -> list[dict[str, int | list]]:
    """Peaks of images ``first_image ... first_image + num_frames * panels_per_frame - 1`` as one
    dict of python lists per frame.

    Images are laid out frame-major: image ``first_image + f * P + p`` is panel ``p`` of frame
    ``f``. A device :class:`PeakTable` is copied to the host once (call ``table.to_host()``
    yourself and pass the :class:`HostPeaks` to split one batch into many requests with a single
    copy).

    Returns:
        ``num_frames`` dicts with keys ``num_peaks`` (int) and ``panel``, ``ss``, ``fs``, ``npix``,
        ``intensity``, ``intensity_raw`` (lists of length ``num_peaks``, ordered by panel, then ss,
        then fs).
    """
    if num_frames < 0 or panels_per_frame < 1 or first_image < 0:
        raise ValueError("need num_frames >= 0, panels_per_frame >= 1, first_image >= 0")
    host = table.to_host() if isinstance(table, PeakTable) else table
    edges = first_image + panels_per_frame * np.arange(num_frames + 1, dtype=np.int64)
    bounds = np.searchsorted(host.image_index, edges, side="left")
    frames = []
    for start, stop in itertools.pairwise(bounds.tolist()):
        panel = (host.image_index[start:stop] - first_image) % panels_per_frame
        frames.append(
            {
                "num_peaks": stop - start,
                "panel": panel.tolist(),
                "ss": host.ss[start:stop].tolist(),
                "fs": host.fs[start:stop].tolist(),
                "npix": host.npix[start:stop].tolist(),
                "intensity": host.intensity[start:stop].tolist(),
                "intensity_raw": host.intensity_raw[start:stop].tolist(),
            }
        )
    return frames
