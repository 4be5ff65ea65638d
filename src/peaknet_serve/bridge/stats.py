"""Live counters of a bridge run: rates in and out, hits, failures, lag, back-pressure.

*Lag* is the time from a message's arrival at the bridge to the server's answer for its frames
(median and 99th percentile over the last report interval). *Backlog* is frames received and not
yet answered. *Stalled* is the time the receiver waited for room in the request queue: while it
waits it reads nothing from ZMQ, so the producer is being slowed down (the server is not keeping
up); a bridge that keeps up is never stalled.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Counts:
    messages: int = 0
    bad_messages: int = 0
    bytes: int = 0
    frames_in: int = 0
    frames_out: int = 0
    failed: int = 0
    hits: int = 0
    peaks: int = 0
    retries: int = 0
    files: int = 0
    stalled_s: float = 0.0


@dataclass
class Snapshot:
    """The counters at one moment (``t`` seconds since the start)."""

    t: float
    counts: _Counts
    lags_ms: list[float] = field(default_factory=list)  # lags of answers since the previous snapshot


class StreamStats:
    """Thread-safe counters, read as :class:`Snapshot` s by the reporter."""

    def __init__(self, min_peaks: int = 10, clock=time.monotonic):
        self.min_peaks, self._clock = min_peaks, clock
        self.started = clock()
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._lags: list[float] = []
        self._all_lags: list[float] = []
        self.errors: Counter[str] = Counter()
        self.bad_reasons: Counter[str] = Counter()
        self.retry_reasons: Counter[str] = Counter()

    def message(self, n_frames: int, n_bytes: int) -> None:
        with self._lock:
            self._counts.messages += 1
            self._counts.frames_in += n_frames
            self._counts.bytes += n_bytes

    def bad_message(self, reason: str) -> None:
        with self._lock:
            self._counts.bad_messages += 1
            self.bad_reasons[reason[:120]] += 1

    def retry(self, reason: str) -> None:
        with self._lock:
            self._counts.retries += 1
            self.retry_reasons[reason] += 1

    def stalled(self, seconds: float) -> None:
        with self._lock:
            self._counts.stalled_s += seconds

    def answered(self, n_frames: int, num_peaks: list[int] | None, lag_s: float, error: str | None = None) -> None:
        """``num_peaks``: peaks per frame, or ``None`` for frames that failed (with ``error``)."""
        with self._lock:
            self._counts.frames_out += n_frames
            if num_peaks is None:
                self._counts.failed += n_frames
                self.errors[str(error)[:160]] += n_frames
            else:
                self._counts.hits += sum(k >= self.min_peaks for k in num_peaks)
                self._counts.peaks += sum(num_peaks)
                self._lags.append(1e3 * lag_s)

    def file_written(self) -> None:
        with self._lock:
            self._counts.files += 1

    def snapshot(self) -> Snapshot:
        """Current counters; the lags collected since the previous snapshot move into it."""
        with self._lock:
            lags, self._lags = self._lags, []
            self._all_lags.extend(lags)
            counts = _Counts(**vars(self._counts))
        return Snapshot(self._clock() - self.started, counts, lags)

    def all_lags_ms(self) -> list[float]:
        with self._lock:
            return [*self._all_lags, *self._lags]


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


def report_line(previous: Snapshot, now: Snapshot, in_flight: int) -> str:
    """One live status line for the interval ``previous -> now``."""
    dt = max(now.t - previous.t, 1e-9)
    c, p = now.counts, previous.counts
    answered_ok = c.frames_out - c.failed
    hit_rate = c.hits / answered_ok if answered_ok else 0.0
    p50, p99 = _percentiles(now.lags_ms)
    stalled = (c.stalled_s - p.stalled_s) / dt
    return (
        f"[{now.t:7.1f} s] in {(c.frames_in - p.frames_in) / dt:6.1f} f/s  out {(c.frames_out - p.frames_out) / dt:6.1f} f/s"
        f" | {c.frames_in} frames, {c.hits} hits ({hit_rate:.1%}), {c.failed} failed, {c.retries} retries"
        f" | lag p50 {p50:.0f} ms p99 {p99:.0f} ms | backlog {c.frames_in - c.frames_out} frames,"
        f" {in_flight} requests in flight, stalled {stalled:.0%}"
        + (f" | {c.bad_messages} bad messages" if c.bad_messages else "")
    )


def summary(stats: StreamStats, final: Snapshot) -> dict[str, Any]:
    """The run's totals as a JSON-able dict."""
    c = final.counts
    lags = stats.all_lags_ms()
    p50, p99 = _percentiles(lags)
    answered_ok = c.frames_out - c.failed
    seconds = max(final.t, 1e-9)
    return {
        "seconds": final.t,
        "messages": c.messages,
        "bad_messages": c.bad_messages,
        "megabytes": c.bytes / 1e6,
        "frames_received": c.frames_in,
        "frames_answered": answered_ok,
        "frames_failed": c.failed,
        "frames_unanswered": c.frames_in - c.frames_out,
        "hits": c.hits,
        "hit_rate": c.hits / answered_ok if answered_ok else 0.0,
        "min_peaks": stats.min_peaks,
        "peaks_per_frame": c.peaks / answered_ok if answered_ok else 0.0,
        "frames_per_s": c.frames_out / seconds,
        "retries": c.retries,
        "files": c.files,
        "stalled_s": c.stalled_s,
        "lag_ms": {"p50": p50, "p99": p99, "max": max(lags) if lags else float("nan")},
        "errors": dict(stats.errors),
        "bad_message_reasons": dict(stats.bad_reasons),
        "retry_reasons": dict(stats.retry_reasons),
    }


def format_summary(document: dict[str, Any]) -> str:
    d = document
    lines = [
        f"frames   {d['frames_received']} received in {d['messages']} messages over {d['seconds']:.1f} s;"
        f" {d['frames_answered']} answered, {d['frames_failed']} failed ({d['frames_per_s']:.1f} frames/s)",
        f"hits     {d['hits']} with >= {d['min_peaks']} peaks ({d['hit_rate']:.1%}), {d['peaks_per_frame']:.1f} peaks/frame",
        f"lag      p50 {d['lag_ms']['p50']:.0f} ms, p99 {d['lag_ms']['p99']:.0f} ms; receiver stalled {d['stalled_s']:.1f} s;"
        f" {d['retries']} retries",
        f"files    {d['files']} CXI files",
    ]
    if d["bad_messages"]:
        lines.append(f"BAD      {d['bad_messages']} messages could not be read: {d['bad_message_reasons']}")
    for error, n in d["errors"].items():
        lines.append(f"FAILED   {n} frames: {error}")
    return "\n".join(lines)
