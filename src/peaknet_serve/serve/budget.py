"""Per-batch work budget: what one TorchServe batch may hold so that it is answered inside ``responseTimeout``.

TorchServe gives a worker ``responseTimeout`` seconds per batch; past that it kills the worker and
every request of the batch gets "Worker died.". Requests inside the size limits can still add up to
more than that (three 16-frame requests on a CPU), so the handler admits the requests of each batch
against a budget of ``fraction * responseTimeout`` seconds of estimated compute:

* a request whose own estimate exceeds the budget even at the speed measured at start-up cannot
  be served on this device at all: **413** ``too_large``, with the number of frames that would fit;
* a request that does not fit after its batch-mates, or only not while the host is slower than at
  start-up: **503** ``busy`` with ``Retry-After``.

While the batch runs, its admitted requests go through the network in parts of at least one
micro-batch, and each part after the first starts only if, by the estimate updated with the parts
measured so far, it ends before ``DEADLINE_FRACTION`` of ``responseTimeout``; the rest are answered
**503** ``busy`` too. A batch that runs slower than admission estimated (a host that turned busy
mid-batch) is cut short, not killed.

The estimate of a batch is ``load * (overhead_s + pixels * seconds_per_pixel)``: the two costs are
fitted on the worker's device at start-up, and ``load`` follows every batch measured since (up
quickly, down slowly), so the estimate tracks the device actually in use, its precision and how busy
the host is. The start-up fit needs two batch sizes far enough apart that the fixed cost separates
from the per-pixel one (:func:`calibration_shapes`: a small batch and one at least
``CALIBRATION_RATIO`` times its pixels, up to a full micro-batch), each timed as the median of a few
runs, then a line through them (:func:`fit_cost`); a slope from one small batch alone would charge
the fixed cost to every pixel and refuse large requests that run well inside the timeout. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

# TorchServe's responseTimeout when neither the archive nor config.properties sets one
DEFAULT_RESPONSE_TIMEOUT_S = 120.0
# the large calibration batch holds at least this many times the small one's pixels
CALIBRATION_RATIO = 8
# a part of a running batch starts only if it is estimated to end before this share of responseTimeout
DEADLINE_FRACTION = 0.8
# below this share of the largest calibration run, a fitted per-pixel cost is lost in the noise of the fixed one
MIN_PIXEL_SHARE = 0.25

Shape = tuple[int, int, int]  # (panels, H, W)


def calibration_shapes(
    warmup_shapes: Sequence[Shape], max_batch_panels: int, ratio: int = CALIBRATION_RATIO
) -> list[Shape]:
    """The (panels, H, W) batches the start-up fit times, ascending in pixels.

    Small: the smallest warm-up shape with a ``ratio``-th of its panels (at least one, within one
    micro-batch). Large: the largest warm-up shape with its panels raised until it holds ``ratio``
    times the small batch's pixels, but at most ``max_batch_panels`` (a request of more panels runs
    micro-batch after micro-batch, so its cost grows linearly from there). One shape only when the
    two coincide (``max_batch_panels`` 1: the cost is proportional to the panels anyway).
    """
    if not warmup_shapes:
        return []
    smallest = min(warmup_shapes, key=math.prod)
    largest = max(warmup_shapes, key=math.prod)
    small = (max(1, min(smallest[0], max_batch_panels) // ratio), smallest[1], smallest[2])
    panel_pixels = largest[1] * largest[2]
    wanted = max(largest[0], math.ceil(ratio * math.prod(small) / panel_pixels))
    large = (min(wanted, max_batch_panels), largest[1], largest[2])
    return [small] if math.prod(large) <= math.prod(small) else [small, large]


def fit_cost(runs: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """``(overhead_s, seconds_per_pixel)`` of the least-squares line through ``(pixels, seconds)`` runs;
    ``None`` when no run is usable (pixels and seconds must be positive and finite).

    Noise is clamped, never extrapolated: a slope that is not positive, or one that explains less than
    ``MIN_PIXEL_SHARE`` of the largest run (the fixed cost dominates and a few percent of noise would
    change the slope several-fold), falls back to the largest run's seconds per pixel (cautious: it
    charges that run's fixed cost to its pixels, and is the run that cost distorts least); a negative
    overhead is clamped to 0 with the slope refitted through the origin. One run gives the
    proportional fit.
    """
    runs = [(p, t) for p, t in runs if p > 0 and t > 0 and math.isfinite(t)]
    if not runs:
        return None
    mean_p = sum(p for p, _ in runs) / len(runs)
    mean_t = sum(t for _, t in runs) / len(runs)
    spread = sum((p - mean_p) ** 2 for p, _ in runs)
    slope = sum((p - mean_p) * (t - mean_t) for p, t in runs) / spread if spread > 0 else 0.0
    pixels, seconds = max(runs)
    if slope * pixels < MIN_PIXEL_SHARE * seconds:
        return 0.0, seconds / pixels
    overhead = mean_t - slope * mean_p
    if overhead < 0:
        return 0.0, sum(p * t for p, t in runs) / sum(p * p for p, _ in runs)
    return overhead, slope


class Verdict(Enum):
    RUN = "run"
    BUSY = "busy"  # 503: fits alone, not in this batch
    TOO_LARGE = "too_large"  # 413: does not fit in any batch on this device


@dataclass
class WorkBudget:
    """Admission of a batch's requests by estimated compute time.

    Args:
        response_timeout_s: TorchServe's ``responseTimeout`` for this model.
        fraction: share of it that a batch's estimated compute may take; 0 switches admission off.
        overhead_s: fixed cost of running a batch on this device (launches, peak extraction, copies).
        seconds_per_pixel: cost of one more input pixel; 0 until calibrated (then everything is admitted).
        load: measured / calibrated time of recent batches (1: as fast as at start-up).
        rise: weight of a slower batch in ``load`` (a slowdown is followed within a batch or two).
        fall: weight of a faster batch (one quick batch does not undo a slow host).
    """

    response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S
    fraction: float = 0.5
    overhead_s: float = 0.0
    seconds_per_pixel: float = 0.0
    load: float = 1.0
    rise: float = 0.5
    fall: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        if self.response_timeout_s <= 0:
            raise ValueError(f"response_timeout_s must be positive, got {self.response_timeout_s}")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0.0 and self.seconds_per_pixel > 0.0

    @property
    def budget_s(self) -> float:
        """Seconds of estimated compute one batch may hold."""
        return self.fraction * self.response_timeout_s

    def calibrate(self, runs: Sequence[tuple[int, float]]) -> None:
        """Set ``overhead_s`` and ``seconds_per_pixel`` from ``(pixels, seconds)`` runs (:func:`fit_cost`)
        and ``load`` to 1; unchanged when no run is usable."""
        fitted = fit_cost(runs)
        if fitted is not None:
            self.overhead_s, self.seconds_per_pixel = fitted
            self.load = 1.0

    def estimate_s(self, pixels: int) -> float:
        """Estimated compute seconds of a batch of ``pixels`` input pixels."""
        return self.load * (self.overhead_s + pixels * self.seconds_per_pixel)

    def unloaded_s(self, pixels: int) -> float:
        """The estimate at the speed calibrated at start-up (or faster, when the host is faster now)."""
        return min(self.load, 1.0) * (self.overhead_s + pixels * self.seconds_per_pixel)

    def plan(self, pixels: Sequence[int]) -> list[Verdict]:
        """One verdict per request (in batch order): admitted greedily while the batch's total fits."""
        if not self.enabled:
            return [Verdict.RUN] * len(pixels)
        verdicts, admitted = [], 0
        for count in pixels:
            if self.unloaded_s(count) > self.budget_s:
                verdicts.append(Verdict.TOO_LARGE)
            elif self.estimate_s(admitted + count) > self.budget_s:
                verdicts.append(Verdict.BUSY)
            else:
                admitted += count
                verdicts.append(Verdict.RUN)
        return verdicts

    def observe(self, pixels: int, seconds: float) -> None:
        """Fold one measured batch (``pixels`` input pixels in ``seconds``) into ``load``."""
        if pixels <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        if self.seconds_per_pixel <= 0.0:
            self.calibrate([(pixels, seconds)])
            return
        ratio = seconds / (self.overhead_s + pixels * self.seconds_per_pixel)
        self.load += (self.rise if ratio > self.load else self.fall) * (ratio - self.load)

    def ends_in_time(self, elapsed_s: float, pixels: int) -> bool:
        """Whether a part of ``pixels`` pixels, started ``elapsed_s`` into its batch, is estimated to end
        before ``DEADLINE_FRACTION`` of responseTimeout (always, with admission off)."""
        if not self.enabled:
            return True
        return elapsed_s + self.estimate_s(pixels) <= DEADLINE_FRACTION * self.response_timeout_s

    def retry_after_s(self) -> float:
        """Seconds a refused batch-mate should wait: about one full batch."""
        return max(1.0, self.budget_s)

    def frames_that_fit(self, pixels_per_frame: int) -> int:
        """Most frames of ``pixels_per_frame`` pixels one request may hold on this device."""
        room = self.budget_s / min(self.load, 1.0) - self.overhead_s
        return max(0, int(room / (pixels_per_frame * self.seconds_per_pixel))) if room > 0 else 0

    def too_large_message(self, pixels: int, pixels_per_frame: int, device: str) -> str:
        return (
            f"this request needs about {self.estimate_s(pixels):.1f} s of compute on {device}, more than the "
            f"{self.budget_s:.1f} s one batch may take ({self.fraction:.0%} of responseTimeout "
            f"{self.response_timeout_s:.0f} s); send at most {self.frames_that_fit(pixels_per_frame)} frame(s) "
            "of this size per request."
        )

    def late_message(self, elapsed_s: float, pixels: int) -> str:
        return (
            f"this batch runs slower than estimated: {elapsed_s:.1f} s of responseTimeout "
            f"{self.response_timeout_s:.0f} s are gone and this request (about {self.estimate_s(pixels):.1f} s now) "
            "would not end in time: retry."
        )

    def busy_message(self, pixels: int) -> str:
        return (
            f"this batch is full: with the requests before this one it would take more than the "
            f"{self.budget_s:.1f} s one batch may take; this one (about {self.estimate_s(pixels):.1f} s) fits "
            "alone: retry."
        )
