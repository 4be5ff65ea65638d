"""Peak extraction against SciPy: scipy.ndimage.label (8-connectivity), center_of_mass of the
background-subtracted values, sum."""

from __future__ import annotations

import math
import statistics
import time
import zlib

import mpmath
import numpy as np
import pytest
import torch
from scipy import ndimage

import peaknet_serve.device.peaks as postprocess
from peaknet_serve.device.peaks import (
    HostPeaks,
    LabelLimits,
    PeakTable,
    bounded_components,
    find_peaks,
    peak_mask,
    peak_mask_from_score,
    peaks_to_frames,
)

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ------------------------------------------------------------------------------------------
# Reference and test masks
# ------------------------------------------------------------------------------------------


def annulus_means(mask: np.ndarray, image: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(C,) float64 mean of ``image`` (H, W) over the annulus pixels around each rounded centre
    (C, 2) that lie inside the panel and outside ``mask`` (H, W); 0 where there are none."""
    offsets = postprocess.annulus_offsets(postprocess.BACKGROUND_INNER_RADIUS, postprocess.BACKGROUND_OUTER_RADIUS)
    height, width = mask.shape
    means = np.zeros(len(centres))
    for k, centre in enumerate(np.round(centres).astype(np.int64)):
        ring = centre + offsets
        ring = ring[(ring[:, 0] >= 0) & (ring[:, 0] < height) & (ring[:, 1] >= 0) & (ring[:, 1] < width)]
        ring = ring[~mask[ring[:, 0], ring[:, 1]]]
        if len(ring):
            means[k] = image[ring[:, 0], ring[:, 1]].astype(np.float64).mean()
    return means


def scipy_peaks(mask: np.ndarray, image: np.ndarray) -> dict[str, np.ndarray]:
    """Expected peak table, sorted like find_peaks: (image, ss, fs), ties by SciPy label.

    Positions: SciPy's ``center_of_mass`` of the image less each peak's annulus background,
    clipped at 0 (the unweighted centre where nothing is above the background, or where the
    weighted one lies more than ``MAX_CENTROID_SHIFT_PX`` from it); the annulus is centred on the
    unweighted centre."""
    rows = []
    for b in range(mask.shape[0]):
        labels, count = ndimage.label(mask[b], structure=EIGHT_CONNECTED)
        if count == 0:
            continue
        ids = np.arange(1, count + 1)
        plain = np.array(ndimage.center_of_mass(mask[b].astype(float), labels, ids)).reshape(-1, 2)
        background = annulus_means(mask[b], image[b], plain)
        weight = np.zeros(labels.shape)
        inside = labels > 0
        weight[inside] = np.maximum(image[b].astype(np.float64)[inside] - background[labels[inside] - 1], 0.0)
        total = ndimage.sum(weight, labels, ids)
        with np.errstate(invalid="ignore", divide="ignore"):
            weighted = np.array(ndimage.center_of_mass(weight, labels, ids)).reshape(-1, 2)
        near = np.hypot(*(np.nan_to_num(weighted) - plain).T) <= postprocess.MAX_CENTROID_SHIFT_PX
        centres = np.where(((total > 0) & near)[:, None], weighted, plain)
        npix = ndimage.sum(np.ones_like(labels), labels, ids)
        intensity = ndimage.sum(image[b].astype(np.float64), labels, ids)
        rows += [(b, ss, fs, n, i, label) for (ss, fs), n, i, label in zip(centres, npix, intensity, ids, strict=True)]
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[5]))
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return {
        "image_index": table[:, 0].astype(np.int64),
        "ss": table[:, 1],
        "fs": table[:, 2],
        "npix": table[:, 3].astype(np.int64),
        "intensity": table[:, 4],
    }


def assert_table_equals_scipy(table: PeakTable, mask: np.ndarray, image: np.ndarray) -> None:
    expected = scipy_peaks(mask, image)
    host = table.to_host()
    np.testing.assert_array_equal(host.image_index, expected["image_index"])
    np.testing.assert_array_equal(host.npix, expected["npix"])
    np.testing.assert_allclose(host.ss, expected["ss"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(host.fs, expected["fs"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(host.intensity_raw, expected["intensity"], rtol=1e-12, atol=0)


def assert_labels_equal_scipy(labels: torch.Tensor, mask: np.ndarray) -> None:
    """Same partition as SciPy, and each label is 1 + flat index of the component's first pixel."""
    ours = labels.cpu().numpy()
    assert ours.shape == mask.shape
    assert (ours[~mask] == 0).all()
    flat_index = np.arange(mask.size).reshape(mask.shape)
    for b in range(mask.shape[0]):
        reference, count = ndimage.label(mask[b], structure=EIGHT_CONNECTED)
        for component in range(1, count + 1):
            pixels = reference == component
            values = np.unique(ours[b][pixels])
            assert values.tolist() == [flat_index[b][pixels].min() + 1]
        assert len(np.unique(ours[b][mask[b]])) == count


def seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def random_mask(shape: tuple[int, int, int], density: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < density


def serpentine(height: int, width: int, vertical: bool = False) -> np.ndarray:
    """One long snake: every other row full, joined alternately at the right and left ends."""
    if vertical:
        return serpentine(width, height).T.copy()
    mask = np.zeros((height, width), dtype=bool)
    mask[::2] = True
    for i, row in enumerate(range(1, height, 2)):
        mask[row, width - 1 if i % 2 == 0 else 0] = True
    return mask


def spiral(size: int) -> np.ndarray:
    """A square spiral of 1-pixel path with 1-pixel gaps, walked inwards from the top-left."""
    mask = np.zeros((size, size), dtype=bool)
    row, col, direction = 0, 0, 0
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    mask[row, col] = True
    while True:
        moved = False
        for _ in range(2):
            dr, dc = steps[direction]
            r2, c2 = row + 2 * dr, col + 2 * dc
            beyond = (row + 3 * dr, col + 3 * dc)
            if (
                0 <= r2 < size
                and 0 <= c2 < size
                and not mask[r2, c2]
                and not (0 <= beyond[0] < size and 0 <= beyond[1] < size and mask[beyond])
            ):
                mask[row + dr, col + dc] = mask[r2, c2] = True
                row, col = r2, c2
                moved = True
                break
            direction = (direction + 1) % 4
        if not moved:
            return mask


def maze(cells_high: int, cells_wide: int, seed: int) -> np.ndarray:
    """Corridors of a random depth-first maze (a spanning tree: long, branching paths)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((2 * cells_high - 1, 2 * cells_wide - 1), dtype=bool)
    seen = np.zeros((cells_high, cells_wide), dtype=bool)
    stack = [(0, 0)]
    seen[0, 0] = mask[0, 0] = True
    while stack:
        r, c = stack[-1]
        options = [
            (r + dr, c + dc)
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
            if 0 <= r + dr < cells_high and 0 <= c + dc < cells_wide and not seen[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        nr, nc = options[rng.integers(len(options))]
        seen[nr, nc] = True
        mask[2 * nr, 2 * nc] = mask[r + nr, c + nc] = True
        stack.append((nr, nc))
    return mask


def blobs(shape: tuple[int, int, int], per_image: int, seed: int) -> np.ndarray:
    """Realistic peak mask: ~per_image 13-pixel discs per panel (~0.5 % of a 352x384 panel)."""
    rng = np.random.default_rng(seed)
    batch, height, width = shape
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[-2:3, -2:3]
    disc = yy**2 + xx**2 <= 4
    for b in range(batch):
        for _ in range(per_image):
            r, c = rng.integers(2, height - 2), rng.integers(2, width - 2)
            mask[b, r - 2 : r + 3, c - 2 : c + 3] |= disc
    return mask


# ------------------------------------------------------------------------------------------
# Labelling
# ------------------------------------------------------------------------------------------


SHAPES = [(1, 1, 1), (2, 1, 23), (2, 23, 1), (3, 31, 45), (1, 64, 48), (4, 2, 2)]
DENSITIES = [0.0, 0.02, 0.2, 0.45, 0.6, 0.9, 1.0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES)
def test_labels_equal_scipy_on_random_masks(shape, density):
    mask = random_mask(shape, density, seed=seed_of(shape, density))
    assert_labels_equal_scipy(bounded_components(torch.from_numpy(mask)).labels(), mask)


@pytest.mark.parametrize(
    "image",
    [
        serpentine(64, 80),
        serpentine(64, 80, vertical=True),
        spiral(63),
        maze(24, 40, seed=3),
        np.eye(57, dtype=bool),  # one diagonal line: only 8-connectivity joins it
        np.eye(40, dtype=bool)[::-1] | np.eye(40, dtype=bool),
    ],
    ids=["serpentine-rows", "serpentine-cols", "spiral", "maze", "diagonal", "cross"],
)
def test_labels_equal_scipy_on_long_thin_components(image):
    mask = image[None]
    assert_labels_equal_scipy(bounded_components(torch.from_numpy(mask)).labels(), mask)


@pytest.mark.parametrize("check_every, jumps", [(1, 0), (1, 1), (3, 0), (7, 3)])
def test_labels_do_not_depend_on_schedule(check_every, jumps):
    mask = np.stack([maze(12, 16, seed=1), random_mask((1, 23, 31), 0.5, seed=2)[0]])
    labels = bounded_components(torch.from_numpy(mask), check_every=check_every, jumps=jumps).labels()
    assert_labels_equal_scipy(labels, mask)


def test_snake_converges_in_few_iterations(monkeypatch):
    """A 352x384 serpentine has a geodesic diameter of ~68 000 pixels; hooking + pointer jumping
    must not walk it pixel by pixel."""
    steps = 0
    real_step = postprocess._propagate_step

    def counting_step(*args, **kwargs):
        nonlocal steps
        steps += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(postprocess, "_propagate_step", counting_step)
    mask = np.stack([serpentine(352, 384), serpentine(352, 384, vertical=True)])
    labels = bounded_components(torch.from_numpy(mask)).labels()
    assert steps <= 64
    assert torch.unique(labels[0]).tolist() == [0, 1]  # the snake starts at pixel 0
    assert set(torch.unique(labels[1]).tolist()) == {0, 352 * 384 + 1}


def test_components_never_cross_image_or_row_boundaries():
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[0, 3, :] = True  # last row of image 0 ...
    mask[1, 0, :] = True  # ... and first row of image 1 must stay apart
    mask[2, 1, 4] = mask[2, 2, 0] = True  # end of one row, start of the next: not neighbours
    labels = bounded_components(torch.from_numpy(mask)).labels()
    assert_labels_equal_scipy(labels, mask)
    assert len(torch.unique(labels[labels > 0])) == 4


def test_full_and_empty_masks():
    full = torch.ones(3, 7, 9, dtype=torch.bool)
    labels = bounded_components(full).labels()
    assert [torch.unique(labels[b]).tolist() for b in range(3)] == [[1], [64], [127]]
    empty = bounded_components(torch.zeros(2, 5, 6, dtype=torch.bool)).labels()
    assert empty.dtype == torch.int64 and empty.shape == (2, 5, 6) and not empty.any()
    assert bounded_components(torch.zeros(0, 5, 6, dtype=torch.bool)).labels().shape == (0, 5, 6)


def test_labelling_rejects_bad_input():
    with pytest.raises(ValueError):
        bounded_components(torch.ones(4, 4, dtype=torch.bool)).labels()
    with pytest.raises(ValueError):
        bounded_components(torch.ones(1, 4, 4, dtype=torch.bool), check_every=0).labels()


# ------------------------------------------------------------------------------------------
# Peak table
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.6, 1.0])
def test_find_peaks_equals_scipy(shape, density):
    seed = seed_of(shape, density, "peaks")
    mask = random_mask(shape, density, seed)
    image = np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    assert_table_equals_scipy(table, mask, image)


@pytest.mark.parametrize(
    "mask",
    [
        serpentine(40, 52)[None],
        spiral(45)[None],
        maze(20, 20, seed=7)[None],
        blobs((3, 96, 80), 20, seed=0),
    ],
    ids=["serpentine", "spiral", "maze", "blobs"],
)
def test_find_peaks_equals_scipy_on_structured_masks(mask):
    image = np.random.default_rng(1).integers(0, 4000, mask.shape).astype(np.int32)
    assert_table_equals_scipy(find_peaks(torch.from_numpy(mask), torch.from_numpy(image)), mask, image)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_intensity_of_unsigned_image_is_exact(dtype):
    """Large unsigned values (above the signed range of the same width) are read unsigned, and
    their sums, beyond float32's exact integers, stay exact in float64."""
    mask = np.ones((2, 64, 64), dtype=bool)
    mask[1, :, 32] = False
    high = np.iinfo(dtype).max
    image = np.random.default_rng(0).integers(high - 5000, high, mask.shape, endpoint=True)
    image = image.astype(dtype)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    expected = [
        image[0].sum(dtype=np.int64),
        image[1][:, :32].sum(dtype=np.int64),
        image[1][:, 33:].sum(dtype=np.int64),
    ]
    assert sorted(table.intensity_raw.tolist()) == sorted(float(v) for v in expected)
    assert expected[0] > 2**24  # beyond float32's exact integers
    assert_table_equals_scipy(table, mask, image)


def test_output_dtypes_and_device():
    mask = torch.from_numpy(random_mask((2, 16, 16), 0.3, seed=4))
    table = find_peaks(mask, torch.ones(2, 16, 16, dtype=torch.bfloat16))
    assert table.image_index.dtype == torch.int64 and table.npix.dtype == torch.int64
    assert table.ss.dtype == table.fs.dtype == table.intensity.dtype == torch.float64
    columns = [table.image_index, table.ss, table.fs, table.npix, table.intensity]
    assert all(t.device == mask.device and t.shape == (len(table),) for t in columns)
    assert len(table) > 0
    assert torch.equal(table.intensity_raw, table.npix.to(torch.float64))


def test_empty_mask_gives_empty_table():
    table = find_peaks(torch.zeros(3, 8, 9, dtype=torch.bool), torch.ones(3, 8, 9))
    assert len(table) == 0 and table.ss.dtype == torch.float64
    assert (
        peaks_to_frames(table, num_frames=3, panels_per_frame=1)
        == [{"num_peaks": 0, "panel": [], "ss": [], "fs": [], "npix": [], "intensity": [], "intensity_raw": []}] * 3
    )


def test_min_pixels_drops_small_components():
    mask = random_mask((2, 40, 40), 0.15, seed=5)
    image = np.random.default_rng(5).random(mask.shape)
    every = find_peaks(torch.from_numpy(mask), torch.from_numpy(image)).to_host()
    big = find_peaks(torch.from_numpy(mask), torch.from_numpy(image), min_pixels=3).to_host()
    keep = every.npix >= 3
    assert 0 < keep.sum() < keep.size
    for name in ("image_index", "ss", "fs", "npix", "intensity"):
        np.testing.assert_array_equal(getattr(big, name), getattr(every, name)[keep])


def test_max_peaks_per_image_keeps_the_brightest():
    mask = random_mask((3, 50, 50), 0.1, seed=6)
    image = np.random.default_rng(6).exponential(50.0, mask.shape)
    every = find_peaks(torch.from_numpy(mask), torch.from_numpy(image), min_pixels=2).to_host()
    capped = find_peaks(torch.from_numpy(mask), torch.from_numpy(image), min_pixels=2, max_peaks_per_image=5)
    capped = capped.to_host()
    for b in range(3):
        mine = every.image_index == b
        brightest = np.sort(every.intensity[mine])[::-1][:5]
        np.testing.assert_array_equal(np.sort(capped.intensity[capped.image_index == b])[::-1], brightest)
    assert np.all(capped.npix >= 2)
    order = np.lexsort((capped.fs, capped.ss, capped.image_index))
    np.testing.assert_array_equal(order, np.arange(len(capped)))
    assert len(find_peaks(torch.from_numpy(mask), torch.from_numpy(image), max_peaks_per_image=0)) == 0


def test_find_peaks_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        find_peaks(torch.ones(1, 4, 4, dtype=torch.bool), torch.ones(1, 4, 5))


def test_identical_centroids_are_ordered_by_raster_position():
    """A ring around a lone pixel (two components, same centre of mass) keeps SciPy's order."""
    mask = np.zeros((1, 7, 7), dtype=bool)
    mask[0, 1:6, 1:6] = True
    mask[0, 2:5, 2:5] = False
    mask[0, 3, 3] = True
    table = find_peaks(torch.from_numpy(mask), torch.ones(1, 7, 7))
    assert table.ss.tolist() == table.fs.tolist() == [3.0, 3.0]
    assert table.npix.tolist() == [16, 1]


# ------------------------------------------------------------------------------------------
# Logits -> mask
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_argmax_mask_matches_torch_argmax_including_ties(dtype):
    logits = torch.randn(2, 2, 24, 20, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[:, 1, :4] = logits[:, 0, :4]  # exact ties go to class 0
    mask = peak_mask(logits)
    assert mask.dtype == torch.bool and mask.shape == (2, 24, 20)
    assert torch.equal(mask, logits.argmax(dim=1) == 1)
    assert not mask[:, :4].any()
    score = logits[:, 1:2].float() - logits[:, 0:1].float()
    assert torch.equal(peak_mask_from_score(score), mask)
    assert torch.equal(peak_mask_from_score(score[:, 0]), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.9, 0.999])
def test_threshold_mask_is_softmax_probability(dtype, threshold):
    logits = (3 * torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(1))).to(dtype)
    mask = peak_mask(logits, threshold)
    probability = torch.softmax(logits.double(), dim=1)[:, 1]
    clear = (probability - threshold).abs() > 1e-6
    assert torch.equal(mask[clear], (probability >= threshold)[clear])
    assert 0 < mask.sum() < mask.numel()
    score = logits[:, 1:2].float() - logits[:, 0:1].float()
    assert torch.equal(peak_mask_from_score(score, threshold), mask)


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.73, 0.999])
def test_threshold_is_exact_at_the_float32_boundary(threshold):
    """The smallest float32 score counted as a peak has sigmoid >= p; its predecessor does not."""
    logit = math.log(threshold / (1 - threshold))
    start = torch.tensor(logit, dtype=torch.float32)
    below_inf, above_inf = torch.tensor(-math.inf), torch.tensor(math.inf)
    candidates = [start]
    for _ in range(2):
        candidates += [torch.nextafter(candidates[-1], above_inf)]
    candidates = [torch.nextafter(torch.nextafter(start, below_inf), below_inf)] + candidates
    scores = torch.stack(candidates).reshape(1, 1, -1)
    with mpmath.workdps(60):  # float64 cannot resolve sigmoid near 0.5 for tiny scores
        sigmoid = [1 / (1 + mpmath.exp(-mpmath.mpf(s))) for s in scores.flatten().double().tolist()]
        expected = [bool(value >= mpmath.mpf(threshold)) for value in sigmoid]
    assert peak_mask_from_score(scores, threshold).flatten().tolist() == expected
    assert True in expected and False in expected


