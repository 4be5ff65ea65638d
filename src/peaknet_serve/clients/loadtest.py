#!/usr/bin/env python3
"""Load test for the PeakNet server with real detector payloads.

Two ways to drive the server:

* **closed loop** (``--concurrency N``): N clients, each sending its next request as soon as the
  last one is answered. Measures the server's capacity.
* **open loop** (``--rate HZ``): requests leave on a fixed schedule (a detector at 120 Hz does not
  wait for the server). Reports lag against the schedule and says when the server falls behind:
  sends that start late, or sends dropped because ``--max-in-flight`` requests are unanswered.

A warm-up (``--warmup`` seconds) runs first and is left out of every number. The run stops by
itself after ``--duration`` seconds or ``--requests`` requests. Every answer is checked (status,
JSON schema, frame count). The result is printed, written as JSON (``--report``) and plotted
(``--plot``), and ``--fail-on "p99_ms>250,error_rate>0.01,fps<100"`` turns a bad run into a
non-zero exit for CI.

At hundreds of multi-megabyte requests per second one Python process can be what limits the
measured rate. ``--processes N`` spreads the load (the clients, or the open-loop schedule) over N
forked client processes that share the payloads and the time origin, and merges their samples
into one report.

    peaknet-loadtest --geometry epix10k2m --dtype uint16 --concurrency 4 --duration 30
    peaknet-loadtest --rate 120 --frames-per-request 1 --duration 60 --plot run.png
    peaknet-loadtest --input run42.cxi --encoding hdf5-bslz4 --requests 500
    peaknet-loadtest --concurrency 32 --processes 4 --duration 30
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import operator
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import requests

from peaknet_serve.clients.client import KeySource, error_message
from peaknet_serve.clients.payloads import (
    ENCODINGS,
    GEOMETRIES,
    SIMULATORS,
    EncodedRequest,
    check_prediction,
    detector_frames,
    encode_request,
    geometry_from_name,
    iter_frames,
)
from peaknet_serve.wire import DEFAULT_DATASET, DEFAULT_URL

MAX_POOL_BYTES = 512 * 2**20
#: Longest a waiting main thread blocks: the kernel may hand a SIGINT (Ctrl-C) to any thread, and
#: Python runs the handler only in the main thread, once it runs again; a blocking wait would
#: delay Ctrl-C to the end of the run.
SIGNAL_CHECK_S = 0.1

EXIT_OK, EXIT_THRESHOLDS, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOTHING_MEASURED, EXIT_CLIENT_DIED = 0, 1, 2, 3, 4, 5


# --------------------------------------------------------------------------------------------
# one request
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request as the client saw it; times in seconds since the run started.

    ``status`` is the HTTP status, 0 when no answer came (connection error, timeout) and -1 for an
    open-loop send dropped because too many requests were in flight. ``scheduled`` is the planned
    send time in an open loop (``nan`` in a closed one).
    """

    scheduled: float
    start: float
    end: float
    status: int
    error: str | None
    n_frames: int
    body_bytes: int
    frame_bytes: int
    warmup: bool

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float:
        return 1e3 * (self.end - self.start)

    @property
    def lag_ms(self) -> float:
        return 1e3 * (self.start - self.scheduled)


def post_request(
    session: requests.Session,
    url: str,
    request: EncodedRequest,
    auth: KeySource,
    timeout_s: float,
    clock: Callable[[], float],
    scheduled: float = math.nan,
    warmup: bool = False,
) -> Sample:
    """POST one request and check its answer; never raises for a server or network failure."""
    start = clock()
    status, error = 0, None
    try:
        headers = {**request.headers, **auth.headers(), "Accept": "application/json"}
        answer = session.post(url, data=request.body, headers=headers, timeout=timeout_s)
        status = answer.status_code
        error = answer_error(status, answer.headers.get("Content-Type", ""), answer.content, request.n_frames)
    except requests.Timeout:
        error = "timeout"
    except requests.RequestException as err:
        error = f"connection: {type(err).__name__}"
    return Sample(
        scheduled=scheduled,
        start=start,
        end=clock(),
        status=status,
        error=error,
        n_frames=request.n_frames,
        body_bytes=len(request.body),
        frame_bytes=request.frame_nbytes,
        warmup=warmup,
    )


