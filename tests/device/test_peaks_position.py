"""Peak positions: the centroid of the pixel values above the local background (peakfinder8's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peaknet_serve.device.peaks import find_peaks, weighted_centroids

CENTRE = (10.3, 20.7)


def gaussian_spot(
    shape: tuple[int, int] = (32, 40),
    centre: tuple[float, float] = CENTRE,
    amplitude: float = 2000.0,
    sigma: float = 1.0,
    radius: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D Gaussian of ``amplitude`` ADU sampled at the pixel centres, and a disc mask of
    ``radius`` pixels around its nearest pixel: ``(spot, mask)``, float64 / bool ``(H, W)``."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    spot = amplitude * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma**2))
    near = np.round(centre)
    mask = (rows - near[0]) ** 2 + (cols - near[1]) ** 2 <= radius**2
    return spot, mask


def position(mask: np.ndarray, image: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """The one peak's (ss, fs) as find_peaks reports it, for (H, W) inputs."""
    image = image if isinstance(image, torch.Tensor) else torch.from_numpy(image)
    table = find_peaks(torch.from_numpy(mask)[None], image[None])
    assert len(table) == 1
    return table.ss.item(), table.fs.item()


def error(found: tuple[float, float], centre: tuple[float, float] = CENTRE) -> float:
    return float(np.hypot(found[0] - centre[0], found[1] - centre[1]))


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.uint16, torch.int32, torch.uint32]
)
def test_gaussian_on_a_flat_background_is_found_at_its_subpixel_centre(dtype):
    spot, mask = gaussian_spot()
    image = torch.from_numpy(np.round(spot + 100.0)).to(dtype)
    found = position(mask, image)
    assert error(found) < 0.05, found
    # the unweighted centre of the mask is the nearest pixel, 0.42 px away
    rows, cols = np.nonzero(mask)
    assert error((rows.mean(), cols.mean())) > 0.4


def test_offset_and_sloped_background_is_subtracted_before_weighting():
    """A 5000 ADU pedestal with a gradient: weighting by the raw values would pull the position
    towards the mask's centre (and up the slope); the background-subtracted weights do not."""
    spot, mask = gaussian_spot()
    rows, cols = np.mgrid[0 : spot.shape[0], 0 : spot.shape[1]]
    image = (spot + 5000.0 + 4.0 * rows - 3.0 * cols).astype(np.float32)
    found = position(mask, image)
    assert error(found) < 0.05, found
    raw = image.astype(np.float64) * mask
    raw_weighted = ((raw * rows).sum() / raw.sum(), (raw * cols).sum() / raw.sum())
    assert error(raw_weighted) > 0.3


def test_noisy_spots_on_a_panel_are_found_within_a_tenth_of_a_pixel():
    """Twelve spots at random sub-pixel centres, Poisson noise on a 50 ADU background, several
    panels in one batch: every position within 0.1 px of its spot's centre."""
    rng = np.random.default_rng(3)
    panels, height, width = 3, 64, 72
    image = np.full((panels, height, width), 50.0)
    mask = np.zeros(image.shape, bool)
    truth = []
    for p in range(panels):
        for r0 in (12, 36):
            for c0 in (14, 50):
                centre = (r0 + rng.uniform(-0.5, 0.5), c0 + rng.uniform(-0.5, 0.5))
                spot, disc = gaussian_spot((height, width), centre, amplitude=rng.uniform(800, 3000), sigma=0.9)
                image[p] += spot
                mask[p] |= disc
                truth.append((p, *centre))
    image = rng.poisson(image).astype(np.uint16)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image)).to_host()
    found = np.stack([table.image_index, table.ss, table.fs], axis=1)
    truth = np.array(sorted(truth))
    assert found.shape == truth.shape
    np.testing.assert_array_equal(found[:, 0], truth[:, 0])
    assert np.hypot(*(found[:, 1:] - truth[:, 1:]).T).max() < 0.1


def test_component_without_signal_above_the_background_takes_its_unweighted_centre():
    """A flat region (equal to its annulus) and a dip below it: every weight is 0."""
    image = np.full((1, 40, 40), 300.0, np.float32)
    mask = np.zeros(image.shape, bool)
    mask[0, 5:8, 5:10] = True  # flat
    mask[0, 25:27, 20:23] = True
    mask[0, 25, 22] = False  # an L-shaped dip
    image[0, 25:27, 20:23] = 120.0
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    assert table.ss.tolist() == [6.0, 25.0 + 3 / 5]
    assert table.fs.tolist() == [7.0, 20.0 + 4 / 5]