def test_mask_rejects_bad_arguments():
    with pytest.raises(ValueError):
        peak_mask(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        peak_mask_from_score(torch.zeros(1, 2, 4, 4))
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            peak_mask(torch.zeros(1, 2, 4, 4), bad)


def test_nan_logits_are_background():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = 5.0
    logits[0, 1, 0, 0] = math.nan
    logits[0, 0, 1, 1] = math.nan
    for threshold in (None, 0.5):
        assert peak_mask(logits, threshold).flatten().tolist() == [False, True, True, False]


# ------------------------------------------------------------------------------------------
# Back to frames
# ------------------------------------------------------------------------------------------


def test_peaks_to_frames_splits_by_request_and_frame():
    """Batch of 2 requests: request A = 2 frames x 3 panels (images 0-5), B = 1 frame x 3 panels."""
    mask = blobs((9, 40, 44), 4, seed=8)
    image = np.random.default_rng(8).integers(0, 500, mask.shape).astype(np.uint16)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image))
    host = table.to_host()
    assert isinstance(host, HostPeaks) and len(host) == len(table)
    request_a = peaks_to_frames(host, num_frames=2, panels_per_frame=3, first_image=0)
    request_b = peaks_to_frames(table, num_frames=1, panels_per_frame=3, first_image=6)
    frames = request_a + request_b
    assert len(frames) == 3
    assert sum(f["num_peaks"] for f in frames) == len(table)
    expected = scipy_peaks(mask, image)
    for f, frame in enumerate(frames):
        mine = expected["image_index"] // 3 == f
        assert frame["num_peaks"] == mine.sum() > 0
        assert frame["panel"] == (expected["image_index"][mine] % 3).tolist()
        assert frame["npix"] == expected["npix"][mine].tolist()
        np.testing.assert_allclose(frame["ss"], expected["ss"][mine], atol=1e-9)
        np.testing.assert_allclose(frame["fs"], expected["fs"][mine], atol=1e-9)
        np.testing.assert_allclose(frame["intensity_raw"], expected["intensity"][mine])
        assert all(type(v) is int for v in frame["panel"] + frame["npix"])
        assert all(type(v) is float for v in frame["ss"] + frame["fs"] + frame["intensity"])


