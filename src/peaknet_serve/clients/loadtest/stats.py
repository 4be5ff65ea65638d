"""Statistics of a run (pure functions): latency percentiles, open-loop lag, thresholds."""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peaknet_serve.clients.loadtest.plan import late_threshold_s
from peaknet_serve.clients.loadtest.request import Sample


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``p50/p90/p99/max/mean/min`` in ms (linear-interpolated percentiles); NaN when empty."""
    if len(latencies_ms) == 0:
        return {k: math.nan for k in ("p50", "p90", "p99", "max", "mean", "min")}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "min": float(values.min()),
    }


def error_kind(sample: Sample) -> str:
    """Group key of a failed sample: the HTTP status, or ``schema``/``timeout``/``connection``/``dropped``."""
    if sample.status == -1:
        return "dropped"
    if sample.status not in (0, 200):
        return str(sample.status)
    assert sample.error is not None
    return sample.error.split(":", 1)[0]


def summarize(samples: Sequence[Sample], rate_hz: float | None = None) -> dict[str, Any]:
    """Throughput, latency and errors of the measured (non-warm-up) samples.

    Throughput counts successful requests over the measured window, from the first measured send
    to the last measured answer. Latencies are of successful requests. Dropped open-loop sends
    count as errors. With ``rate_hz`` set, adds ``open_loop`` lag statistics.
    """
    measured = [s for s in samples if not s.warmup]
    ok = [s for s in measured if s.ok]
    window = (max(s.end for s in measured) - min(s.start for s in measured)) if measured else 0.0
    per_s = (lambda x: x / window) if window > 0 else (lambda x: 0.0)
    errors = Counter(error_kind(s) for s in measured if not s.ok)
    report: dict[str, Any] = {
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(measured) - len(ok),
        "error_rate": (len(measured) - len(ok)) / len(measured) if measured else 0.0,
        "errors_by_kind": dict(sorted(errors.items())),
        "first_errors": sorted({s.error for s in measured if not s.ok})[:5],
        "window_s": window,
        "rps": per_s(len(ok)),
        "fps": per_s(sum(s.n_frames for s in ok)),
        "mb_per_s": per_s(sum(s.body_bytes for s in ok)) / 1e6,
        "frame_mb_per_s": per_s(sum(s.frame_bytes for s in ok)) / 1e6,
        "latency_ms": latency_stats([s.latency_ms for s in ok]),
    }
    if rate_hz is not None:
        report["open_loop"] = open_loop_stats(measured, rate_hz)
    return report


def open_loop_stats(measured: Sequence[Sample], rate_hz: float) -> dict[str, Any]:
    """Lag of sends against their schedule, and whether the server fell behind.

    ``answered_hz`` is the rate of answers from the first to the last one: in a steady state it
    equals the send rate whatever the latency, and it drops below it when a backlog builds.
    The server *fell behind* when any send was dropped (in-flight bound reached), when more than
    1 % of sends started later than :func:`late_threshold_s`, or when fewer than 95 % of the
    target rate were answered.
    """
    sent = [s for s in measured if s.status != -1]
    lags = np.array([s.lag_ms for s in sent]) if sent else np.zeros(0)
    late = int((lags > 1e3 * late_threshold_s(rate_hz)).sum())
    dropped = len(measured) - len(sent)
    answers = sorted(s.end for s in sent if s.ok)
    span = answers[-1] - answers[0] if len(answers) > 1 else 0.0
    answered_hz = (len(answers) - 1) / span if span > 0 else 0.0
    late_fraction = late / len(sent) if sent else 0.0
    return {
        "target_hz": rate_hz,
        "answered_hz": answered_hz,
        "sent": len(sent),
        "dropped": dropped,
        "late": late,
        "late_fraction": late_fraction,
        "lag_ms": latency_stats(lags.tolist()),
        "fell_behind": dropped > 0 or late_fraction > 0.01 or answered_hz < 0.95 * rate_hz,
    }


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The numbers that ``--fail-on`` may name."""
    latency = report["latency_ms"]
    metrics = {
        "rps": report["rps"],
        "fps": report["fps"],
        "mb_per_s": report["mb_per_s"],
        "error_rate": report["error_rate"],
        "errors": float(report["errors"]),
        "requests": float(report["requests"]),
        **{f"{k}_ms": v for k, v in latency.items()},
    }
    if "open_loop" in report:
        loop = report["open_loop"]
        metrics.update(
            late_fraction=loop["late_fraction"],
            dropped=float(loop["dropped"]),
            lag_p99_ms=loop["lag_ms"]["p99"],
            answered_hz=loop["answered_hz"],
        )
    return metrics


@dataclass(frozen=True)
class Threshold:
    """``metric op value``: the run fails when the comparison holds (``p99_ms > 250``)."""

    metric: str
    op: str
    value: float

    def violated_by(self, metrics: dict[str, float]) -> bool:
        actual = metrics[self.metric]
        # a metric that could not be measured (NaN) fails every threshold on it
        return math.isnan(actual) or _OPERATORS[self.op](actual, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
OPEN_LOOP_METRICS = ("late_fraction", "dropped", "lag_p99_ms", "answered_hz")
FAIL_ON_METRICS = (
    "rps",
    "fps",
    "mb_per_s",
    "error_rate",
    "errors",
    "requests",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "min_ms",
    *OPEN_LOOP_METRICS,
)


def parse_fail_on(spec: str) -> list[Threshold]:
    """Parse ``"p99_ms>250,error_rate>0.01,fps<100"`` into thresholds."""
    thresholds = []
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        for symbol in _OPERATORS:  # two-character operators are tried first
            metric, found, value = clause.partition(symbol)
            if found:
                break
        else:
            raise ValueError(f"--fail-on clause {clause!r} has no comparison (> < >= <=)")
        metric = metric.strip()
        if metric not in FAIL_ON_METRICS:
            raise ValueError(f"--fail-on: unknown metric {metric!r}; known: {', '.join(FAIL_ON_METRICS)}")
        try:
            thresholds.append(Threshold(metric, symbol, float(value)))
        except ValueError:
            raise ValueError(f"--fail-on clause {clause!r}: {value.strip()!r} is not a number") from None
    return thresholds


def violated(thresholds: Sequence[Threshold], report: dict[str, Any]) -> list[str]:
    """The thresholds the run broke, each with the measured value."""
    metrics = flat_metrics(report)
    missing = [t.metric for t in thresholds if t.metric not in metrics]
    if missing:
        raise ValueError(f"{missing}: only an open-loop run (--rate) measures these")
    return [f"{t} (measured {metrics[t.metric]:.4g})" for t in thresholds if t.violated_by(metrics)]
