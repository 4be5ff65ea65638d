"""The load over several forked client processes sharing payloads and the time origin."""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import multiprocessing.connection
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from peaknet_serve.clients.loadtest.constants import SIGNAL_CHECK_S
from peaknet_serve.clients.loadtest.loops import Recorder, Target, run_closed_loop, run_open_loop
from peaknet_serve.clients.loadtest.plan import RunPlan, ctrl_c_calls, send_schedule
from peaknet_serve.clients.loadtest.report import tally_progress, watch_progress
from peaknet_serve.clients.loadtest.request import Sample


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
    return [
        Share(first_slot=k, slot_step=n, max_in_flight=m, n_requests=r)
        for k, (m, r) in enumerate(zip(in_flight, requests))
    ]


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
    finished = threading.Event()
    progress = None
    with ctrl_c_calls(stop_writer.close):  # Ctrl-C: every client process stops
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
            interrupted = stop_writer.closed
            stop_writer.close()
            stop.close()
            finished.set()
            if progress is not None:
                progress.join()
    if interrupted:
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    return samples, failures