def answer_error(status: int, content_type: str, body: bytes, n_frames: int) -> str | None:
    """``None`` for a good answer, else a short reason (``http 503: ...``, ``schema: ...``)."""
    if status != 200:
        return f"http {status}: {error_message(body)}"
    if "json" not in content_type:
        return f"schema: content type {content_type!r}, not JSON"
    try:
        problems = check_prediction(json.loads(body), n_frames)
    except ValueError:
        return "schema: body is not JSON"
    return f"schema: {problems[0]}" if problems else None


# --------------------------------------------------------------------------------------------
# what to send, and when to stop
# --------------------------------------------------------------------------------------------


class RunPlan:
    """Hands out tickets for requests: warm-up first, then the measured part, then stop.

    Thread-safe. ``claim(t)`` returns ``None`` once the measured part is over (``duration_s``
    seconds after the warm-up ended, or ``n_requests`` measured requests), else
    ``(index, is_warmup)``. ``t`` is the time of the request (now, or its scheduled time).
    """

    def __init__(self, warmup_s: float, duration_s: float | None, n_requests: int | None):
        if duration_s is None and n_requests is None:
            raise ValueError("give a duration or a request count")
        self.warmup_s, self.duration_s, self.n_requests = warmup_s, duration_s, n_requests
        self._issued, self._measured = 0, 0
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def claim(self, t: float) -> tuple[int, bool] | None:
        with self._lock:
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


def send_schedule(rate_hz: float, index: int) -> float:
    """Planned send time (s since the start) of the ``index``-th open-loop request."""
    if rate_hz <= 0:
        raise ValueError("rate must be positive")
    return index / rate_hz


def late_threshold_s(rate_hz: float) -> float:
    """A send starting more than half a period (at least 2 ms) after its slot counts as late."""
    return max(0.5 / rate_hz, 2e-3)


# --------------------------------------------------------------------------------------------
# the two loops
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where and what to send."""

    url: str
    payloads: Sequence[EncodedRequest]
    auth: KeySource
    timeout_s: float


class Recorder:
    """Collects samples from many threads and tracks requests in flight."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.in_flight = 0
        self.max_lag_s = 0.0
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, sample: Sample) -> None:
        with self._lock:
            self.in_flight -= 1
            self.samples.append(sample)
            if not math.isnan(sample.scheduled):
                self.max_lag_s = max(self.max_lag_s, sample.start - sample.scheduled)

    def drop(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)


def run_closed_loop(target: Target, plan: RunPlan, concurrency: int, recorder: Recorder, clock: Callable[[], float]) -> None:
    """``concurrency`` clients, each with its own connection, send back to back until the plan stops."""

    def client() -> None:
        with requests.Session() as session:
            while (ticket := plan.claim(clock())) is not None:
                index, warmup = ticket
                recorder.begin()
                payload = target.payloads[index % len(target.payloads)]
                recorder.end(post_request(session, target.url, payload, target.auth, target.timeout_s, clock, warmup=warmup))

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # see SIGNAL_CHECK_S
            thread.join(SIGNAL_CHECK_S)


def run_open_loop(
    target: Target,
    plan: RunPlan,
    rate_hz: float,
    max_in_flight: int,
    recorder: Recorder,
    clock: Callable[[], float],
    first_slot: int = 0,
    slot_step: int = 1,
) -> None:
    """Send on a fixed schedule of ``rate_hz``; drop a send when ``max_in_flight`` are unanswered.

    Only slots ``first_slot``, ``first_slot + slot_step``, ... of the schedule are sent (all of them
    by default): the share of one of ``slot_step`` client processes.
    """
    local = threading.local()

    def send(payload: EncodedRequest, scheduled: float, warmup: bool) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        sample = post_request(local.session, target.url, payload, target.auth, target.timeout_s, clock, scheduled, warmup)
        recorder.end(sample)

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="sender") as pool:
        for slot in itertools.count(first_slot, slot_step):
            scheduled = send_schedule(rate_hz, slot)
            ticket = plan.claim(scheduled)
            if ticket is None:
                break
            index, warmup = ticket
            pause = scheduled - clock()
            if pause > 0 and plan.stopped.wait(pause):
                break
            payload = target.payloads[index % len(target.payloads)]
            if recorder.in_flight >= max_in_flight:
                now = clock()
                recorder.drop(Sample(scheduled, now, now, -1, "dropped: in-flight bound", payload.n_frames, 0, 0, warmup))
                continue
            recorder.begin()
            pool.submit(send, payload, scheduled, warmup)


