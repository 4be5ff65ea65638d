"""Peak matching on hand-made cases."""

import numpy as np

from peaknet_serve.sim.peaksim.matching import (
    MatchCounts,
    assign_within_radius,
    match_peaks,
    peak_list_agreement,
    position_errors,
    position_summary,
)


def pts(*rows):
    return np.array(rows, dtype=float).reshape(-1, 3)


def test_perfect_and_empty_cases():
    truth = pts((0, 10, 10), (1, 5, 5))
    assert match_peaks(truth, truth).as_dict()["f1"] == 1.0
    nothing = match_peaks(pts(), truth)
    assert (nothing.tp, nothing.fp, nothing.fn, nothing.recall, nothing.precision) == (0, 0, 2, 0.0, 1.0)
    spurious = match_peaks(pts((0, 1, 1)), pts())
    assert (spurious.fp, spurious.precision, spurious.recall) == (1, 0.0, 1.0)


def test_radius_and_panel_are_respected():
    truth = pts((0, 10, 10))
    assert match_peaks(pts((0, 11.9, 10)), truth).tp == 1
    assert match_peaks(pts((0, 11.5, 11.5)), truth).tp == 0  # 2.12 px away
    assert match_peaks(pts((1, 10, 10)), truth).tp == 0  # same spot, other panel


def test_one_to_one_assignment_maximises_matches():
    # Greedy nearest-first would pair found[0] with truth[1] (0.5 px) and leave truth[0] unmatched.
    found = pts((0, 10, 11.5), (0, 10, 13.5))
    truth = pts((0, 10, 10), (0, 10, 12))
    f_idx, t_idx = assign_within_radius(found, truth)
    assert sorted(zip(f_idx.tolist(), t_idx.tolist())) == [(0, 0), (1, 1)]
    counts = match_peaks(found, truth)
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 0)


def test_two_detections_on_one_peak_give_one_false_positive():
    counts = match_peaks(pts((0, 10, 10), (0, 10.5, 10)), pts((0, 10, 10)))
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 0)
    assert np.isclose(counts.precision, 0.5) and np.isclose(counts.f1, 2 / 3)


def test_detections_near_weak_peaks_are_excused():
    strong, weak = pts((0, 10, 10)), pts((0, 50, 50))
    counts = match_peaks(pts((0, 10, 10), (0, 51, 50), (0, 80, 80)), strong, weak)
    assert (counts.tp, counts.fp, counts.fn, counts.excused) == (1, 1, 0, 1)
    missed_weak = match_peaks(pts((0, 10, 10)), strong, weak)  # not finding weak is fine
    assert (missed_weak.fn, missed_weak.f1) == (0, 1.0)


def test_counts_add_up():
    total = MatchCounts(3, 1, 2, 0) + MatchCounts(1, 0, 0, 4)
    assert total == MatchCounts(4, 1, 2, 4)
    assert np.isclose(total.precision, 0.8) and np.isclose(total.recall, 4 / 6)


def test_peak_list_agreement():
    a = pts((0, 1, 1), (0, 5, 5), (2, 9, 9))
    assert peak_list_agreement(a, a) == 1.0
    assert peak_list_agreement(pts(), pts()) == 1.0
    assert np.isclose(peak_list_agreement(a, pts((0, 1.2, 1), (0, 5, 5))), 2 / 3)


def test_detections_on_the_excused_region_count_neither_way():
    region = np.zeros((2, 10, 10), dtype=bool)
    region[1, 2:5, 2:5] = True
    strong = np.array([[0, 5.0, 5.0]])
    found = np.array(
        [
            [0, 5.2, 5.1],  # matched
            [1, 3.4, 2.4],  # on the region (nearest pixel (3, 2))
            [1, 4.6, 4.0],  # nearest pixel (5, 4): off the region
            [0, 3.0, 3.0],  # same pixel on the other panel: off the region
            [1, 12.0, 3.0],
        ]
    )  # outside the frame
    counts = match_peaks(found, strong, None, excused_region=region)
    assert (counts.tp, counts.fp, counts.fn, counts.excused) == (1, 3, 0, 1)
    weak = np.array([[1, 4.5, 4.5]])  # excused by the weak point first, counted once
    counts = match_peaks(found, strong, weak, excused_region=region)
    assert (counts.tp, counts.fp, counts.excused) == (1, 2, 2)


def test_position_errors_are_the_distances_of_assigned_pairs():
    found = pts((0, 10.3, 10.4), (0, 30, 30), (1, 5, 5.5), (0, 20, 21.9))
    truth = pts((0, 10, 10), (1, 5, 5), (0, 20, 20), (0, 50, 50))
    errors = position_errors(found, truth)
    np.testing.assert_allclose(np.sort(errors), [0.5, 0.5, 1.9])
    assert position_errors(pts(), truth).shape == (0,)
    summary = position_summary(errors)
    assert summary["pairs"] == 3
    np.testing.assert_allclose([summary["median"], summary["mean"]], [0.5, 2.9 / 3])
    assert position_summary(np.zeros(0)) == {"pairs": 0, "median": None, "mean": None, "p90": None}
