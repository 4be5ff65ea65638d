"""The per-batch work budget: admission by estimated compute, calibration, and how the estimate follows load."""

from __future__ import annotations

import pytest

from peaknet_serve.serve.budget import Verdict, WorkBudget

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
    # noise that would make a cost negative: proportional fit instead
    budget.calibrate([(MPIX, 2.0), (2 * MPIX, 1.9)])
    assert budget.overhead_s == 0.0 and budget.seconds_per_pixel == pytest.approx(3.9 / (3 * MPIX))
    budget.calibrate([(MPIX, 0.0), (0, 1.0)])  # nothing usable: unchanged
    assert budget.seconds_per_pixel == pytest.approx(3.9 / (3 * MPIX))


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