def test_peaks_to_frames_panel_is_relative_to_first_image():
    mask = np.zeros((5, 4, 4), dtype=bool)
    mask[3, 1, 2] = mask[4, 0, 0] = True
    table = find_peaks(torch.from_numpy(mask), torch.ones(5, 4, 4))
    frames = peaks_to_frames(table, num_frames=1, panels_per_frame=2, first_image=3)
    assert frames == [
        {
            "num_peaks": 2,
            "panel": [0, 1],
            "ss": [1.0, 0.0],
            "fs": [2.0, 0.0],
            "npix": [1, 1],
            "intensity": [1.0, 0.0],  # (3, 3) is 4.2 px from the second peak: its annulus, at 1.0
            "intensity_raw": [1.0, 1.0],
        }
    ]


# ------------------------------------------------------------------------------------------
# Bounded labelling
# ------------------------------------------------------------------------------------------


def test_bounded_components_label_uncapped_panels_exactly():
    """Panels under the cap are labelled as without limits; the panel over it is left out."""
    mask = np.stack(
        [blobs((1, 96, 128), 20, seed=4)[0], random_mask((1, 96, 128), 0.6, seed=5)[0], serpentine(96, 128)]
    )
    fractions = mask.mean(axis=(1, 2))
    limits = LabelLimits(max_panel_fraction=0.55, max_iterations=None)
    assert fractions[0] < 0.55 < fractions[1] and fractions[2] < 0.55
    components = bounded_components(torch.from_numpy(mask), limits)
    assert components.capped.tolist() == [False, True, False]
    image = np.random.default_rng(7).integers(0, 4000, mask.shape).astype(np.uint16)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image), components=components)
    kept = mask.copy()
    kept[1] = False  # the capped panel reports nothing
    assert_table_equals_scipy(table, kept, image)


