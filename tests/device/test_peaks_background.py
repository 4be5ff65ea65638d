"""Background-subtracted peak intensities against a plain numpy reference (peakfinder8's annulus rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from peaknet_serve.device.peaks import (
    BACKGROUND_INNER_RADIUS,
    BACKGROUND_OUTER_RADIUS,
    annulus_offsets,
    find_peaks,
    local_background,
)


def numpy_background(mask, image, valid, image_index, ss, fs, inner, outer):
    """Loop-per-peak reference: mean over pixels at distance (inner, outer] from the rounded
    centre (the unweighted centre of the peak's pixels), inside the image, outside every peak, and good in ``valid``."""
    _, height, width = mask.shape
    out = np.zeros(len(image_index))
    counts = np.zeros(len(image_index), np.int64)
    for k, (b, s, f) in enumerate(zip(image_index, ss, fs)):
        cs, cf = int(np.round(s)), int(np.round(f))
        picked = []
        for r in range(height):
            for c in range(width):
                d2 = (r - cs) ** 2 + (c - cf) ** 2
                if inner**2 < d2 <= outer**2 and not mask[b, r, c] and valid[b, r, c]:
                    picked.append(float(image[b, r, c]))
        counts[k] = len(picked)
        out[k] = np.mean(picked) if picked else 0.0
    return out, counts


def mask_centres(mask, table, valid=None):
    """(image_index, ss, fs) (K,) each: the unweighted centre of each peak's component, the
    annulus centre, in the order of ``table`` (a HostPeaks; rows are matched to components by
    their good-pixel count and the nearest centre)."""
    centres = {}
    good = np.ones_like(mask) if valid is None else valid
    for b in range(mask.shape[0]):
        labels, count = ndimage.label(mask[b], structure=np.ones((3, 3)))
        ids = np.arange(1, count + 1)
        sizes = ndimage.sum(mask[b] & good[b], labels, ids)
        for (ss, fs), n in zip(ndimage.center_of_mass(mask[b], labels, ids), sizes):
            centres.setdefault((b, int(n)), []).append((ss, fs))
    rows = []
    for b, n, ss, fs in zip(table.image_index, table.npix, table.ss, table.fs):
        candidates = np.array(centres[(int(b), int(n))])
        nearest = candidates[np.argmin(np.hypot(candidates[:, 0] - ss, candidates[:, 1] - fs))]
        rows.append((b, *nearest))
    rows = np.array(rows).reshape(-1, 3)
    return rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2]


def blob_frame(seed, shape=(3, 40, 48), n=14, level=100.0):
    """Gaussian spots on a sloped background, the peak mask their bright cores, a few bad pixels."""
    rng = np.random.default_rng(seed)
    b, h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.zeros(shape)
    for i in range(b):
        image[i] = level * (1 + 0.5 * i) + 0.8 * rows + 0.3 * cols
    truth = []
    for _ in range(n):
        i, r, c = rng.integers(b), rng.uniform(-2, h + 1), rng.uniform(-2, w + 1)
        amplitude = rng.uniform(300, 3000)
        image[i] += amplitude * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.2**2))
        truth.append(amplitude)
    image += rng.normal(0, 3, shape)
    mask = image - ndimage.median_filter(image, size=(1, 9, 9)) > 60
    valid = rng.random(shape) > 0.05
    return mask, image.astype(np.float32), valid


def test_annulus_offsets_are_the_ring():
    offsets = annulus_offsets(1.0, 2.0)
    d2 = (offsets**2).sum(axis=1)
    assert ((d2 > 1) & (d2 <= 4)).all()
    assert len(offsets) == 8  # 4 diagonal neighbours (sqrt 2) and 4 at distance 2 along the axes
    assert set(map(tuple, offsets)) >= {(0, 2), (2, 0), (1, 1), (-2, 0)}
    with pytest.raises(ValueError):
        annulus_offsets(3.0, 3.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_valid", [False, True])
def test_local_background_equals_numpy(seed, with_valid):
    mask, image, valid = blob_frame(seed)
    valid = valid if with_valid else np.ones_like(valid)
    table = find_peaks(
        torch.from_numpy(mask), torch.from_numpy(image), valid=torch.from_numpy(valid) if with_valid else None
    ).to_host()
    assert len(table) > 5
    image_index, ss, fs = mask_centres(mask, table, valid)
    expected, counts = numpy_background(
        mask, image, valid, image_index, ss, fs, BACKGROUND_INNER_RADIUS, BACKGROUND_OUTER_RADIUS
    )
    np.testing.assert_allclose(table.background, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(table.intensity, table.intensity_raw - table.npix * expected, rtol=1e-12, atol=1e-6)
    _, got_counts = local_background(
        torch.from_numpy(mask),
        torch.from_numpy(image),
        torch.from_numpy(image_index),
        torch.from_numpy(ss),
        torch.from_numpy(fs),
        torch.from_numpy(valid) if with_valid else None,
    )
    np.testing.assert_array_equal(got_counts.numpy(), counts)
    assert (counts > 0).all()


def test_background_subtraction_recovers_the_spot_above_a_flat_level():
    """One square spot of 9 pixels x 50 ADU on a flat 200 ADU: raw 9*250, subtracted 9*50."""
    image = np.full((1, 32, 32), 200.0, np.float32)
    image[0, 10:13, 20:23] += 50.0
    mask = np.zeros(image.shape, bool)
    mask[0, 10:13, 20:23] = True
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    assert table.intensity_raw.tolist() == [9 * 250.0]
    assert table.background.tolist() == [200.0]
    assert table.intensity.tolist() == [9 * 50.0]


def test_annulus_without_usable_pixels_subtracts_nothing():
    """Everything is peak (or bad): no background estimate, the raw sum stands."""
    image = torch.full((1, 6, 6), 7.0)
    mask = torch.ones((1, 6, 6), dtype=torch.bool)
    table = find_peaks(mask, image)
    assert table.background.tolist() == [0.0] and table.intensity.tolist() == [36 * 7.0]
    mask = torch.zeros((1, 20, 20), dtype=torch.bool)
    mask[0, 9, 9] = True
    table = find_peaks(mask, torch.full((1, 20, 20), 7.0), valid=mask.clone())
    assert table.background.tolist() == [0.0] and table.intensity.tolist() == [7.0]


@pytest.mark.parametrize("dtype", [torch.uint16, torch.int32, torch.bfloat16])
def test_background_reads_every_dtype(dtype):
    mask, image, _ = blob_frame(5)
    image = np.clip(image, 0, 60000)
    typed = torch.from_numpy(image).to(dtype)
    table = find_peaks(torch.from_numpy(mask), typed).to_host()
    expected, _ = numpy_background(
        mask,
        typed.to(torch.float64).numpy(),
        np.ones_like(mask),
        *mask_centres(mask, table),
        BACKGROUND_INNER_RADIUS,
        BACKGROUND_OUTER_RADIUS,
    )
    np.testing.assert_allclose(table.background, expected, rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_background_equals_cpu():
    mask, image, valid = blob_frame(7, shape=(4, 352, 384), n=200)
    args = (torch.from_numpy(mask), torch.from_numpy(image))
    cpu = find_peaks(*args, valid=torch.from_numpy(valid)).to_host()
    gpu = find_peaks(*(t.cuda() for t in args), valid=torch.from_numpy(valid).cuda()).to_host()
    np.testing.assert_allclose(gpu.background, cpu.background, rtol=1e-12)
    np.testing.assert_allclose(gpu.intensity, cpu.intensity, rtol=1e-12, atol=1e-6)
