"""The bridge between a real pyzmq PUSH producer and a real TorchServe.

* every frame pushed comes back as a peak list in the CXI files, in frame order, equal to what the
  server answers for the same frames directly;
* a 120 Hz producer of small frames is kept up with (the producer never falls behind its
  schedule, the receiver is never stalled) against the tiny model on CPU;
* a server restart in the middle of a stream loses no frame: requests are retried, back-pressure
  holds the producer meanwhile, memory stays inside the configured window;
* the console command runs as users run it and reports live.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
import zmq

from peaknet_serve.bridge.cxi import CxiSink
from peaknet_serve.bridge.producer import push
from peaknet_serve.bridge.sender import PeakServer, RetryPolicy
from peaknet_serve.bridge.stats import summary
from peaknet_serve.bridge.stream import Bridge, StreamConfig
from peaknet_serve.clients.payloads import encode_request
from tests.e2e.conftest import restart_server
from tests.frames import spot_frames

pytestmark = pytest.mark.e2e


def start_bridge(
    server_url: str, output: Path, *, max_frames: int, retry_for_s: float = 300.0, frames_per_file: int = 100, **config
) -> tuple[Bridge, threading.Thread, dict]:
    config = {
        "bind": ["tcp://127.0.0.1:*"],
        "frames_per_request": 4,
        "concurrency": 4,
        "queue_requests": 8,
        "max_frames": max_frames,
        "report_every_s": 1.0,
        "idle_timeout_s": 120.0,
        **config,
    }
    lines: list[str] = []
    bridge = Bridge(
        StreamConfig(**config),
        PeakServer(server_url, policy=RetryPolicy(retry_for_s)),
        CxiSink(output, min_peaks=1),
        log=lines.append,
        frames_per_file=frames_per_file,
    )
    outcome: dict = {"lines": lines}

    def run():
        try:
            outcome["stats"] = bridge.run()
        except BaseException as err:  # noqa: BLE001  (reported by the test)
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert bridge.ready.wait(10), "bridge did not bind"
    return bridge, thread, outcome


def producer_socket(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, 5)  # as LCLStreamer
    socket.connect(endpoint)
    return context, socket


def finish(thread: threading.Thread, outcome: dict, timeout_s: float = 120) -> dict:
    thread.join(timeout_s)
    assert not thread.is_alive(), "bridge did not finish"
    assert "error" not in outcome, outcome.get("error")
    stats = outcome["stats"]
    return summary(stats, stats.snapshot())


def read_files(output: Path) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {"frame_index": [], "failed": [], "nPeaks": [], "x": [], "y": []}
    for path in sorted(output.glob("peaks-*.cxi")):
        with h5py.File(path, "r") as f:
            assert f.attrs["complete"]
            parts["frame_index"].append(f["/entry_1/stream/frame_index"][()])
            parts["failed"].append(f["/entry_1/stream/failed"][()])
            parts["nPeaks"].append(f["/entry_1/result_1/nPeaks"][()])
            parts["x"].append(f["/entry_1/result_1/peakXPosRaw"][()])
            parts["y"].append(f["/entry_1/result_1/peakYPosRaw"][()])
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_stream_round_trip_matches_direct_answers(served, tmp_path):
    frames = spot_frames(n=6, p=2, h=64, w=96, seed=11)
    bridge, thread, outcome = start_bridge(served.inference_url, tmp_path, max_frames=24, frames_per_file=10)
    context, socket = producer_socket(bridge.bound[0])
    try:
        push(socket, frames, 24, rate_hz=60.0, batch=3, fmt="hdf5", compression="bitshuffle_with_lz4")
        result = finish(thread, outcome)
    finally:
        socket.close(linger=1000)
        context.term()
    assert result["frames_received"] == result["frames_answered"] == 24
    assert result["frames_failed"] == 0 and result["bad_messages"] == 0 and result["files"] == 3
    files = read_files(tmp_path)
    assert list(files["frame_index"]) == list(range(24)) and not files["failed"].any()
    request = encode_request(frames, "raw")
    direct = requests.post(served.predict_url, data=request.body, headers=request.headers, timeout=120).json()["frames"]
    for i in range(24):
        expected = direct[i % 6]
        k = expected["num_peaks"]
        assert files["nPeaks"][i] == k
        assert np.allclose(files["x"][i, :k], expected["fs"], atol=1e-3)
        assert np.allclose(files["y"][i, :k], np.array(expected["panel"]) * 64 + np.array(expected["ss"]), atol=1e-3)
    assert (tmp_path / "peaks.lst").read_text().count("\n") == 3


def server_frames_per_s(url: str, frames: np.ndarray, seconds: float = 4.0, concurrency: int = 8) -> float:
    """What the server itself answers, frames/s, for requests of ``frames`` sent ``concurrency`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    request = encode_request(frames, "raw")
    session_url = f"{url}/predictions/peaknet"
    deadline = time.monotonic() + seconds

    def loop() -> int:
        done = 0
        with requests.Session() as session:
            while time.monotonic() < deadline:
                session.post(session_url, data=request.body, headers=request.headers, timeout=120).raise_for_status()
                done += len(frames)
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(lambda _: loop(), range(concurrency)))
    return total / (time.monotonic() - started)


def test_keeps_up_with_a_120_hz_producer(start_server, tmp_path):
    """Small frames (one 32 x 32 panel), one per message, for 10 s, gathered 8 to a request (the test server's limit).

    Needs a server that keeps up: its own rate for the same requests is measured first, and below
    125 frames/s (a loaded CPU) the test is skipped with that figure. One torch thread per worker:
    on a CPU shared with other jobs, two threads that wait for each other are several times slower.
    """
    server = start_server(PEAKNET_TORCH_THREADS="1")
    frames = spot_frames(n=8, p=1, h=32, w=32, seed=5, spots=2)
    server_frames_per_s(server.inference_url, frames, seconds=1.0)  # warm
    capacity = server_frames_per_s(server.inference_url, frames)
    print(f"\nserver alone: {capacity:.0f} frames/s (8-frame raw requests, 8 in flight)")
    if capacity < 125:
        pytest.skip(f"the server answers {capacity:.0f} frames/s here: not a server that keeps up with 120 Hz")
    n = 1200
    bridge, thread, outcome = start_bridge(
        server.inference_url,
        tmp_path,
        max_frames=n,
        frames_per_request=8,
        linger_s=1.0,  # every request a full 8: one 32 x 32 panel alone is too small for the model (1 x 1 at stride 32)
        concurrency=8,
        queue_requests=16,
        frames_per_file=400,
    )
    context, socket = producer_socket(bridge.bound[0])
    try:
        report = push(socket, frames, n, rate_hz=120.0, batch=1, fmt="hdf5")
        result = finish(thread, outcome)
    finally:
        socket.close(linger=1000)
        context.term()
    print(
        f"producer: {report.frames} frames in {report.seconds:.2f} s ({report.frames_per_s:.1f}/s),"
        f" lateness max {report.max_lateness_s * 1e3:.0f} ms, final {report.final_lateness_s * 1e3:.0f} ms;"
        f" bridge: {result['frames_per_s']:.1f} frames/s over {result['seconds']:.2f} s, lag p50"
        f" {result['lag_ms']['p50']:.0f} ms p99 {result['lag_ms']['p99']:.0f} ms, stalled {result['stalled_s']:.2f} s"
    )
    assert result["frames_answered"] == n and result["frames_failed"] == 0
    assert report.frames_per_s > 115, "the producer could not keep its 120 Hz schedule"
    assert report.final_lateness_s < 0.5, "the producer fell behind: back-pressure from the bridge"
    assert result["lag_ms"]["p99"] < 2000
    assert any(line.startswith("[") and "f/s" in line for line in outcome["lines"]), "no live status line"


def test_server_restart_mid_stream_loses_no_frame(start_server, tmp_path):
    server = start_server()
    frames = spot_frames(n=4, p=1, h=64, w=96, seed=7)
    n = 240
    config = dict(concurrency=2, queue_requests=4, rcvhwm=2)
    bridge, thread, outcome = start_bridge(server.inference_url, tmp_path, max_frames=n, frames_per_file=50, **config)
    context, socket = producer_socket(bridge.bound[0])
    peak_in_flight = 0
    done = threading.Event()

    def watch():
        nonlocal peak_in_flight
        while not done.is_set():
            peak_in_flight = max(peak_in_flight, bridge.in_flight)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    pushed: dict = {}
    producer = threading.Thread(target=lambda: pushed.setdefault("report", push(socket, frames, n, 30.0, batch=2)))
    try:
        producer.start()
        time.sleep(2.0)
        restart_server(server, down_s=8.0)  # long enough to fill the bridge's bounded queues on any host
        producer.join(300)
        result = finish(thread, outcome, timeout_s=300)
    finally:
        done.set()
        socket.close(linger=1000)
        context.term()
    print(
        f"\nrestart: {result['retries']} retries ({result['retry_reasons']}), stalled {result['stalled_s']:.1f} s,"
        f" producer lateness max {pushed['report'].max_lateness_s:.1f} s, most requests held {peak_in_flight}"
    )
    assert result["frames_received"] == result["frames_answered"] == n, (result["errors"], result["retry_reasons"])
    assert result["frames_failed"] == 0 and result["retries"] > 0
    # back-pressure: the bridge stops pulling while the server is away (whether the producer then blocks
    # depends on how much the kernel's socket buffers hold: printed above, not asserted)
    assert result["stalled_s"] > 0.5, "no back-pressure during the outage"
    assert peak_in_flight <= config["queue_requests"] + config["concurrency"]
    files = read_files(tmp_path)
    assert list(files["frame_index"]) == list(range(n)) and not files["failed"].any()


def test_a_killed_worker_loses_no_frame(start_server, tmp_path):
    """TorchServe answers 500 "Worker died." for the batch a dying worker held; those requests are retried."""
    import signal

    server = start_server()
    frames = spot_frames(n=4, p=1, h=64, w=96, seed=9)
    n = 160
    bridge, thread, outcome = start_bridge(server.inference_url, tmp_path, max_frames=n, frames_per_file=80)
    context, socket = producer_socket(bridge.bound[0])
    producer = threading.Thread(target=lambda: push(socket, frames, n, 40.0, batch=2))
    try:
        producer.start()
        deadline = time.monotonic() + 60
        while bridge.stats.snapshot().counts.frames_out < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        while not bridge.in_flight and time.monotonic() < deadline:  # kill it while it holds requests
            time.sleep(0.01)
        described = requests.get(f"{server.management_url}/models/peaknet", timeout=10).json()
        os.kill(int(described[0]["workers"][0]["pid"]), signal.SIGTERM)
        producer.join(300)
        result = finish(thread, outcome, timeout_s=300)
    finally:
        socket.close(linger=1000)
        context.term()
    print(f"\nworker killed: {result['retries']} retries ({result['retry_reasons']})")
    assert result["frames_received"] == result["frames_answered"] == n, (result["errors"], result["retry_reasons"])
    assert result["retries"] > 0
    files = read_files(tmp_path)
    assert list(files["frame_index"]) == list(range(n)) and not files["failed"].any()


def test_unreachable_server_counts_frames_as_failed(tmp_path):
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    bridge, thread, outcome = start_bridge(dead, tmp_path, max_frames=8, retry_for_s=1.0, frames_per_file=8)
    context, socket = producer_socket(bridge.bound[0])
    try:
        push(socket, spot_frames(n=2, p=1, h=16, w=16), 8, 100.0, batch=2, fmt="npz")
        result = finish(thread, outcome)
    finally:
        socket.close(linger=1000)
        context.term()
    assert result["frames_received"] == result["frames_failed"] == 8 and result["frames_answered"] == 0
    files = read_files(tmp_path)
    assert list(files["frame_index"]) == list(range(8)) and files["failed"].all()


def test_console_commands(served, tmp_path):
    """peaknet-bridge and peaknet-push as separate processes, as users start them."""
    import socket as sockets

    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    stats = tmp_path / "stats.json"
    bridge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peaknet_serve.bridge.cli",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--url",
            served.inference_url,
            "-o",
            str(tmp_path / "peaks"),
            "--frames-per-file",
            "20",
            "--save-frames",
            "--max-frames",
            "40",
            "--idle-timeout",
            "60",
            "--report-every",
            "0.2",
            "--stats-json",
            str(stats),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pushed = subprocess.run(
            [
                sys.executable,
                "-m",
                "peaknet_serve.bridge.producer",
                "--connect",
                f"tcp://127.0.0.1:{port}",
                "--rate",
                "40",
                "--frames",
                "40",
                "--batch",
                "4",
                "--geometry",
                "2,64,96",
                "--compression",
                "bitshuffle_with_zstd",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pushed.returncode == 0, pushed.stderr
        out, err = bridge.communicate(timeout=180)
    finally:
        bridge.kill()
    assert bridge.returncode == 0, err
    document = json.loads(stats.read_text())
    assert document["frames_answered"] == 40 and document["files"] == 2
    assert "frames   40 received" in out and "in " in err and "f/s" in err
    with h5py.File(tmp_path / "peaks" / "peaks-000001.cxi", "r") as f:
        assert f["/entry_1/data_1/data"].shape == (20, 128, 96)
        assert list(f["/entry_1/stream/frame_index"][()]) == list(range(20, 40))