# --------------------------------------------------------------------------------------------
# the load over several client processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One client process's part of the load (see :func:`split_load`).

    ``clients`` is for a closed loop; ``first_slot``, ``slot_step`` and ``max_in_flight`` for an open
    one. ``n_requests`` is its part of ``--requests`` (``None``: it runs for ``--duration``).
    """

    clients: int = 0
    first_slot: int = 0
    slot_step: int = 1
    max_in_flight: int = 0
    n_requests: int | None = None


def split_count(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by at most one, the larger ones first."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def first_measured_slot(rate_hz: float, warmup_s: float) -> int:
    """The first open-loop slot scheduled after the warm-up, the first that :class:`RunPlan` measures."""
    start = max(0, math.floor(warmup_s * rate_hz) - 1)
    return next(i for i in itertools.count(start) if send_schedule(rate_hz, i) >= warmup_s)


def split_load(args: argparse.Namespace) -> list[Share]:
    """The load of the command line as ``--processes`` shares that add up to it.

    Closed loop: the clients as evenly as possible, and ``--requests`` in proportion to them.
    Open loop: process k sends slots k, k+N, k+2N, ... of the schedule with its part of
    ``--max-in-flight``; with ``--requests`` R, the processes together send exactly the first R
    slots after the warm-up, each those of its own.
    """
    n = args.processes
    if args.rate is None:
        clients = split_count(args.concurrency, n)
        if args.requests is None:
            return [Share(clients=c) for c in clients]
        per_client = split_count(args.requests, args.concurrency)
        bounds = list(itertools.accumulate(clients, initial=0))
        return [Share(clients=c, n_requests=sum(per_client[a:b])) for c, a, b in zip(clients, bounds, bounds[1:])]
    in_flight = split_count(args.max_in_flight, n)
    if args.requests is None:
        requests: list[int | None] = [None] * n
    else:  # the process of the first measured slot sends the first of them, and so on
        counts, first = split_count(args.requests, n), first_measured_slot(args.rate, args.warmup)
        requests = [counts[(k - first) % n] for k in range(n)]
    return [Share(first_slot=k, slot_step=n, max_in_flight=m, n_requests=r)
            for k, (m, r) in enumerate(zip(in_flight, requests))]


def run_share(
    target: Target, plan: RunPlan, share: Share, rate_hz: float | None, recorder: Recorder, clock: Callable[[], float]
) -> None:
    """Run one share of the load: the closed loop, or the open loop when ``rate_hz`` is set."""
    if rate_hz is None:
        run_closed_loop(target, plan, share.clients, recorder, clock)
    else:
        run_open_loop(target, plan, rate_hz, share.max_in_flight, recorder, clock, share.first_slot, share.slot_step)


class TallyRecorder(Recorder):
    """A :class:`Recorder` that also keeps ``tally`` = (requests, errors, in flight) up to date.

    ``tally`` is a lock-free shared array of this process alone, read by the parent for its
    progress line: a client process that dies cannot block the others.
    """

    def __init__(self, tally: Any) -> None:
        super().__init__()
        self.tally, self.errors = tally, 0

    def begin(self) -> None:
        super().begin()
        self._publish(0)

    def end(self, sample: Sample) -> None:
        super().end(sample)
        self._publish(int(not sample.ok))

    def drop(self, sample: Sample) -> None:
        super().drop(sample)
        self._publish(1)

    def _publish(self, new_errors: int) -> None:
        with self._lock:
            self.errors += new_errors
            self.tally[:] = [len(self.samples), self.errors, self.in_flight]


def client_process(
    target: Target,
    plan: RunPlan,
    share: Share,
    rate_hz: float | None,
    clock: Callable[[], float],
    tally: Any,
    stop: Connection,
    stop_writer: Connection,
    samples_out: Connection,
) -> None:
    """Body of one forked client process: run ``share`` and send its samples to the parent.

    It stops early when ``stop`` reaches end of file, that is when the parent has closed its
    ``stop_writer`` (Ctrl-C) or died; requests still unanswered then are left out, as after Ctrl-C
    in a single process. A failure of the load is raised here, so that the process exits non-zero
    without sending anything.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    stop_writer.close()
    recorder = TallyRecorder(tally)
    finished = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        try:
            run_share(target, plan, share, rate_hz, recorder, clock)
        except BaseException as err:  # noqa: BLE001 - raised again in the main thread
            failures.append(err)
        finally:
            finished.set()

    def wait_for_stop() -> None:
        stop.poll(None)
        finished.set()

    for body in (load, wait_for_stop):
        threading.Thread(target=body, name=body.__name__, daemon=True).start()
    finished.wait()
    plan.stop()
    if failures:
        raise failures[0]
    samples_out.send(list(recorder.samples))


