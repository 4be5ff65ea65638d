"""What to send, and when to stop: the run plan and the open-loop schedule."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class RunPlan:
    """Hands out tickets for requests: warm-up first, then the measured part, then stop.

    Thread-safe. ``claim(t)`` returns ``None`` once the measured part is over (``duration_s``
    seconds after the warm-up ended, or ``n_requests`` measured requests), else
    ``(index, is_warmup)``. ``t`` is the time of the request (now, or its scheduled time).
    ``interrupt()`` (Ctrl-C) makes the next ``claim`` stop the plan.
    """

    def __init__(self, warmup_s: float, duration_s: float | None, n_requests: int | None):
        if duration_s is None and n_requests is None:
            raise ValueError("give a duration or a request count")
        self.warmup_s, self.duration_s, self.n_requests = warmup_s, duration_s, n_requests
        self._issued, self._measured = 0, 0
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self.interrupted = False

    def claim(self, t: float) -> tuple[int, bool] | None:
        with self._lock:
            if self.interrupted:
                self.stopped.set()
            if self.stopped.is_set():
                return None
            warmup = t < self.warmup_s
            if not warmup:
                over_time = self.duration_s is not None and t >= self.warmup_s + self.duration_s
                over_count = self.n_requests is not None and self._measured >= self.n_requests
                if over_time or over_count:
                    self.stopped.set()
                    return None
                self._measured += 1
            self._issued += 1
            return self._issued - 1, warmup

    def stop(self) -> None:
        self.stopped.set()

    def interrupt(self) -> None:
        """Stop at the next ``claim``. Takes no lock, so a signal handler may call it at any point."""
        self.interrupted = True


@contextlib.contextmanager
def ctrl_c_calls(action: Callable[[], None]) -> Iterator[None]:
    """Within the block, SIGINT calls ``action`` instead of raising KeyboardInterrupt.

    Python runs a signal handler in the main thread between two bytecodes, wherever that thread
    is; a KeyboardInterrupt raised there can end up in code that swallows it (a finaliser, a
    cleanup that catches everything), so the run would not stop. ``action`` must only set state
    (no locks: the main thread may hold them). Outside the main thread nothing is installed and
    Ctrl-C stays a KeyboardInterrupt.
    """
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: action())
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def send_schedule(rate_hz: float, index: int) -> float:
    """Planned send time (s since the start) of the ``index``-th open-loop request."""
    if rate_hz <= 0:
        raise ValueError("rate must be positive")
    return index / rate_hz


def late_threshold_s(rate_hz: float) -> float:
    """A send starting more than half a period (at least 2 ms) after its slot counts as late."""
    return max(0.5 / rate_hz, 2e-3)
