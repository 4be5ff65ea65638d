"""The per-batch work budget: admission by estimated compute, calibration, and how the estimate follows load."""

from __future__ import annotations

import math

import pytest

from peaknet_serve.serve.budget import Verdict, WorkBudget, calibration_shapes, fit_cost

MPIX = 1_000_000
EPIX_FRAME = 16 * 352 * 384


def test_uncalibrated_or_switched_off_admits_everything():
    assert WorkBudget(10.0).plan([10**12, 10**12]) == [Verdict.RUN, Verdict.RUN]
    off = WorkBudget(10.0, fraction=0.0, seconds_per_pixel=1.0)
    assert not off.enabled and off.plan([10**9]) == [Verdict.RUN]


def test_batch_mates_past_the_budget_are_busy_and_oversized_requests_too_large():
    # 0.5 s + 1 s per Mpixel, budget 0.5 * 10 s = 5 s
    budget = WorkBudget(10.0, fraction=0.5, overhead_s=0.5, seconds_per_pixel=1e-6)
    assert budget.budget_s == 5.0
    plan = budget.plan([2 * MPIX, 2 * MPIX, MPIX, 5 * MPIX, 0])
    # 2.5 s runs; +2 s = 4.5 s runs; +1 s would be 5.5 s: busy; 5.5 s alone: too large; nothing more: runs
    assert plan == [Verdict.RUN, Verdict.RUN, Verdict.BUSY, Verdict.TOO_LARGE, Verdict.RUN]


def test_three_requests_that_each_fit_are_not_all_run_together():
    """Three 16-frame ePix10k2M requests of 0.4 x responseTimeout each: together 1.2 x, the worker would be killed."""
    pixels = 16 * EPIX_FRAME
    budget = WorkBudget(120.0, fraction=0.5, seconds_per_pixel=48.0 / pixels)
    plan = budget.plan([pixels] * 3)
    assert plan == [Verdict.RUN, Verdict.BUSY, Verdict.BUSY]
    assert budget.estimate_s(pixels * plan.count(Verdict.RUN)) <= budget.response_timeout_s / 2


def test_a_slow_host_makes_requests_busy_not_too_large():
    budget = WorkBudget(10.0, fraction=0.5, seconds_per_pixel=1e-6)  # 5 s per batch
    budget.observe(MPIX, 4.0)  # 4x slower now: load 2.5
    assert budget.load == pytest.approx(2.5)
    # 3 Mpixel: 7.5 s now (does not fit), 3 s at the calibrated speed: retry later, not "too large"
    assert budget.plan([3 * MPIX, 6 * MPIX]) == [Verdict.BUSY, Verdict.TOO_LARGE]
    fast = WorkBudget(10.0, fraction=0.5, seconds_per_pixel=1e-6, load=0.5)  # faster than calibrated
    assert fast.plan([8 * MPIX]) == [Verdict.RUN] and fast.frames_that_fit(MPIX) == 10


def test_calibration_fits_overhead_and_per_pixel_cost():
    budget = WorkBudget(10.0)
    budget.calibrate([(MPIX, 0.3 + 1.0), (4 * MPIX, 0.3 + 4.0)])
    assert budget.overhead_s == pytest.approx(0.3) and budget.seconds_per_pixel == pytest.approx(1e-6)
    assert budget.estimate_s(2 * MPIX) == pytest.approx(2.3)
    budget.calibrate([(MPIX, 0.0), (0, 1.0)])  # nothing usable: unchanged
    assert budget.overhead_s == pytest.approx(0.3) and budget.seconds_per_pixel == pytest.approx(1e-6)


def test_fit_is_least_squares_over_several_runs():
    # 0.2 s + 2 s per Mpixel, the middle run 0.1 s slow: the line moves by a third of it at most
    overhead, slope = fit_cost([(MPIX, 2.2), (2 * MPIX, 4.3), (3 * MPIX, 6.2)])
    assert slope == pytest.approx(2e-6) and overhead == pytest.approx(0.2 + 0.1 / 3)