def test_all_ones_is_capped_before_any_labelling():
    mask = torch.ones(3, 40, 50, dtype=torch.bool)
    components = bounded_components(mask, LabelLimits())
    assert components.capped.all()
    assert components.pixel.numel() == 0 and components.root.numel() == 0
    assert len(find_peaks(mask, torch.ones(3, 40, 50), components=components)) == 0


def test_fraction_cap_is_inclusive_and_none_disables_it():
    mask = torch.zeros(2, 10, 10, dtype=torch.bool)
    mask[0, :5] = True  # exactly half
    mask[1, :6] = True
    assert bounded_components(mask, LabelLimits(0.5, None)).capped.tolist() == [False, True]
    assert not bounded_components(mask, LabelLimits(None, None)).capped.any()


def test_unsettled_panels_are_capped_at_the_iteration_limit():
    """A serpentine needs more than 4 iterations; blobs settle in fewer. With max_iterations=4 the
    serpentine's panel is capped and the blob panel is still exact."""
    snake = serpentine(96, 128)
    spots = blobs((1, 96, 128), 15, seed=8)[0]
    mask = np.stack([spots, snake])
    limits = LabelLimits(max_panel_fraction=None, max_iterations=4)
    components = bounded_components(torch.from_numpy(mask), limits)
    assert components.capped.tolist() == [False, True]
    image = np.random.default_rng(8).integers(0, 4000, mask.shape).astype(np.uint16)
    table = find_peaks(torch.from_numpy(mask), torch.from_numpy(image), components=components)
    assert_table_equals_scipy(table, np.stack([spots, np.zeros_like(snake)]), image)
    # without the limit the same serpentine settles into one component
    settled = bounded_components(torch.from_numpy(mask), LabelLimits(None, None))
    assert not settled.capped.any()


