"""Live progress, the printed report and the plot."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from peaknet_serve.clients.loadtest.loops import Recorder
from peaknet_serve.clients.loadtest.request import Sample
from peaknet_serve.clients.loadtest.stats import latency_stats


def progress_line(samples: Sequence[Sample], now: float, recorder: Recorder, warmup_s: float) -> str:
    """One status line: phase, requests, errors, recent rate and latency, requests in flight."""
    recent = [s for s in samples[-2000:] if s.end > now - 2.0 and s.ok]
    rate = len(recent) / 2.0
    p99 = latency_stats([s.latency_ms for s in recent])["p99"]
    errors = sum(1 for s in samples if not s.ok)
    phase = "warm-up" if now < warmup_s else "measure"
    line = (
        f"[{phase} {now:6.1f}s] {len(samples)} req, {errors} err, {rate:6.1f} req/s, "
        f"p99 {p99:7.1f} ms, in flight {recorder.in_flight}"
    )
    if recorder.max_lag_s > 0:
        line += f", max lag {1e3 * recorder.max_lag_s:.1f} ms"
    return line


def tally_progress(tallies: Sequence[Sequence[int]], warmup_s: float) -> Callable[[float], str]:
    """Progress lines of several client processes from their tallies (see :class:`TallyRecorder`).

    The parent has no samples before the end, so the line has no latency; its rate is of good
    answers since the previous line.
    """
    previous = {"now": 0.0, "ok": 0}

    def line(now: float) -> str:
        requests_done, errors, in_flight = (sum(column) for column in zip(*tallies))
        elapsed, ok = now - previous["now"], requests_done - errors
        rate = (ok - previous["ok"]) / elapsed if elapsed > 0 else 0.0
        previous.update(now=now, ok=ok)
        phase = "warm-up" if now < warmup_s else "measure"
        return f"[{phase} {now:6.1f}s] {requests_done} req, {errors} err, {rate:6.1f} req/s, in flight {in_flight}"

    return line


def watch_progress(
    line: Callable[[float], str], stopped: threading.Event, clock: Callable[[], float], stream: Any
) -> threading.Thread:
    """Until ``stopped``, rewrite ``line(now)`` on a terminal every 0.5 s (a new line every 5 s otherwise)."""
    tty = stream.isatty()

    def loop() -> None:
        while not stopped.wait(0.5 if tty else 5.0):
            text = line(clock())
            stream.write(f"\r\x1b[2K{text}" if tty else f"{text}\n")
            stream.flush()
        if tty:
            stream.write("\n")

    thread = threading.Thread(target=loop, name="progress", daemon=True)
    thread.start()
    return thread


def save_plot(samples: Sequence[Sample], report: dict[str, Any], path: str | Path) -> None:
    """PNG: latency of every measured request over time, and the latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [s for s in samples if not s.warmup and s.status != -1]
    ok = [s for s in measured if s.ok]
    bad = [s for s in measured if not s.ok]
    fig, (ax_time, ax_hist) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax_time.plot([s.start for s in ok], [s.latency_ms for s in ok], ".", ms=3, label="ok")
    if bad:
        ax_time.plot([s.start for s in bad], [s.latency_ms for s in bad], "x", color="red", label="error")
    ax_time.set(xlabel="time since start [s]", ylabel="latency [ms]", title="Latency over time")
    ax_time.legend(loc="upper right")
    latencies = [s.latency_ms for s in ok]
    if latencies:
        ax_hist.hist(latencies, bins=min(100, max(10, len(latencies) // 10)))
    stats = report["latency_ms"]
    for name, style in (("p50", "--"), ("p99", ":")):
        if not math.isnan(stats[name]):
            ax_hist.axvline(stats[name], color="black", ls=style, label=f"{name} {stats[name]:.1f} ms")
    ax_hist.set(xlabel="latency [ms]", ylabel="requests", title="Latency histogram")
    if latencies:
        ax_hist.legend(loc="upper right")
    fig.suptitle(f"{report['rps']:.1f} req/s, {report['fps']:.1f} frames/s, {report['errors']} errors")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`summarize`'s report."""
    lat = report["latency_ms"]
    lines = [
        (
            f"requests   {report['requests']} ({report['ok']} ok, {report['errors']} errors,"
            f" error rate {report['error_rate']:.2%}) in {report['window_s']:.1f} s"
        ),
        (
            f"throughput {report['rps']:.1f} req/s, {report['fps']:.1f} frames/s,"
            f" {report['mb_per_s']:.1f} MB/s sent ({report['frame_mb_per_s']:.1f} MB/s of frames)"
        ),
        (
            f"latency    p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms,"
            f" max {lat['max']:.1f} ms"
        ),
    ]
    if report["errors_by_kind"]:
        kinds = ", ".join(f"{k}: {n}" for k, n in report["errors_by_kind"].items())
        lines.append(f"errors     {kinds}")
        lines.extend(f"           {e}" for e in report["first_errors"])
    if "open_loop" in report:
        loop = report["open_loop"]
        verdict = "FELL BEHIND" if loop["fell_behind"] else "kept up"
        lines.append(
            f"open loop  target {loop['target_hz']:g} Hz, answered {loop['answered_hz']:.1f} Hz, "
            f"{loop['late']} late, {loop['dropped']} dropped, lag p99 {loop['lag_ms']['p99']:.1f} ms: {verdict}"
        )
    return "\n".join(lines)