def test_non_finite_pixels_weigh_nothing():
    spot, mask = gaussian_spot()
    image = (spot + 100.0).astype(np.float32)
    image[9, 19] = np.nan  # on the spot's far side: weighting it at all moves the centre
    image[13, 21] = np.inf
    table = find_peaks(torch.from_numpy(mask)[None], torch.from_numpy(image)[None])
    keep = mask.copy()
    keep[9, 19] = keep[13, 21] = False
    rows, cols = np.nonzero(keep)
    w = np.maximum(image[keep].astype(np.float64) - table.background.item(), 0)
    expected = ((w * rows).sum() / w.sum(), (w * cols).sum() / w.sum())
    np.testing.assert_allclose((table.ss.item(), table.fs.item()), expected, rtol=0, atol=1e-9)
    assert error(expected, position(mask, (spot + 100.0).astype(np.float32))) > 5e-3  # those pixels matter


def test_an_unmasked_hot_pixel_in_a_spot_does_not_pull_its_position():
    """A pixel 40x the spot's peak at the edge of its mask would move the weighted centroid by
    ~2.5 px: the peak keeps its unweighted centre instead, within half a pixel of the truth."""
    spot, mask = gaussian_spot()
    spot[12, 22] = 80_000.0
    image = spot + 100.0
    assert error(position(mask, image)) < 0.5
    rows, cols = np.nonzero(mask)
    weights = np.maximum(image[rows, cols] - 100.0, 0.0)
    assert error((np.average(rows, weights=weights), np.average(cols, weights=weights))) > 1.5


def test_a_masked_pixel_weighs_nothing_in_the_position():
    """A hot pixel marked bad (``valid`` False) is left out of the weights: the position is the
    centroid of the other pixels above the background."""
    spot, mask = gaussian_spot()
    spot[11, 21] = 80_000.0
    valid = np.ones(spot.shape, dtype=bool)
    valid[11, 21] = False
    image = spot + 100.0
    table = find_peaks(torch.from_numpy(mask)[None], torch.from_numpy(image)[None], valid=torch.from_numpy(valid)[None])
    rows, cols = np.nonzero(mask & valid)
    weights = np.maximum(image[rows, cols] - 100.0, 0.0)
    expected = (np.average(rows, weights=weights), np.average(cols, weights=weights))
    assert (table.ss.item(), table.fs.item()) == pytest.approx(
        expected, abs=1e-3
    )  # the annulus holds a trace of the spot
    assert error(expected) < 0.2


def test_weighted_centroids_on_hand_made_components():
    """Component 0: weights 1 and 3 at fs 0 and 4 -> 3; component 1: all at or below 0 -> mean."""
    component = torch.tensor([0, 0, 1, 1, 1])
    row = torch.tensor([2, 2, 7, 8, 9])
    col = torch.tensor([0, 4, 1, 1, 1])
    signal = torch.tensor([1.0, 3.0, 0.0, -5.0, float("nan")], dtype=torch.float64)
    mean_ss = torch.tensor([2.0, 8.0], dtype=torch.float64)
    mean_fs = torch.tensor([2.0, 1.0], dtype=torch.float64)
    ss, fs = weighted_centroids(component, row, col, signal, mean_ss, mean_fs)
    assert ss.tolist() == [2.0, 8.0] and fs.tolist() == [3.0, 1.0]
    assert ss.dtype == fs.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint16])
def test_cuda_positions_equal_cpu(dtype):
    spot, mask = gaussian_spot((352, 384), (100.3, 200.7))
    image = torch.from_numpy(np.round(spot + 100.0)).to(dtype)
    cpu = find_peaks(torch.from_numpy(mask)[None], image[None])
    gpu = find_peaks(torch.from_numpy(mask)[None].cuda(), image[None].cuda())
    assert gpu.ss.device.type == "cuda"
    torch.testing.assert_close(gpu.ss.cpu(), cpu.ss, rtol=0, atol=1e-9)
    torch.testing.assert_close(gpu.fs.cpu(), cpu.fs, rtol=0, atol=1e-9)


def test_bad_pixels_count_in_no_sum_and_a_peak_of_bad_pixels_only_is_dropped():
    """A peak holding a bad pixel stays one peak (the pixel keeps it connected) whose npix and sums
    leave the pixel out; a peak whose every pixel is bad (a known hot pixel) is not reported."""
    mask = np.zeros((1, 30, 30), dtype=bool)
    mask[0, 10, 8:13] = True  # a line of 5 pixels, the middle one bad
    mask[0, 22, 22] = True  # a lone hot pixel, bad
    image = np.full((1, 30, 30), 10.0)
    image[0, 10, 8:13] = [50.0, 60.0, 90_000.0, 60.0, 50.0]
    image[0, 22, 22] = 90_000.0
    valid = np.ones_like(mask)
    valid[0, 10, 10] = False
    valid[0, 22, 22] = False
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image), valid=torch.from_numpy(valid)).to_host()
    assert len(table) == 1 and table.npix.tolist() == [4]
    assert table.intensity_raw.tolist() == [220.0] and table.intensity.tolist() == [220.0 - 4 * 10.0]
    assert (table.ss[0], table.fs[0]) == pytest.approx((10.0, 10.0))
    unmasked = find_peaks(torch.from_numpy(mask), torch.from_numpy(image)).to_host()
    assert len(unmasked) == 2 and unmasked.npix.tolist() == [5, 1]