def gather(receivers: dict[Connection, BaseProcess]) -> tuple[list[Sample], list[str]]:
    """The samples of every client process, as each sends them, and the processes that did not.

    A process that ends without sending (killed, crashed) is a failure, not a hang. Every process
    has ended on return: one that sent is stopped, with any request it still waits for.
    """
    samples: list[Sample] = []
    silent: list[BaseProcess] = []
    pending = dict(receivers)
    while pending:
        for receiver in multiprocessing.connection.wait(list(pending), timeout=SIGNAL_CHECK_S):
            process = pending.pop(receiver)
            try:
                samples += receiver.recv()
            except (EOFError, OSError):  # it ended before sending them
                silent.append(process)
            receiver.close()
            process.terminate()  # a no-op once it has exited
            process.join()
    return samples, [f"{p.name} exited with code {p.exitcode} before sending its samples" for p in silent]


def measure_in_processes(
    target: Target, args: argparse.Namespace, clock: Callable[[], float]
) -> tuple[list[Sample], list[str]]:
    """Run the load in ``--processes`` forked client processes; their merged samples and failures.

    The children inherit the payloads and ``clock``, whose origin is the parent's (``perf_counter``
    is one system-wide clock on Linux), so their samples share one time axis. Ctrl-C asks them all
    to stop and send what they measured.
    """
    context = multiprocessing.get_context("fork")
    stop, stop_writer = context.Pipe(duplex=False)
    previous = signal.signal(signal.SIGINT, lambda *_: stop_writer.close())
    finished = threading.Event()
    progress = None
    try:
        tallies, receivers = [], {}
        for k, share in enumerate(split_load(args)):
            tally = context.RawArray("q", 3)
            receiver, sender = context.Pipe(duplex=False)
            plan = RunPlan(args.warmup, args.duration, share.n_requests)
            process = context.Process(
                target=client_process,
                name=f"client process {k}",
                args=(target, plan, share, args.rate, clock, tally, stop, stop_writer, sender),
                daemon=True,
            )
            process.start()
            sender.close()
            tallies.append(tally)
            receivers[receiver] = process
        if not args.quiet:
            progress = watch_progress(tally_progress(tallies, args.warmup), finished, clock, sys.stderr)
        samples, failures = gather(receivers)
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupted = stop_writer.closed
        stop_writer.close()
        stop.close()
        finished.set()
        if progress is not None:
            progress.join()
    if interrupted:
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    return samples, failures


# --------------------------------------------------------------------------------------------
# statistics (pure)
# --------------------------------------------------------------------------------------------


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
    "rps", "fps", "mb_per_s", "error_rate", "errors", "requests",
    "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "min_ms",
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


