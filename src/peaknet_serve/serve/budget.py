"""Per-batch work budget: what one TorchServe batch may hold so that it is answered inside ``responseTimeout``.

TorchServe gives a worker ``responseTimeout`` seconds per batch; past that it kills the worker and
every request of the batch gets "Worker died.". Requests inside the size limits can still add up to
more than that (three 16-frame requests on a CPU), so the handler admits the requests of each batch
against a budget of ``fraction * responseTimeout`` seconds of estimated compute:

* a request whose own estimate exceeds the budget cannot be served on this device at all:
  **413** ``too_large``, with the number of frames that would fit;
* a request that fits alone but not after its batch-mates: **503** ``busy`` with ``Retry-After``.

The estimate is ``pixels * seconds_per_pixel``, calibrated on the worker's device at start-up and
updated after every batch (up quickly, down slowly), so it follows the device actually in use,
its precision and its load. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

# TorchServe's responseTimeout when neither the archive nor config.properties sets one
DEFAULT_RESPONSE_TIMEOUT_S = 120.0


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
        seconds_per_pixel: measured cost of one input pixel on this worker's device; 0 until
            calibrated (everything is admitted until then).
        rise: weight of a slower measurement (the estimate follows a slowdown within a batch or two).
        fall: weight of a faster measurement (one quick batch does not undo a slow device).
    """

    response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S
    fraction: float = 0.5
    seconds_per_pixel: float = 0.0
    rise: float = 0.5
    fall: float = 0.1

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

    def estimate_s(self, pixels: int) -> float:
        """Estimated compute seconds for ``pixels`` input pixels."""
        return pixels * self.seconds_per_pixel

    def plan(self, pixels: Sequence[int]) -> list[Verdict]:
        """One verdict per request (in batch order): admitted greedily while the total fits."""
        if not self.enabled:
            return [Verdict.RUN] * len(pixels)
        verdicts, spent = [], 0.0
        for count in pixels:
            cost = self.estimate_s(count)
            if cost > self.budget_s:
                verdicts.append(Verdict.TOO_LARGE)
            elif spent + cost > self.budget_s:
                verdicts.append(Verdict.BUSY)
            else:
                spent += cost
                verdicts.append(Verdict.RUN)
        return verdicts

    def observe(self, pixels: int, seconds: float) -> None:
        """Fold one measured run (``pixels`` input pixels in ``seconds``) into the estimate."""
        if pixels <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        rate = seconds / pixels
        if self.seconds_per_pixel <= 0.0:
            self.seconds_per_pixel = rate
            return
        weight = self.rise if rate > self.seconds_per_pixel else self.fall
        self.seconds_per_pixel += weight * (rate - self.seconds_per_pixel)

    def retry_after_s(self) -> float:
        """Seconds a refused batch-mate should wait: about one full batch."""
        return max(1.0, self.budget_s)

    def too_large_message(self, pixels: int, pixels_per_frame: int, device: str) -> str:
        frames = int(self.budget_s / max(self.estimate_s(pixels_per_frame), 1e-12))
        return (
            f"this request needs about {self.estimate_s(pixels):.1f} s of compute on {device}, more than the "
            f"{self.budget_s:.1f} s one batch may take ({self.fraction:.0%} of responseTimeout "
            f"{self.response_timeout_s:.0f} s); send at most {max(frames, 0)} frame(s) of this size per request."
        )

    def busy_message(self, pixels: int) -> str:
        return (
            f"this batch is full: the requests before this one already take the {self.budget_s:.1f} s one batch "
            f"may take; this one (about {self.estimate_s(pixels):.1f} s) fits alone: retry."
        )
