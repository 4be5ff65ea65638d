"""The two load loops: closed (N clients back to back) and open (a fixed send schedule)."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from peaknet_serve.clients.client import KeySource
from peaknet_serve.clients.loadtest.constants import SIGNAL_CHECK_S
from peaknet_serve.clients.loadtest.plan import RunPlan, send_schedule
from peaknet_serve.clients.loadtest.request import Sample, post_request
from peaknet_serve.clients.payloads import (
    EncodedRequest,
)


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


def run_closed_loop(
    target: Target, plan: RunPlan, concurrency: int, recorder: Recorder, clock: Callable[[], float]
) -> None:
    """``concurrency`` clients, each with its own connection, send back to back until the plan stops."""

    def client() -> None:
        with requests.Session() as session:
            while (ticket := plan.claim(clock())) is not None:
                index, warmup = ticket
                recorder.begin()
                payload = target.payloads[index % len(target.payloads)]
                recorder.end(
                    post_request(session, target.url, payload, target.auth, target.timeout_s, clock, warmup=warmup)
                )

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
        sample = post_request(
            local.session, target.url, payload, target.auth, target.timeout_s, clock, scheduled, warmup
        )
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
                recorder.drop(
                    Sample(scheduled, now, now, -1, "dropped: in-flight bound", payload.n_frames, 0, 0, warmup)
                )
                continue
            recorder.begin()
            pool.submit(send, payload, scheduled, warmup)