def test_fit_clamps_noise_instead_of_extrapolating_it():
    # the larger batch was not slower: no slope to trust, the largest batch's seconds per pixel
    assert fit_cost([(MPIX, 2.0), (2 * MPIX, 1.9)]) == (0.0, pytest.approx(1.9 / (2 * MPIX)))
    assert fit_cost([(MPIX, 1.0), (2 * MPIX, 1.0)]) == (0.0, pytest.approx(0.5e-6))
    # a negative overhead: 0, the slope refitted through the origin (least squares)
    assert fit_cost([(MPIX, 0.5), (2 * MPIX, 2.0)]) == (0.0, pytest.approx(4.5 / 5 / MPIX))
    # one run, or several of the same size: proportional
    assert fit_cost([(2 * MPIX, 1.0)]) == (0.0, pytest.approx(0.5e-6))
    assert fit_cost([(2 * MPIX, 1.0), (2 * MPIX, 3.0)]) == (0.0, pytest.approx(1.5e-6))
    assert fit_cost([(0, 1.0), (MPIX, float("inf")), (MPIX, -1.0)]) is None


def test_calibration_shapes_separate_the_fixed_cost_within_a_micro_batch():
    # the default warm-up: an eighth of it and the warm-up shape itself
    assert calibration_shapes([(16, 352, 384)], 64) == [(2, 352, 384), (16, 352, 384)]
    # a small warm-up shape is raised to 8x the small batch's pixels, within max_batch_panels
    assert calibration_shapes([(2, 64, 96)], 16) == [(1, 64, 96), (8, 64, 96)]
    assert calibration_shapes([(2, 64, 96)], 4) == [(1, 64, 96), (4, 64, 96)]
    # a warm-up shape past one micro-batch is timed as one micro-batch
    assert calibration_shapes([(64, 352, 384)], 16) == [(2, 352, 384), (16, 352, 384)]
    # several warm-up shapes: the smallest for the small batch, the largest for the large one
    assert calibration_shapes([(16, 352, 384), (1, 1920, 1920), (2, 64, 96)], 64) == [(1, 64, 96), (1, 1920, 1920)]
    # one panel per micro-batch: the cost is proportional to the panels, one shape is enough
    assert calibration_shapes([(4, 512, 1024)], 1) == [(1, 512, 1024)]
    assert calibration_shapes([], 64) == []


def test_small_and_large_calibration_predict_a_large_batch_of_a_linear_cost():
    """A device costing 7.5 ms per batch + 1.35 s per Mpixel (the tiny test model on this CPU), timed on
    the e2e tests' warm-up shape with 5 % noise in the worst direction (small run slow, large run
    fast): the estimate of 4 ePix10k2M frames is within 10 % of the truth, where a slope from the small
    batch alone would be about twice too high."""

    def cost(pixels: int) -> float:
        return 7.5e-3 + 1.35e-6 * pixels

    small, large = (math.prod(shape) for shape in calibration_shapes([(2, 64, 96)], 16))
    budget = WorkBudget(120.0)
    budget.calibrate([(small, 1.05 * cost(small)), (large, 0.95 * cost(large))])
    pixels = 4 * EPIX_FRAME
    assert budget.estimate_s(pixels) == pytest.approx(cost(pixels), rel=0.1)
    assert 1.05 * cost(small) / small * pixels > 1.8 * cost(pixels)
    assert budget.plan([pixels]) == [Verdict.RUN]  # about 11.7 s of a 60 s budget