# --------------------------------------------------------------------------------------------
# live progress, output
# --------------------------------------------------------------------------------------------


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
        (f"requests   {report['requests']} ({report['ok']} ok, {report['errors']} errors,"
         f" error rate {report['error_rate']:.2%}) in {report['window_s']:.1f} s"),
        (f"throughput {report['rps']:.1f} req/s, {report['fps']:.1f} frames/s,"
         f" {report['mb_per_s']:.1f} MB/s sent ({report['frame_mb_per_s']:.1f} MB/s of frames)"),
        (f"latency    p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms,"
         f" max {lat['max']:.1f} ms"),
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


# --------------------------------------------------------------------------------------------
# payload pool and command line
# --------------------------------------------------------------------------------------------


def build_payloads(args: argparse.Namespace) -> list[EncodedRequest]:
    """Pre-encoded requests to cycle through (at most ``--distinct``, at most ~512 MB in all)."""
    if args.input:
        blocks = iter_frames(args.input, args.dataset, args.frames_per_request, args.panels)
        first = next(blocks)[1]
        per_request = first.nbytes
        source = itertools.chain([first], (block for _, block in blocks))
    else:
        geometry = geometry_from_name(args.geometry)
        per_request = args.frames_per_request * geometry.pixels * np.dtype(args.dtype).itemsize
        source = (
            detector_frames(geometry, args.frames_per_request, args.dtype, args.seed + i, args.simulator)
            for i in itertools.count()
        )
    count = max(1, min(args.distinct, MAX_POOL_BYTES // max(per_request, 1)))
    return [encode_request(frames, args.encoding) for frames in itertools.islice(source, count)]


def check_ready(base_url: str, auth: KeySource, timeout_s: float = 10.0) -> str | None:
    """``None`` when ``GET /ping`` answers 200, else why not."""
    try:
        answer = requests.get(f"{base_url}/ping", headers=auth.headers(), timeout=timeout_s)
    except requests.RequestException as err:
        return f"{base_url}/ping: {type(err).__name__}: {err}"
    if answer.status_code != 200:
        return f"{base_url}/ping answered {answer.status_code}: {answer.text[:200]}"
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help=f"inference address (default {DEFAULT_URL})")
    p.add_argument("--model", default="peaknet", help="model name (default peaknet)")
    p.add_argument("--token", help="inference key (TorchServe token authorisation)")
    p.add_argument("--key-file", help="TorchServe key_file.json to read the inference key from")
    src = p.add_argument_group("payload")
    src.add_argument("--geometry", default="epix10k2m", help=f"{', '.join(GEOMETRIES)} or P,H,W (default epix10k2m)")
    src.add_argument("--dtype", default="uint16", help="simulated pixel dtype (default uint16)")
    src.add_argument("--simulator", default="auto", choices=SIMULATORS,
                     help="peaknet_serve.sim.peaksim (physical SFX frames), spots (Gaussian spots), auto: peaknet_serve.sim.peaksim if importable")
    src.add_argument("--input", help="send frames from this HDF5/CXI file instead of simulated ones")
    src.add_argument("--dataset", default=DEFAULT_DATASET, help=f"frames in --input (default {DEFAULT_DATASET})")
    src.add_argument("--panels", type=int, help="split each --input slab (N, P*H, W) into P panels")
    src.add_argument("--encoding", default="raw", choices=ENCODINGS, help="request encoding (default raw)")
    src.add_argument("--frames-per-request", type=int, default=1, help="frames in each request (default 1)")
    src.add_argument("--distinct", type=int, default=4, help="distinct payloads to cycle through (default 4)")
    src.add_argument("--seed", type=int, default=0)
    load = p.add_argument_group("load")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=4, help="closed loop: concurrent clients (default 4)")
    mode.add_argument("--rate", type=float, help="open loop: target requests per second (e.g. 120)")
    load.add_argument("--max-in-flight", type=int, default=32, help="open loop: drop sends beyond this (default 32)")
    load.add_argument("--duration", type=float, help="measured seconds (default 10 unless --requests)")
    load.add_argument("--requests", type=int, help="measured requests")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up, not measured (default 2)")
    load.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in s (default 60)")
    load.add_argument("--processes", type=int, default=1,
                      help="client processes to spread the load over (default 1): one Python process can limit "
                           "the rate of large requests; the progress line then has no latency")
    out = p.add_argument_group("output")
    out.add_argument("--report", help="write the JSON report here")
    out.add_argument("--plot", help="write a PNG of latency over time and its histogram here")
    out.add_argument("--fail-on", default="", help='exit 1 if any holds, e.g. "p99_ms>250,error_rate>0.01,fps<100"')
    out.add_argument("--quiet", action="store_true", help="no live progress line")
    args = p.parse_args(argv)
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    for name in ("frames_per_request", "distinct", "concurrency", "max_in_flight", "processes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if (args.duration is not None and args.duration <= 0) or (args.requests is not None and args.requests < 1):
        p.error("--duration and --requests must be positive")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    if args.processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        p.error("--processes > 1 needs the fork start method (Linux)")
    per_process = ("max_in_flight", args.max_in_flight) if args.rate is not None else ("concurrency", args.concurrency)
    if per_process[1] < args.processes:
        p.error(f"--{per_process[0].replace('_', '-')} {per_process[1]} is less than --processes {args.processes}")
    try:
        args.thresholds = parse_fail_on(args.fail_on)
    except ValueError as err:
        p.error(str(err))
    open_only = sorted({t.metric for t in args.thresholds} & set(OPEN_LOOP_METRICS))
    if open_only and args.rate is None:
        p.error(f"--fail-on {', '.join(open_only)}: only an open-loop run (--rate) measures these")
    return args


def measure(target: Target, args: argparse.Namespace, clock: Callable[[], float]) -> list[Sample]:
    """Run the whole load in this process; Ctrl-C stops it and keeps what was measured."""
    (share,) = split_load(args)
    plan = RunPlan(args.warmup, args.duration, share.n_requests)
    recorder = Recorder()

    def line(now: float) -> str:
        return progress_line(list(recorder.samples), now, recorder, plan.warmup_s)

    progress = None if args.quiet else watch_progress(line, plan.stopped, clock, sys.stderr)
    try:
        run_share(target, plan, share, args.rate, recorder, clock)
    except KeyboardInterrupt:
        plan.stop()
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    plan.stop()
    if progress is not None:
        progress.join()
    return recorder.samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base_url = args.url.rstrip("/")
    auth = KeySource(args.token, args.key_file)
    if (why := check_ready(base_url, auth)) is not None:
        print(f"server not ready: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE
    payloads = build_payloads(args)
    target = Target(f"{base_url}/predictions/{args.model}", payloads, auth, args.timeout)
    t0 = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - t0

    if args.processes == 1:
        samples, failures = measure(target, args, clock), []
    else:
        samples, failures = measure_in_processes(target, args, clock)

    report = summarize(samples, args.rate)
    report["config"] = {
        "url": target.url,
        "mode": "open" if args.rate is not None else "closed",
        "concurrency": None if args.rate is not None else args.concurrency,
        "rate_hz": args.rate,
        "encoding": args.encoding,
        "source": args.input or f"simulated {args.geometry} {args.dtype}",
        "frames_per_request": args.frames_per_request,
        "request_bytes": len(payloads[0].body),
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "max_requests": args.requests,
        "processes": args.processes,
    }
    if failures:
        report["client_failures"] = failures
    print(format_report(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    if args.plot:
        save_plot(samples, report, args.plot)
    if failures:
        for failure in failures:
            print(f"FAIL {failure}: its requests are missing from the report", file=sys.stderr)
        return EXIT_CLIENT_DIED
    if report["requests"] == 0:
        print("FAIL no request was measured: every request outlasted the run; raise --duration "
              "or --timeout, or lower --warmup", file=sys.stderr)
        return EXIT_NOTHING_MEASURED
    broken = violated(args.thresholds, report)
    for line in broken:
        print(f"FAIL {line}", file=sys.stderr)
    return EXIT_THRESHOLDS if broken else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
