"""The ignore ring around peak pixels of the training targets (training.dataset.ring_ignore) and
its path into the training crops."""

import numpy as np
import pytest
import torch

from peaknet_serve.training import train
from peaknet_serve.training.dataset import IGNORE_INDEX, SimulatedCrops, ring_ignore

X = IGNORE_INDEX  # an ignored target pixel


def test_ring_around_one_pixel_is_a_square_of_side_2r_plus_1():
    target = np.zeros((1, 9, 9), dtype=np.uint8)
    target[0, 4, 4] = 1
    for ring in (1, 2, 3):
        out = ring_ignore(target, ring)
        expected = np.zeros_like(target)
        expected[0, 4 - ring : 5 + ring, 4 - ring : 5 + ring] = X
        expected[0, 4, 4] = 1
        np.testing.assert_array_equal(out, expected)
    assert target.sum() == 1  # the input is not modified


def test_ring_around_two_adjacent_pixels():
    target = np.zeros((1, 6, 7), dtype=np.uint8)
    target[0, 2, 2:4] = 1
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, X, X, X, X, 0, 0],
            [0, X, 1, 1, X, 0, 0],
            [0, X, X, X, X, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(ring_ignore(target, 1)[0], expected)


def test_ring_stops_at_panel_edges_and_never_crosses_panels():
    target = np.zeros((3, 5, 6), dtype=np.uint8)
    target[1, 0, 0] = 1  # corner of the middle panel
    target[1, 2, 5] = 1  # right edge of the middle panel
    out = ring_ignore(target, 1)
    np.testing.assert_array_equal(out[0], 0)  # neighbouring panels untouched
    np.testing.assert_array_equal(out[2], 0)
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[0:2, 0:2] = X
    expected[1:4, 4:6] = X
    expected[0, 0] = expected[2, 5] = 1
    np.testing.assert_array_equal(out[1], expected)  # no wrap-around to the far edges
    assert out[1, :, 0].tolist() == [1, X, 0, 0, 0] and out[1, 4].tolist() == [0] * 6


def test_peak_and_ignored_pixels_are_kept_and_ring_zero_is_the_identity():
    rng = np.random.default_rng(0)
    target = rng.choice(np.array([0, 1, X], dtype=np.uint8), size=(2, 16, 16), p=[0.9, 0.04, 0.06])
    out = ring_ignore(target, 2)
    np.testing.assert_array_equal(out[target == 1], 1)
    np.testing.assert_array_equal(out[target == X], X)
    changed = out != target
    assert changed.any() and np.all(target[changed] == 0) and np.all(out[changed] == X)
    assert ring_ignore(target, 0) is target
    with pytest.raises(ValueError):
        ring_ignore(target, -1)


def test_a_2d_target_works_too():
    target = np.zeros((4, 4), dtype=np.uint8)
    target[3, 3] = 1
    out = ring_ignore(target, 1)
    assert out[2:, 2:].tolist() == [[X, X], [X, 1]] and int((out == X).sum()) == 3


def test_the_loss_ignores_the_ring():
    """Logits on the ring change the loss of the plain target, not that of the ringed one."""
    target = np.zeros((1, 8, 8), dtype=np.uint8)
    target[0, 3, 4] = 1
    ringed = torch.from_numpy(ring_ignore(target, 1))
    plain = torch.from_numpy(target)
    logits = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    moved = logits.clone()
    moved[:, 1][ringed == X] += 3.0
    assert train.focal_loss(moved, ringed) == pytest.approx(float(train.focal_loss(logits, ringed)), rel=1e-6)
    assert abs(float(train.focal_loss(moved, plain) - train.focal_loss(logits, plain))) > 1e-3


def test_training_crops_get_the_ring_and_the_same_images():
    """The ring changes only background target pixels to ignored, draws no random numbers (the
    images are those without it), and covers the ring of every peak pixel inside a crop."""
    plain = iter(SimulatedCrops(seed=2, crop=64, crops_per_frame=2, target_ring=0))
    ringed = iter(SimulatedCrops(seed=2, crop=64, crops_per_frame=2, target_ring=1))
    changed = 0
    for _ in range(4):
        (image0, target0), (image1, target1) = next(plain), next(ringed)
        torch.testing.assert_close(image0, image1, rtol=0, atol=0)
        t0, t1 = target0.numpy(), target1.numpy()
        diff = t0 != t1
        assert np.all(t0[diff] == 0) and np.all(t1[diff] == X)
        assert np.all(t1[ring_ignore(t0, 1) == X] == X)
        changed += int(diff.sum())
    assert changed > 0
    with pytest.raises(ValueError):
        SimulatedCrops(seed=0, target_ring=4)


def test_max_pixels_rings_only_the_small_peaks():
    target = np.zeros((2, 12, 12), dtype=np.uint8)
    target[0, 2, 2] = 1  # one pixel
    target[0, 6:9, 6:9] = 1  # 9 pixels
    target[1, 5, 5:7] = 1  # 2 pixels, other panel
    out = ring_ignore(target, 1, max_pixels=4)
    assert np.all(out[0, 1:4, 1:4][target[0, 1:4, 1:4] == 0] == IGNORE_INDEX)
    assert not np.any(out[0, 5:10, 5:10] == IGNORE_INDEX)  # the broad peak keeps its background
    assert np.count_nonzero(out[1] == IGNORE_INDEX) == 3 * 4 - 2
    np.testing.assert_array_equal(ring_ignore(target, 1, max_pixels=0), ring_ignore(target, 1))
    np.testing.assert_array_equal(ring_ignore(target, 1, max_pixels=9), ring_ignore(target, 1))
    with pytest.raises(ValueError):
        ring_ignore(target, 1, max_pixels=-1)


def test_max_pixels_counts_diagonal_neighbours_as_one_peak():
    target = np.zeros((8, 8), dtype=np.uint8)
    target[2, 2] = target[3, 3] = 1  # one 2-pixel peak, 8-connected
    assert np.count_nonzero(ring_ignore(target, 1, max_pixels=1) == IGNORE_INDEX) == 0
    assert np.count_nonzero(ring_ignore(target, 1, max_pixels=2) == IGNORE_INDEX) == 9 + 9 - 4 - 2