def test_components_must_match_the_mask():
    components = bounded_components(torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="components"):
        find_peaks(torch.zeros(2, 8, 9, dtype=torch.bool), torch.zeros(2, 8, 9), components=components)


@pytest.mark.parametrize("kwargs", [{"max_panel_fraction": 1.5}, {"max_panel_fraction": -0.1}, {"max_iterations": 0}])
def test_label_limits_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        LabelLimits(**kwargs)


def test_masks_over_the_cap_cost_at_most_a_fifth_more_than_a_typical_one():
    """One ePix10k2M frame (16 x 352 x 384), the server's default limits, timed in the same run
    (medians of interleaved repeats): all ones, a dense speckle and a serpentine per panel (each over
    the default cap) against a typical peak mask (~0.5 % of the pixels in 13-pixel spots). Without
    the limits all ones costs hundreds of times as much on a CPU."""
    torch.set_num_threads(1)
    shape = (16, 352, 384)
    typical = torch.from_numpy(blobs(shape, 50, seed=11))
    worst = {
        "all ones": torch.ones(shape, dtype=torch.bool),
        "speckle 60%": torch.from_numpy(random_mask(shape, 0.6, seed=12)),
        "serpentines": torch.from_numpy(np.broadcast_to(serpentine(352, 384), shape).copy()),
    }
    image = torch.from_numpy(np.random.default_rng(13).integers(0, 4000, shape).astype(np.uint16))
    limits = LabelLimits()

    def cost(mask: torch.Tensor) -> float:
        started = time.perf_counter()
        find_peaks(mask, image, components=bounded_components(mask, limits))
        return time.perf_counter() - started

    samples: dict[str, list[float]] = {name: [] for name in ["typical", *worst]}
    for _ in range(5):
        samples["typical"].append(cost(typical))
        for name, mask in worst.items():
            samples[name].append(cost(mask))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name in worst:
        assert medians[name] <= 1.2 * medians["typical"], medians


# ------------------------------------------------------------------------------------------
# Device
# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_pipeline_equals_scipy(dtype):
    mask = np.concatenate([blobs((4, 352, 384), 50, seed=9), serpentine(352, 384)[None]])
    image = np.random.default_rng(9).integers(0, 65535, mask.shape).astype(np.uint16)
    logits = torch.zeros(mask.shape[0], 2, 352, 384, dtype=dtype, device="cuda")
    logits[:, 1] = torch.from_numpy(mask).cuda().to(dtype) * 2 - 1
    cuda_mask = peak_mask(logits)
    table = find_peaks(cuda_mask, torch.from_numpy(image).cuda())
    assert table.ss.device.type == "cuda"
    assert_table_equals_scipy(table, mask, image)
    assert_labels_equal_scipy(bounded_components(cuda_mask).labels(), mask)