def test_a_fixed_cost_that_hides_the_pixel_cost_gives_a_cautious_estimate():
    """0.3 s per batch + 1.3 s per Mpixel timed on batches whose pixels cost a fifth of that: 5 % noise
    would turn the slope to less than half the truth, so the largest run's rate is used: an estimate
    above the truth, never below."""

    def cost(pixels: int) -> float:
        return 0.3 + 1.3e-6 * pixels

    small, large = 6144, 49152
    overhead, slope = fit_cost([(small, 1.05 * cost(small)), (large, 0.95 * cost(large))])
    assert overhead == 0.0 and slope == pytest.approx(0.95 * cost(large) / large)
    assert cost(4 * EPIX_FRAME) < overhead + slope * 4 * EPIX_FRAME
    # the same device timed on panels large enough for the pixels to show: fitted as a line
    overhead, slope = fit_cost([(EPIX_FRAME // 8, cost(EPIX_FRAME // 8)), (EPIX_FRAME, cost(EPIX_FRAME))])
    assert overhead == pytest.approx(0.3) and slope == pytest.approx(1.3e-6)


def test_load_rises_fast_and_falls_slowly():
    budget = WorkBudget(10.0, seconds_per_pixel=1e-6)
    budget.observe(MPIX, 3.0)  # 3x slower: halfway up at once
    assert budget.load == pytest.approx(2.0) and budget.estimate_s(MPIX) == pytest.approx(2.0)
    budget.observe(MPIX, 0.5)  # much faster: a quarter of the way down
    assert budget.load == pytest.approx(2.0 + 0.25 * (0.5 - 2.0))


def test_first_observation_calibrates_and_bad_ones_are_ignored():
    budget = WorkBudget(10.0)
    for pixels, seconds in [(0, 1.0), (MPIX, 0.0), (MPIX, float("nan")), (MPIX, -1.0)]:
        budget.observe(pixels, seconds)
    assert budget.seconds_per_pixel == 0.0 and not budget.enabled
    budget.observe(2 * MPIX, 1.0)
    assert budget.seconds_per_pixel == pytest.approx(0.5e-6) and budget.enabled and budget.load == 1.0


def test_messages_say_what_fits():
    budget = WorkBudget(20.0, fraction=0.5, overhead_s=1.0, seconds_per_pixel=1e-6)  # 10 s per batch
    assert budget.frames_that_fit(3 * MPIX) == 3  # 1 + 3 * 3 = 10 s
    message = budget.too_large_message(30 * MPIX, 3 * MPIX, "cpu")
    assert "31.0 s" in message and "10.0 s" in message and "at most 3 frame(s)" in message and "cpu" in message
    assert "retry" in budget.busy_message(MPIX)
    assert budget.retry_after_s() == 10.0 and WorkBudget(1.0, 0.1, 0.0, 1e-6).retry_after_s() == 1.0
    assert WorkBudget(2.0, 0.5, 2.0, 1e-6).frames_that_fit(MPIX) == 0  # the overhead alone exceeds 1 s


@pytest.mark.parametrize("kwargs", [{"fraction": 1.5}, {"fraction": -0.1}, {"response_timeout_s": 0}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        WorkBudget(**{"response_timeout_s": 10.0, **kwargs})


def test_a_part_of_a_running_batch_must_end_before_the_deadline():
    # 1 s per Mpixel, responseTimeout 10 s: a part must end by 8 s into the batch
    budget = WorkBudget(10.0, fraction=0.5, seconds_per_pixel=1e-6)
    assert budget.ends_in_time(0.0, 4 * MPIX) and budget.ends_in_time(4.0, 4 * MPIX)
    assert not budget.ends_in_time(4.5, 4 * MPIX)
    budget.load = 2.0  # the parts so far ran twice as slow as calibrated
    assert not budget.ends_in_time(1.0, 4 * MPIX) and budget.ends_in_time(1.0, 3 * MPIX)
    assert "would not end in time" in budget.late_message(4.5, 4 * MPIX)


def test_with_admission_off_every_part_runs():
    off = WorkBudget(10.0, fraction=0.0, seconds_per_pixel=1e-6)
    assert off.ends_in_time(100.0, 10**12)
