"""Faults under load: mixed good/bad requests from concurrent clients, a worker SIGKILLed mid-run.

Bounded in time (``PEAKNET_SOAK_S`` seconds, default 60, split in a steady phase and a fault
phase), loopback only, every client request has a timeout. Asserts: every good request answered
correctly or (only around the kill) with a 5xx / dropped connection that a retry fixes; every bad
request gets its 4xx; the service recovers within ``RECOVERY_LIMIT_S``; worker RSS stays flat in
the steady phase, and so does the worker's reserved GPU memory when it serves on a GPU (its own
``PeakNetGpuMemoryReservedMB`` gauge: the caching allocator's segments, graph pools included).
Writes a JSON report to ``PEAKNET_SOAK_REPORT`` if set.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.e2e.test_server_e2e import BAD_REQUESTS, hdf5_bytes, make_frames, npy_bytes, peak_signature

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SOAK_S = float(os.environ.get("PEAKNET_SOAK_S", "60"))
RECOVERY_LIMIT_S = 60.0
CLIENT_TIMEOUT_S = 30.0


def worker_pid(server) -> int:
    described = requests.get(f"{server.management_url}/models/peaknet", timeout=10).json()
    return int(described[0]["workers"][0]["pid"])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def gpu_reserved_mib(server) -> float | None:
    """The worker's last ``PeakNetGpuMemoryReservedMB`` from Prometheus, None when not published."""
    for line in requests.get(f"{server.metrics_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("PeakNetGpuMemoryReservedMB{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_soak_with_bad_requests_and_a_killed_worker(start_server):
    server = start_server()
    frames = make_frames(n=1, p=2, seed=11)
    shape = ",".join(map(str, frames.shape))
    good = [
        (frames.tobytes(), {"Content-Type": "application/octet-stream", "X-Dtype": "uint16", "X-Shape": shape}),
        (npy_bytes(frames), {"Content-Type": "application/x-npy"}),
        (hdf5_bytes(frames, compression="gzip"), {"Content-Type": "application/x-hdf5"}),
    ]
    first = requests.post(server.predict_url, data=good[0][0], headers=good[0][1], timeout=CLIENT_TIMEOUT_S).json()
    reference = peak_signature(first)
    on_gpu = first["device"].startswith("cuda")
    counts, lock = Counter(), threading.Lock()
    problems: list[str] = []
    killed_at: list[float] = []
    recovered_at: list[float] = []
    deadline = time.monotonic() + SOAK_S

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            if rng.random() < 0.3:
                body, content_type, headers, status = rng.choice(BAD_REQUESTS)
                try:
                    r = requests.post(
                        server.predict_url,
                        data=body,
                        timeout=CLIENT_TIMEOUT_S,
                        headers={"Content-Type": content_type, **headers},
                    )
                except requests.RequestException as exc:
                    with lock:
                        counts["bad_connection_error"] += 1
                        if not killed_at:
                            problems.append(f"bad request connection error before any fault: {exc}")
                    continue
                with lock:
                    counts["bad"] += 1
                    if r.status_code != status and not (killed_at and r.status_code >= 500):
                        problems.append(f"bad request got {r.status_code}, expected {status}: {r.text[:200]}")
                continue
            body, headers = rng.choice(good)
            for attempt in range(5):
                try:
                    r = requests.post(server.predict_url, data=body, headers=headers, timeout=CLIENT_TIMEOUT_S)
                except requests.RequestException:
                    r = None
                if r is not None and r.status_code == 200:
                    with lock:
                        counts["good"] += 1
                        counts["good_retried"] += attempt > 0
                        if killed_at and not recovered_at:
                            recovered_at.append(time.monotonic())
                        if peak_signature(r.json()) != reference:
                            problems.append("good request answered with different peaks")
                    break
                with lock:
                    counts["good_failed_attempt"] += 1
                    if not killed_at:
                        problems.append(f"good request failed before any fault: {r and r.status_code}")
                    elif r is not None and r.status_code < 500:
                        problems.append(f"good request got {r.status_code} during recovery: {r.text[:200]}")
                time.sleep(0.5)
            else:
                with lock:
                    problems.append("good request failed 5 times")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(min(5.0, SOAK_S / 10))
    pid = worker_pid(server)
    rss_start, gpu_start = rss_mib(pid), gpu_reserved_mib(server)
    time.sleep(SOAK_S / 2 - min(5.0, SOAK_S / 10))
    rss_steady, gpu_steady = rss_mib(pid), gpu_reserved_mib(server)
    os.kill(pid, signal.SIGKILL)
    killed_at.append(time.monotonic())
    with lock:
        counts["good_at_kill"] = counts["good"]
    for t in threads:
        t.join(timeout=SOAK_S + 4 * CLIENT_TIMEOUT_S)
    ping = requests.get(f"{server.inference_url}/ping", timeout=10).json()
    new_pid = worker_pid(server)

    report = {
        "duration_s": SOAK_S,
        "clients": len(threads),
        **counts,
        "worker_killed": 1,
        "recovery_s": (recovered_at[0] - killed_at[0]) if recovered_at else None,
        "worker_rss_mib": {"start": rss_start, "steady_end": rss_steady},
        "device": first["device"],
        "worker_gpu_reserved_mib": {"start": gpu_start, "steady_end": gpu_steady} if on_gpu else None,
        "problems": problems,
    }
    if os.environ.get("PEAKNET_SOAK_REPORT"):
        Path(os.environ["PEAKNET_SOAK_REPORT"]).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    assert not problems, problems[:5]
    assert counts["good"] > counts["good_at_kill"] > 10 and counts["bad"] > 5
    assert recovered_at and recovered_at[0] - killed_at[0] < RECOVERY_LIMIT_S
    assert ping["status"] == "Healthy" and new_pid != pid
    assert rss_steady < rss_start * 1.15 + 32, report["worker_rss_mib"]  # no growth under load
    if on_gpu:
        assert gpu_start is not None and gpu_steady is not None, "no PeakNetGpuMemoryReservedMB published"
        assert gpu_steady <= gpu_start * 1.10 + 64, report["worker_gpu_reserved_mib"]
    assert not any(t.is_alive() for t in threads)
    assert np.isfinite(report["recovery_s"])
