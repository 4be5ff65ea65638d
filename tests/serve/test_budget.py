"""The per-batch work budget: admission by estimated compute, and how the estimate follows measurements."""

from __future__ import annotations

import pytest

from peaknet_serve.serve.budget import Verdict, WorkBudget

MPIX = 1_000_000


def test_uncalibrated_or_switched_off_admits_everything():
    assert WorkBudget(10.0).plan([10**12, 10**12]) == [Verdict.RUN, Verdict.RUN]
    off = WorkBudget(10.0, fraction=0.0, seconds_per_pixel=1.0)
    assert not off.enabled and off.plan([10**9]) == [Verdict.RUN]


def test_batch_mates_past_the_budget_are_busy_and_oversized_requests_too_large():
    # 1 s per Mpixel, budget 0.5 * 10 s = 5 s
    budget = WorkBudget(10.0, fraction=0.5, seconds_per_pixel=1e-6)
    assert budget.budget_s == 5.0
    plan = budget.plan([3 * MPIX, 3 * MPIX, 2 * MPIX, 6 * MPIX, 0])
    # 3 s runs; 3 s more would make 6 > 5: busy; 2 s fits (5 s); 6 s alone exceeds 5 s; empty fits
    assert plan == [Verdict.RUN, Verdict.BUSY, Verdict.RUN, Verdict.TOO_LARGE, Verdict.RUN]


def test_three_requests_that_each_fit_are_not_all_run_together():
    """Three requests of 0.4 x the timeout each: together 1.2 x (the worker would be killed)."""
    budget = WorkBudget(120.0, fraction=0.5, seconds_per_pixel=48.0 / (16 * 16 * 352 * 384))
    plan = budget.plan([16 * 16 * 352 * 384] * 3)
    assert plan == [Verdict.RUN, Verdict.BUSY, Verdict.BUSY]
    admitted = sum(budget.estimate_s(16 * 16 * 352 * 384) for v in plan if v is Verdict.RUN)
    assert admitted <= budget.response_timeout_s / 2


def test_estimate_rises_fast_and_falls_slowly():
    budget = WorkBudget(10.0, seconds_per_pixel=1e-6)
    budget.observe(MPIX, 3.0)  # 3x slower: halfway up at once
    assert budget.seconds_per_pixel == pytest.approx(2e-6)
    budget.observe(MPIX, 0.5)  # much faster: a tenth of the way down
    assert budget.seconds_per_pixel == pytest.approx(2e-6 + 0.1 * (0.5e-6 - 2e-6))


def test_first_observation_calibrates_and_bad_ones_are_ignored():
    budget = WorkBudget(10.0)
    for pixels, seconds in [(0, 1.0), (MPIX, 0.0), (MPIX, float("nan")), (MPIX, -1.0)]:
        budget.observe(pixels, seconds)
    assert budget.seconds_per_pixel == 0.0
    budget.observe(2 * MPIX, 1.0)
    assert budget.seconds_per_pixel == pytest.approx(0.5e-6) and budget.enabled


def test_messages_say_what_fits():
    budget = WorkBudget(20.0, fraction=0.5, seconds_per_pixel=1e-6)  # 10 s per batch
    message = budget.too_large_message(30 * MPIX, 3 * MPIX, "cpu")
    assert "30.0 s" in message and "10.0 s" in message and "at most 3 frame(s)" in message and "cpu" in message
    assert "retry" in budget.busy_message(MPIX)
    assert budget.retry_after_s() == 10.0 and WorkBudget(1.0, 0.1, 1e-6).retry_after_s() == 1.0


@pytest.mark.parametrize("kwargs", [{"fraction": 1.5}, {"fraction": -0.1}, {"response_timeout_s": 0}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        WorkBudget(**{"response_timeout_s": 10.0, **kwargs})
